package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// This file is the NATS side of partitioned flows (docs/scaling.md): a
// source consuming the partition subjects of the partitions this process
// serves, and a sink publishing each event to its partition's subject.

// partitionPollWait bounds each pull request of a partition's consumer: a
// partition that stops being served, and a source that shuts down, stop
// pulling within it.
const partitionPollWait = time.Second

// ErrNotPartitioned reports a partitioned source whose board never had a
// partition count declared when it was built: the connector it names is
// not a partitioned kv connector.
var ErrNotPartitioned = errors.New("not a partitioned connector")

// ErrPartitionKey reports an event whose partition key cannot be computed.
var ErrPartitionKey = errors.New("cannot compute the partition key")

// PartitionFilter returns the subject filter matching every partition
// subject of base (partition.Subject): base + ".p.*".
func PartitionFilter(base string) string { return base + ".p.*" }

// PartitionStreamName returns the name of the stream a partitioned source
// or sink creates for base's partition subjects when none captures them:
// StreamName(base) + "_p" ("orders.in" → "orders_in_p").
func PartitionStreamName(base string) string { return StreamName(base) + "_p" }

// PartitionDurable returns the durable consumer of partition p of a
// partitioned source whose durable is durable: durable + "_p" + the
// partition's three digits ("orders_p017").
func PartitionDurable(durable string, p int) string { return durable + "_p" + partition.Token(p) }

// ensurePartitionStream returns the stream capturing base's partition
// subjects: stream when given (created when missing; whether it captures
// them is checked by the broker when a consumer is made on it), else the
// one capturing them, else a new file-backed one named PartitionStreamName.
func ensurePartitionStream(ctx context.Context, js nats.JetStreamContext, base, stream string) (string, error) {
	return ensureStreamOf(ctx, js, PartitionFilter(base), stream, PartitionStreamName(base), false)
}

// ensurePartitionStreamWithin is ensurePartitionStream for opts.Subject
// and opts.Stream, bounded by opts.ConnectTimeout (see ensureStreamWithin).
func ensurePartitionStreamWithin(ctx context.Context, opts NATSOptions, js nats.JetStreamContext) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	defer cancel()
	return ensurePartitionStream(ctx, js, opts.Subject, opts.Stream)
}

// maxPartitionAckWait bounds the ack wait of a partition's consumer.
const maxPartitionAckWait = 5 * time.Second

// partitionAckWait returns the ack wait of a partition's consumer: the
// source's ack_wait, at most maxPartitionAckWait. When an owner dies, the
// messages it held come back after this wait (with their delivery counts),
// about when its lease lapses and another owner takes the partition, not
// after the 30 s default; a live owner keeps its slow messages with
// in-progress acks at most half the wait apart (settle).
func (o *NATSOptions) partitionAckWait() time.Duration {
	if o.uncappedAckWait {
		return o.AckWait
	}
	return min(o.AckWait, maxPartitionAckWait)
}

