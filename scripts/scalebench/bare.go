package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/internal/incrflow"
	"github.com/flowrun/flowrun/internal/partition"
)

// This file is the bare flow: the NATS traffic of the partitioned flow,
// driven by a plain nats.go client in this process, with no flowrun, so
// that the rate the broker alone allows on the machine, and its CPU per
// event, are measured in the same run as the flows.
//
// Per partition, as the partitioned flow does it:
//   - input: a durable pull consumer with the config a partitions_of
//     source gives it (explicit acks, ack wait 5 s, max ack pending the
//     window, every message delivered), pulled with a fetch of as many
//     messages as the window has room for, waiting at most 1 s; each
//     message acknowledged on its own (a plain publish to its reply
//     subject, as nats.go's Msg.Ack);
//   - changelog: a stream made as changelog.Open makes it (file storage,
//     three replicas, limits, deny delete) under the partitioned flow's
//     changelog names; one append per commit group, a group being every
//     message fetched while the previous group's append was in flight
//     (at most Options.BareGroup), as a store's commit pipeline groups
//     what arrives during a sync; the record is Options.BareRecordBytes
//     per message (what the flow appends per message with idem_from),
//     published expecting the stream's last sequence, without retry, as
//     changelog.Writer does;
//   - answers: once a group's append is acknowledged, one answer per
//     message, with the headers and data the flow's NATS sink publishes
//     (a watermill UUID, the correlation, flowrun_json, the kv result,
//     the new count), published asynchronously to the answers stream and
//     waited for; then the group's input messages are acknowledged.
//
// So an input message is acknowledged only after its group's changelog
// append was acknowledged and its answer stored, as in the flow. The
// counts are kept in memory (the state the flow keeps in Pebble); a
// message delivered again is answered again with the count it had.
// bareParts leaves parts out (flows bare-noack, bare-nolog), to measure
// their share.
//
// Not driven: the partitions' leases (a renewal per partition every few
// seconds), and all of the flow's own work (decoding, Pebble, the
// pipeline).

// bareParts says which parts of the traffic a bare run leaves out.
type bareParts struct {
	// noAck: the consumers expect no acknowledgements (AckNone) and none
	// is sent.
	noAck bool
	// noLog: no changelog appends.
	noLog bool
}

// bareRun is one run of the bare flow: three goroutines per partition
// (fetch, commit, answer), and its connections.
type bareRun struct {
	nc     *nats.Conn            // input: the partitions' consumers and acks
	legacy nats.JetStreamContext // on nc
	pubNC  *nats.Conn            // answers and changelog appends
	js     jetstream.JetStream   // on pubNC: the changelog's appends
	ans    nats.JetStreamContext // on pubNC: the answers
	parts  bareParts
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error // the first failure
}

// bareGroup is one commit group of a partition: its input messages and
// their answers.
type bareGroup struct {
	msgs    []*nats.Msg
	answers []*nats.Msg
}