// ensurePullConsumer creates the durable pull consumer of one partition,
// or adapts an existing one's AckWait and MaxAckPending.
func ensurePullConsumer(ctx context.Context, js nats.JetStreamContext, stream, subject, durable string, ackWait time.Duration, window int) error {
	info, err := js.ConsumerInfo(stream, durable, nats.Context(ctx))
	if errors.Is(err, nats.ErrConsumerNotFound) {
		_, err = js.AddConsumer(stream, &nats.ConsumerConfig{
			Durable:       durable,
			DeliverPolicy: nats.DeliverAllPolicy,
			AckPolicy:     nats.AckExplicitPolicy,
			AckWait:       ackWait,
			MaxAckPending: window,
			MaxDeliver:    -1, // the source dead-letters; the broker never drops
			FilterSubject: subject,
		}, nats.Context(ctx))
		if err != nil {
			return fmt.Errorf("create consumer %q on stream %q for subject %q: %w", durable, stream, subject, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer %q on stream %q: %w", durable, stream, err)
	}
	cfg := info.Config
	if cfg.DeliverSubject != "" || cfg.AckPolicy != nats.AckExplicitPolicy {
		return fmt.Errorf("consumer %q on stream %q exists but is not a pull consumer with explicit acks: delete it or choose another durable name", durable, stream)
	}
	if cfg.FilterSubject != subject {
		return fmt.Errorf("consumer %q on stream %q reads subject %q, not %q: choose another durable name", durable, stream, cfg.FilterSubject, subject)
	}
	if cfg.AckWait != ackWait || cfg.MaxAckPending != window {
		cfg.AckWait, cfg.MaxAckPending = ackWait, window
		if _, err := js.UpdateConsumer(stream, &cfg, nats.Context(ctx)); err != nil {
			return fmt.Errorf("update consumer %q on stream %q: %w", durable, stream, err)
		}
	}
	return nil
}

// dialNATSPartitions makes one connection of a partitioned source: the
// dead-letter stream and publisher, the partition stream, and one pull
// consumer per partition served on board, for as long as it is served.
func dialNATSPartitions(ctx context.Context, so SourceOptions, opts NATSOptions, board *partition.Board, dead *natsDeadLetters) (<-chan *message.Message, func() error, error) {
	o := opts
	o.Stream = "" // names the partition stream, not the dead letters'
	nc, err := connect(ctx, so.Name, o, so.DeadLetter)
	if err != nil {
		return nil, nil, err
	}
	stream, err := ensurePartitionStreamWithin(ctx, opts, nc.js)
	if err != nil {
		nc.conn.Close()
		return nil, nil, fmt.Errorf("%w at %s: %w", ErrConnect, opts.URL, err)
	}
	pub, err := newNATSPublisher(nc.conn, watermillLogger(opts.Logger))
	if err != nil {
		nc.conn.Close()
		return nil, nil, err
	}
	ps := &natsPartitions{
		nc: nc, stream: stream, so: so, opts: opts, board: board,
		out:      make(chan *message.Message),
		done:     make(chan struct{}),
		running:  map[int]*partitionRun{},
		settled:  make(chan settlement, so.Window),
		tick:     make(chan struct{}),
		stopAcks: make(chan struct{}),
		acksDone: make(chan struct{}),
	}
	// Pulling ends at release or when the connection closes for good;
	// waiting for settlements only at release.
	ps.pull, ps.stopPull = context.WithCancel(context.WithoutCancel(ctx))
	ps.settling, ps.stopSettling = context.WithCancel(context.Background())
	go func() {
		select {
		case <-nc.closed:
		case <-ps.pull.Done():
		}
		ps.stopPull()
	}()
	go ps.run()
	go ps.ack()
	dead.set(pub)
	release := func() error {
		dead.set(nil)
		return ps.release()
	}
	return ps.out, release, nil
}

// natsPartitions is one connection of a partitioned source. It owns the
// goroutines of Board.Watch, of each served partition (pulling its
// consumer in stream order and handing the messages to out), of each
// message handed over (waiting until the source settles it, reporting it
// in progress meanwhile), and the one that sends the acks and nacks of
// settled messages and ticks for the in-progress reports (ack). out is
// closed once Watch and every partition's goroutine have returned; ack
// returns at release, once every message handed over was settled or
// given up.
type natsPartitions struct {
	nc     *natsConn
	stream string
	so     SourceOptions
	opts   NATSOptions
	board  *partition.Board
	out    chan *message.Message
	done   chan struct{} // closed with out

	pull         context.Context // ends pulling and Watch
	stopPull     context.CancelFunc
	settling     context.Context // ends waiting for settlements (release)
	stopSettling context.CancelFunc

	loops   sync.WaitGroup // partition goroutines
	settles sync.WaitGroup // one per message handed over and not settled
	// settled takes the settled messages to ack, which sends their acks
	// and nacks: one long-lived goroutine does it, not one per message
	// (whose stack would grow for each publish).
	settled  chan settlement
	stopAcks chan struct{} // closed by release: ack returns
	acksDone chan struct{} // closed when ack has returned

	// tick is closed, and replaced, every quarter ack wait by ack: a message
	// waiting to be settled sends an in-progress report then (no timer of
	// its own). tickMu guards the field.
	tickMu sync.Mutex
	tick   chan struct{}

	mu      sync.Mutex
	running map[int]*partitionRun
}

// partitionRun is one serving of a partition by this source.
type partitionRun struct{ cancel context.CancelFunc }

func (s *natsPartitions) run() {
	defer close(s.done)
	_ = s.board.Watch(s.pull, s.start)
	s.loops.Wait()
	close(s.out)
}

// start runs partition p's consumer until ctx ends: Board.Watch's start.
// A partition served again while its previous consumer still runs
// replaces it, so that one consumer at a time pulls a partition.
func (s *natsPartitions) start(ctx context.Context, p int) {
	ctx, cancel := context.WithCancel(ctx)
	r := &partitionRun{cancel: cancel}
	s.mu.Lock()
	if prev := s.running[p]; prev != nil {
		prev.cancel()
	}
	s.running[p] = r
	s.mu.Unlock()
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		defer func() {
			cancel()
			s.mu.Lock()
			if s.running[p] == r {
				delete(s.running, p)
			}
			s.mu.Unlock()
		}()
		s.consume(ctx, p)
	}()
}

// consume pulls partition p's consumer and hands its messages over in
// stream order, at most Window of them unsettled, until ctx ends.
// Messages pulled after that are nacked, for the partition's next owner.
func (s *natsPartitions) consume(ctx context.Context, p int) {
	subject := partition.Subject(s.opts.Subject, p)
	durable := PartitionDurable(s.opts.Durable, p)
	logger := s.opts.Logger.With("node", s.so.Name, "partition", p, "subject", subject, "consumer", durable)
	var sub *nats.Subscription
	for attempt := 0; ; attempt++ {
		var err error
		if sub, err = s.subscribe(ctx, subject, durable); err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		wait := s.opts.Reconnect.Backoff(attempt)
		logger.Warn("cannot consume partition, retrying", "wait", wait, "error", err)
		if !sleep(ctx, wait) {
			return
		}
	}
	defer func() { _ = sub.Unsubscribe() }()
	logger.Debug("consuming partition")
	defer logger.Debug("partition no longer consumed")
	window := s.so.Window
	slots := make(chan struct{}, window) // one token per message not settled
	// The subject of every message of the consumer (its filter), as JSON.
	subjectJSON, _ := json.Marshal(subject)
	for failures := 0; ctx.Err() == nil; {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
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
		msgs, err := sub.Fetch(n, nats.MaxWait(partitionPollWait))
		for range n - len(msgs) {
			<-slots
		}
		if err != nil && len(msgs) == 0 {
			if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
				failures = 0
				continue
			}
			if s.nc.conn.IsClosed() {
				return
			}
			wait := s.opts.Reconnect.Backoff(failures)
			failures++
			logger.Warn("cannot pull partition, retrying", "wait", wait, "error", err)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		failures = 0
		for _, m := range msgs {
			md, mdErr := m.Metadata()
			wm := unmarshalNATS(m, md, mdErr)
			if mdErr == nil {
				sj := subjectJSON
				if m.Subject != subject {
					sj, _ = json.Marshal(m.Subject)
				}
				setPartitionMeta(wm, p, md.Sequence.Stream, sj)
			}
			if ctx.Err() == nil {
				select {
				case s.out <- wm:
					s.settles.Add(1)
					go s.settle(wm, m, slots)
					continue
				case <-ctx.Done():
				}
			}
			// Not handed over: nacked here, in stream order, so that the
			// next owner receives them in that order, at once.
			if err := m.Nak(); err != nil && !s.nc.conn.IsClosed() {
				logger.Warn("cannot nack message, the broker redelivers it after ack_wait", "message", wm.UUID, "error", err)
			}
			<-slots
		}
	}
}

// NATSMeta is the event meta field in which a partitioned source
// (partitions_of) gives each message's place in its partition's input:
// {"partition": P, "sequence": S, "subject": "orders.in.p.017"}, S being
// the message's stream sequence, the partition's input position (the kv
// connector's input_from: nats.sequence). A metadata key of that name
// in the message is replaced by it. It describes one delivery: a NATS sink
// does not publish it, a plain NATS source drops a header of that name, and
// a dead letter keeps it as NATSSourceMeta.
const NATSMeta = "nats"

// NATSSourceMeta is the meta field of a dead letter holding the NATSMeta
// of the message it was made from (the dead-letter stream's own reader
// sets no NATSMeta of its own).
const NATSSourceMeta = "nats_source"

// setPartitionMeta sets wm's NATSMeta for a message of partition p at
// stream sequence seq, on the subject whose JSON string is subjectJSON.
// The value is JSON: listed in JSONKeysKey when the message has that
// list, and recognised as JSON otherwise (it starts with '{').
func setPartitionMeta(wm *message.Message, p int, seq uint64, subjectJSON []byte) {
	b := make([]byte, 0, 48+len(subjectJSON))
	b = append(b, `{"partition":`...)
	b = strconv.AppendInt(b, int64(p), 10)
	b = append(b, `,"sequence":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"subject":`...)
	b = append(b, subjectJSON...)
	b = append(b, '}')
	wm.Metadata.Set(NATSMeta, string(b))
	if keys, marked := wm.Metadata[JSONKeysKey]; marked && !Listed(keys, NATSMeta) {
		if keys != "" {
			keys += ","
		}
		wm.Metadata.Set(JSONKeysKey, keys+NATSMeta)
	}
}

// subscribe makes sure partition's consumer exists and binds a pull
// subscription to it.
func (s *natsPartitions) subscribe(ctx context.Context, subject, durable string) (*nats.Subscription, error) {
	cctx, cancel := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancel()
	if err := ensurePullConsumer(cctx, s.nc.js, s.stream, subject, durable, s.opts.partitionAckWait(), s.so.Window); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSubscribe, err)
	}
	sub, err := s.nc.js.PullSubscribe(subject, durable, nats.Bind(s.stream, durable))
	if err != nil {
		return nil, fmt.Errorf("%w to %q: %w", ErrSubscribe, subject, err)
	}
	return sub, nil
}