// startBare starts the bare flow on f's input and answers (f as the
// partitioned flow of the same run would be: f.Name names its changelog
// streams, f.Durable its consumers) and returns once every partition's
// consumer and changelog stream exist. It runs until stop.
func (b *bench) startBare(ctx context.Context, f incrflow.Flow, parts bareParts) (*bareRun, error) {
	f.EnsureDefaults()
	nc, err := nats.Connect(b.opts.NATSURLs, nats.Name(f.Name+" input"), nats.Timeout(5*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("bare flow: connect: %w", err)
	}
	pubNC, err := nats.Connect(b.opts.NATSURLs, nats.Name(f.Name+" output"), nats.Timeout(5*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bare flow: connect: %w", err)
	}
	r := &bareRun{nc: nc, pubNC: pubNC, parts: parts, errc: make(chan error, 1)}
	fail := func(err error) (*bareRun, error) {
		nc.Close()
		pubNC.Close()
		return nil, fmt.Errorf("bare flow: %w", err)
	}
	if r.legacy, err = nc.JetStream(); err != nil {
		return fail(err)
	}
	// As the flow's NATS sink and changelog make theirs.
	if r.ans, err = pubNC.JetStream(nats.PublishAsyncMaxPending(1024)); err != nil {
		return fail(err)
	}
	if r.js, err = jetstream.New(pubNC); err != nil {
		return fail(err)
	}
	// The partitions' consumers and streams are made side by side, as a
	// flowrun instance takes its partitions.
	subs := make([]*nats.Subscription, f.Partitions)
	logs := make([]string, f.Partitions)
	errs := make([]error, f.Partitions)
	var made sync.WaitGroup
	for p := range f.Partitions {
		made.Go(func() { subs[p], logs[p], errs[p] = r.setUp(ctx, f, p) })
	}
	made.Wait()
	if err := errors.Join(errs...); err != nil {
		return fail(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	for p := range f.Partitions {
		fetched := make(chan []*nats.Msg, f.Window)
		groups := make(chan bareGroup, 1)
		slots := make(chan struct{}, f.Window)
		r.wg.Add(3)
		go func() {
			defer r.wg.Done()
			defer close(fetched)
			r.fail(r.fetch(rctx, subs[p], f.Window, slots, fetched))
		}()
		go func() {
			defer r.wg.Done()
			defer close(groups)
			r.fail(r.commit(rctx, logs[p], f.Out, b.opts.BareGroup, b.opts.BareRecordBytes, fetched, groups))
		}()
		go func() {
			defer r.wg.Done()
			r.fail(r.answer(rctx, slots, groups))
		}()
	}
	return r, nil
}

// setUp makes partition p's consumer, as a partitions_of source makes it,
// and its changelog stream, as changelog.Open makes it, and binds a pull
// subscription to the consumer. It returns the subscription and the
// changelog's subject.
func (r *bareRun) setUp(ctx context.Context, f incrflow.Flow, p int) (*nats.Subscription, string, error) {
	stream := bus.PartitionStreamName(f.In)
	subject := partition.Subject(f.In, p)
	durable := bus.PartitionDurable(f.Durable, p)
	cfg := &nats.ConsumerConfig{
		Durable:       durable,
		DeliverPolicy: nats.DeliverAllPolicy,
		AckPolicy:     nats.AckExplicitPolicy,
		AckWait:       5 * time.Second, // the source's partition ack wait
		MaxAckPending: f.Window,
		MaxDeliver:    -1,
		FilterSubject: subject,
	}
	if r.parts.noAck {
		cfg.AckPolicy, cfg.AckWait, cfg.MaxAckPending = nats.AckNonePolicy, 0, 0
	}
	if _, err := r.legacy.AddConsumer(stream, cfg, nats.Context(ctx)); err != nil {
		return nil, "", fmt.Errorf("create consumer %s: %w", durable, err)
	}
	sub, err := r.legacy.PullSubscribe(subject, durable, nats.Bind(stream, durable))
	if err != nil {
		return nil, "", fmt.Errorf("subscribe %s: %w", durable, err)
	}
	name, clSubject := partitioned.ChangelogStream(f.Name, p)
	if _, err := r.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       name,
		Subjects:   []string{clSubject, clSubject + ".ck", clSubject + ".ckm"},
		Storage:    jetstream.FileStorage,
		Replicas:   3,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		DenyDelete: true,
	}); err != nil {
		return nil, "", fmt.Errorf("create changelog stream %s: %w", name, err)
	}
	return sub, clSubject, nil
}

// fail keeps err as the run's failure unless it is nil, the run's end, or
// there is one already.
func (r *bareRun) fail(err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	select {
	case r.errc <- err:
	default:
	}
}

// failed returns the run's failure, if any, without waiting.
func (r *bareRun) failed() error {
	select {
	case err := <-r.errc:
		r.errc <- err
		return err
	default:
		return nil
	}
}

// stop ends the run: the goroutines return, the connections close.
func (r *bareRun) stop() {
	r.cancel()
	r.wg.Wait()
	r.nc.Close()
	r.pubNC.Close()
}

// fetch pulls one partition's consumer as the partitioned source does:
// at most window messages unsettled (a slot each, freed by answer), each
// fetch asking for as many as there are free slots.
func (r *bareRun) fetch(ctx context.Context, sub *nats.Subscription, window int, slots chan struct{}, fetched chan<- []*nats.Msg) error {
	for ctx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		n := 1
	more:
		for n < window {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		msgs, err := sub.Fetch(n, nats.MaxWait(time.Second))
		for range n - len(msgs) {
			<-slots
		}
		if err != nil && len(msgs) == 0 {
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				continue
			}
			return fmt.Errorf("fetch %s: %w", sub.Subject, err)
		}
		select {
		case fetched <- msgs:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return ctx.Err()
}

// commit makes one partition's commit groups: each takes what was fetched
// while the previous group's append was in flight (at least one message,
// at most group), counts and answers its messages, appends its record to
// the changelog and waits for the acknowledgement, then hands the group
// to answer.
func (r *bareRun) commit(ctx context.Context, logSubject, out string, group, recordBytes int,
	fetched <-chan []*nats.Msg, groups chan<- bareGroup) error {
	counts := map[string]int64{}
	answered := map[uint64]int64{} // input stream sequence → its count
	var last uint64                // the changelog stream's last sequence
	record := make([]byte, group*recordBytes)
	for i := range record {
		record[i] = byte('a' + i%26)
	}
	var held []*nats.Msg // fetched, not yet in a group
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if len(held) == 0 {
			select {
			case msgs, ok := <-fetched:
				if !ok {
					return ctx.Err()
				}
				held = append(held, msgs...)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	drain:
		for len(held) < group {
			select {
			case msgs, ok := <-fetched:
				if !ok {
					break drain
				}
				held = append(held, msgs...)
			default:
				break drain
			}
		}
		n := min(group, len(held))
		g := bareGroup{msgs: slices.Clone(held[:n])}
		held = slices.Delete(held, 0, n)
		for _, m := range g.msgs {
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("input on %s: %w", m.Subject, err)
			}
			k := gjson.GetBytes(m.Data, "k").String()
			v, seen := answered[md.Sequence.Stream]
			if !seen {
				counts[k]++
				v = counts[k]
				answered[md.Sequence.Stream] = v
			}
			a := nats.NewMsg(out)
			a.Header.Set("_watermill_message_uuid", watermill.NewUUID())
			a.Header.Set(bus.CorrelationKey, gjson.GetBytes(m.Data, "i").Raw)
			a.Header.Set(bus.JSONKeysKey, "kv,"+bus.CorrelationKey)
			a.Header.Set("kv", `{"op":"increment","key":"c/`+k+`","found":false}`)
			a.Data = strconv.AppendInt(nil, v, 10)
			g.answers = append(g.answers, a)
		}
		if !r.parts.noLog {
			cl := nats.NewMsg(logSubject)
			cl.Data = record[:n*recordBytes]
			f, err := r.js.PublishMsgAsync(cl, jetstream.WithExpectLastSequence(last), jetstream.WithRetryAttempts(0))
			if err != nil {
				return fmt.Errorf("append to %s: %w", logSubject, err)
			}
			last++
			timer.Reset(10 * time.Second) // the changelog's AckTimeout
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("append to %s: %w", logSubject, err)
			case <-timer.C:
				return fmt.Errorf("append to %s: no acknowledgement within 10 s", logSubject)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		select {
		case groups <- g:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// answer settles one partition's groups in order: it publishes a group's
// answers and waits for them (at most 10 s), then acknowledges its input
// messages and frees their slots.
func (r *bareRun) answer(ctx context.Context, slots <-chan struct{}, groups <-chan bareGroup) error {
	futures := make([]nats.PubAckFuture, 0, 256)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for g := range groups {
		futures = futures[:0]
		for _, a := range g.answers {
			f, err := r.ans.PublishMsgAsync(a)
			if err != nil {
				return fmt.Errorf("publish answer: %w", err)
			}
			futures = append(futures, f)
		}
		timer.Reset(10 * time.Second)
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("answer: %w", err)
			case <-timer.C:
				return errors.New("answers: no acknowledgement within 10 s")
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for _, m := range g.msgs {
			if !r.parts.noAck {
				if err := m.Ack(); err != nil {
					return fmt.Errorf("ack: %w", err)
				}
			}
			<-slots
		}
	}
	return nil
}