// settlement is a settled message for ack: its ack (ok) or nack, and
// the slot to free once it is sent.
type settlement struct {
	m     *nats.Msg
	wm    *message.Message
	ok    bool
	slots chan struct{}
}

// settle waits until wm is settled and hands m to ack, which sends its
// ack or nack and frees its slot. A message still in the flow after half
// its ack wait is reported in progress, so that the broker does not
// redeliver it while it is processed (see partitionAckWait): at the first
// tick (every quarter of the ack wait) at least a quarter of the ack wait
// after it was handed over or last reported, so at most half the ack wait
// apart, as with a timer of its own. At release, a message not settled within ConnectTimeout is
// left to the broker's ack wait.
func (s *natsPartitions) settle(wm *message.Message, m *nats.Msg, slots chan struct{}) {
	giveUp := func() {
		<-slots
		s.settles.Done()
	}
	var ok bool
	select {
	case <-wm.Acked():
		ok = true
	case <-wm.Nacked():
	case <-s.settling.Done():
		giveUp()
		return
	default:
		quiet := s.opts.partitionAckWait() / 4
		last := time.Now()
		tick := s.nextTick()
	wait:
		for {
			select {
			case <-wm.Acked():
				ok = true
				break wait
			case <-wm.Nacked():
				break wait
			case <-s.settling.Done():
				giveUp()
				return
			case <-tick:
				tick = s.nextTick()
				if now := time.Now(); now.Sub(last) >= quiet {
					_ = m.InProgress()
					last = now
				}
			}
		}
	}
	select {
	case s.settled <- settlement{m: m, wm: wm, ok: ok, slots: slots}:
	case <-s.settling.Done():
		giveUp()
	}
}

// nextTick returns the channel closed at the next in-progress tick.
func (s *natsPartitions) nextTick() <-chan struct{} {
	s.tickMu.Lock()
	defer s.tickMu.Unlock()
	return s.tick
}

// ack sends the acks and nacks of settled messages, freeing their slots,
// and ticks for the in-progress reports every quarter ack wait, until
// release closes stopAcks (once every message handed over was settled or
// given up, so none is left in settled).
func (s *natsPartitions) ack() {
	defer close(s.acksDone)
	ticker := time.NewTicker(s.opts.partitionAckWait() / 4)
	defer ticker.Stop()
	for {
		select {
		case st := <-s.settled:
			var err error
			if st.ok {
				err = st.m.Ack()
			} else {
				err = st.m.Nak()
			}
			if err != nil && !s.nc.conn.IsClosed() {
				s.opts.Logger.Warn("cannot settle message, the broker redelivers it after ack_wait", "node", s.so.Name,
					"message", st.wm.UUID, "subject", st.m.Subject, "error", err)
			}
			<-st.slots
			s.settles.Done()
		case <-ticker.C:
			s.tickMu.Lock()
			close(s.tick)
			s.tick = make(chan struct{})
			s.tickMu.Unlock()
		case <-s.stopAcks:
			return
		}
	}
}

// release stops pulling, waits (at most ConnectTimeout) for the messages
// handed over to be settled so their acks go out, and drains the
// connection.
func (s *natsPartitions) release() error {
	s.stopPull()
	<-s.done
	settled := make(chan struct{})
	go func() {
		s.settles.Wait()
		close(settled)
	}()
	if s.nc.conn.IsClosed() {
		s.stopSettling()
	}
	t := time.NewTimer(s.opts.ConnectTimeout)
	select {
	case <-settled:
	case <-t.C:
		s.stopSettling()
		<-settled
	}
	t.Stop()
	s.stopSettling()
	close(s.stopAcks)
	<-s.acksDone
	return s.nc.drain(s.opts.ConnectTimeout)
}

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// PartitionSinkOptions say how a partitioned NATS sink routes events.
type PartitionSinkOptions struct {
	// Count is the number of partitions, within 1 and partition.MaxCount.
	// Required.
	Count int
	// Key is the expression giving an event's partition key (a string, or
	// a number or boolean taken as its text). Default: the key of the
	// event's kv command (CommandKey).
	Key string
	// Expr configures Key's evaluation.
	Expr expr.Options
}

// NewNATSPartitionedSink returns a Sink publishing each event to the
// subject of its partition: partition.Subject(opts.Subject,
// partition.OfString(key, po.Count)), key being po.Key's value for the
// event, making sure a stream captures the partition subjects
// (PartitionFilter). An event whose key cannot be computed goes to "err"
// at once.
//
// An event derived from a bus message (one with meta.message_id) is
// published with an id derived from that message's id and the event's
// content, as the watermill UUID (the next source's meta.message_id) and
// as the Nats-Msg-Id header: the broker drops a republish of the same
// event within its duplicate window (2 minutes by default), after a crash
// between the publish and the input message's ack, and a copy published
// after that window has the same meta.message_id, so idem_from:
// message_id still applies it once. See MessageIDFor.
func NewNATSPartitionedSink(ctx context.Context, name string, opts NATSOptions, po PartitionSinkOptions) (*Sink, error) {
	opts.EnsureDefaults()
	if opts.Subject == "" {
		return nil, fmt.Errorf("sink %s: %w: no subject", name, ErrPublish)
	}
	if err := partition.CheckCount(po.Count); err != nil {
		return nil, fmt.Errorf("sink %s: partitions: %w", name, err)
	}
	keyOf := CommandKey
	if po.Key != "" {
		key, err := expr.ParseWith(po.Key, po.Expr)
		if err != nil {
			return nil, fmt.Errorf("sink %s: partition_key: %w", name, err)
		}
		keyOf = func(ev pipeline.Event) (string, error) {
			// Read as the partitioned kv connector reads it (meta.kv.key
			// set to the command's key), so both agree on the partition.
			keys, err := kv.PartitionKeys(ev, func(ev pipeline.Event) (string, error) { return partitionKey(key, ev) })
			if err != nil {
				return "", err
			}
			return keys[0], nil
		}
	}
	p := &natsSinkPublisher{name: name, opts: opts, partitioned: true}
	if opts.Reconnect.FailFast {
		if err := p.connect(ctx); err != nil {
			return nil, fmt.Errorf("sink %s: %w (fail_fast): %w", name, ErrDisconnected, err)
		}
	}
	route := func(ev pipeline.Event, m *message.Message) (string, error) {
		k, err := keyOf(ev)
		if err != nil {
			return "", err
		}
		if id := MessageIDFor(ev, m); id != "" {
			m.UUID = id
			m.Metadata.Set(nats.MsgIdHdr, id)
		}
		return partition.Subject(opts.Subject, partition.OfString(k, po.Count)), nil
	}
	r := opts.Reconnect
	return NewSink(p, SinkOptions{Name: name, Topic: opts.Subject, Reconnect: &r, Health: opts.Health, Logger: opts.Logger,
		OnClose: p.close, Route: route})
}

// partitionKey evaluates key for ev.
func partitionKey(key *expr.Expr, ev pipeline.Event) (string, error) {
	v, err := key.Eval(ev)
	if err != nil {
		return "", fmt.Errorf("%w: partition_key %s: %w", ErrPartitionKey, key, err)
	}
	switch v.Kind() {
	case expr.String:
		s, _ := v.Str()
		return s, nil
	case expr.Number, expr.Bool:
		return v.String(), nil
	default:
		return "", fmt.Errorf("%w: partition_key %s is %s, want a string, number or boolean", ErrPartitionKey, key, v.Kind())
	}
}

// CommandKey returns the key of the kv command in ev's meta.kv: its "key"
// member (a command written {"op": ..., "key": ...}, or a result), else
// the value of its command's member ({"increment": "player/7"} →
// "player/7", a scan's or count's prefix), for a batch its first
// element's. The partitioned kv connector places a command in the
// partition of the same key.
func CommandKey(ev pipeline.Event) (string, error) {
	cmd := gjson.GetBytes(ev.Meta, "kv")
	for range 2 { // a batch's first element is a command
		if !cmd.IsObject() {
			break
		}
		if k := cmd.Get("key"); k.Type == gjson.String {
			return k.String(), nil
		}
		if first := cmd.Get("batch.0"); first.IsObject() {
			cmd = first
			continue
		}
		for _, name := range kv.CommandNames() {
			if k := cmd.Get(name); k.Type == gjson.String {
				return k.String(), nil
			}
		}
		break
	}
	return "", fmt.Errorf("%w: meta.kv has no command with a key (%.100s); set partition_key", ErrPartitionKey, cmd.Raw)
}

// MessageIDFor returns the id a partitioned sink publishes m, made from
// event ev, with: ev's meta.message_id (the input message's id, the same
// on every redelivery), "/", and 16 hex digits of XXH64 over m's payload
// and metadata ("orders_in:42/9f0c..."). Two events derived from one
// message get different ids unless they are the same event; a flow that
// derives the same events on a redelivery publishes them with the same
// ids. It returns "" for an event derived from no bus message.
func MessageIDFor(ev pipeline.Event, m *message.Message) string {
	origin := gjson.GetBytes(ev.Meta, MessageIDMeta).String()
	if origin == "" {
		return ""
	}
	h := xxhash.New()
	_, _ = h.Write(m.Payload)
	keys := make([]string, 0, len(m.Metadata))
	for k := range m.Metadata {
		if k != nats.MsgIdHdr {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		// Lengths keep ("ab","c") apart from ("a","bc").
		_, _ = h.WriteString(strconv.Itoa(len(k)) + ":" + k + strconv.Itoa(len(m.Metadata[k])) + ":" + m.Metadata[k])
	}
	return fmt.Sprintf("%s/%016x", origin, h.Sum64())
}

// connectPartitions dials the broker for a partitioned sink and makes sure
// a stream captures the partition subjects of opts.Subject.
func connectPartitions(ctx context.Context, name string, opts NATSOptions) (*natsConn, error) {
	o := opts
	o.Stream = ""
	nc, err := connect(ctx, name, o)
	if err != nil {
		return nil, err
	}
	if _, err := ensurePartitionStreamWithin(ctx, opts, nc.js); err != nil {
		nc.conn.Close()
		return nil, fmt.Errorf("%w at %s: %w", ErrConnect, opts.URL, err)
	}
	return nc, nil
}
