package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/flowrun/flowrun/connectors/bus"
)

// consumer is one consumer-group client of a source: the connection a
// bus.Dial returns. It owns three kinds of goroutines: the poll loop (hands
// records over in offset order), the committer, and one watcher per record
// handed over (settles it when it is acked or nacked). All stop when ctx
// ends; out is closed once they have.
type consumer struct {
	opts   SourceOptions
	window int // MaxInFlight
	client *kgo.Client
	out    chan *message.Message
	slots  chan struct{} // one token per record handed over and not settled
	logger *slog.Logger

	ctx      context.Context
	cancel   context.CancelFunc
	loops    sync.WaitGroup // poll loop and committer
	watchers sync.WaitGroup
	closeOut sync.Once
	started  atomic.Bool // the first contact succeeded

	mu      sync.Mutex
	parts   map[int32]*partition // assigned partitions of opts.Topic
	closing bool                 // release has begun: revokes do not wait
	down    error                // the last poll error, while it lasts

	commitMu sync.Mutex // serialises commits
}

// partition is the progress of one assigned partition. A new value is made
// at each assignment, so a record remembers the partition value it was
// handed over under and its settling is ignored once that is gone.
type partition struct {
	id        int32
	pending   []int64        // offsets handed over and not done, ascending
	done      map[int64]bool // done offsets still behind an undone one
	mark      int64          // next offset to commit: all before are done; -1 none yet
	committed int64          // last offset committed; -1 none
	inflight  int            // records handed over and not settled
	revoking  bool           // hand over no more records
}

// finish records offset as done and advances the mark past every done
// offset at the head.
func (p *partition) finish(offset int64) {
	p.done[offset] = true
	for len(p.pending) > 0 && p.done[p.pending[0]] {
		delete(p.done, p.pending[0])
		p.mark = p.pending[0] + 1
		p.pending = p.pending[1:]
	}
}

// delivery is one record handed over, and how many times.
type delivery struct {
	rec     *kgo.Record
	part    *partition
	attempt int
}

// dial joins the consumer group on topic and returns the messages of that
// client: a bus.Dial.
func (s *sourceDialer) dial(ctx context.Context, topic string) (<-chan *message.Message, func() error, error) {
	c, err := newConsumer(ctx, s.opts, topic)
	if err != nil {
		return nil, nil, err
	}
	return c.out, c.release, nil
}

type sourceDialer struct{ opts SourceOptions }

func newConsumer(ctx context.Context, o SourceOptions, topic string) (*consumer, error) {
	c := &consumer{
		opts:   o,
		window: o.MaxInFlight,
		out:    make(chan *message.Message),
		slots:  make(chan struct{}, o.MaxInFlight),
		logger: o.Logger,
		parts:  map[int32]*partition{},
	}
	c.ctx, c.cancel = context.WithCancel(ctx)
	reset := kgo.NewOffset().AtStart()
	if o.Start == StartLatest {
		reset = kgo.NewOffset().AtEnd()
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID("flowrun-" + o.Name),
		kgo.ConsumerGroup(o.Group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(reset),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(o.SessionTimeout),
		kgo.OnPartitionsAssigned(c.assigned),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.lost),
		kgo.WithHooks(connHook{c}),
	}
	if o.TLS != nil {
		kopts = append(kopts, kgo.DialTLSConfig(o.TLS.Clone()))
	}
	if o.SASL != nil {
		kopts = append(kopts, kgo.SASL(o.SASL))
	}
	client, err := kgo.NewClient(kopts...)
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("%w: %w", bus.ErrConnect, err)
	}
	pctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	err = client.Ping(pctx)
	cancel()
	if err != nil {
		c.cancel()
		client.Close()
		return nil, fmt.Errorf("%w at %s: %w", bus.ErrConnect, strings.Join(o.Brokers, ","), err)
	}
	c.client = client
	c.started.Store(true)
	c.loops.Add(2)
	go c.poll()
	go c.committer()
	return c, nil
}

// connHook watches the client's broker connections for readiness.
type connHook struct{ c *consumer }

// OnBrokerConnect implements kgo.HookBrokerConnect: a failed dial makes
// the source not ready, a successful one ready again (a topic with no new
// records gives no successful fetch to tell).
func (h connHook) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.c.setDown(fmt.Errorf("%w: broker %s:%d: %w", bus.ErrDisconnected, meta.Host, meta.Port, err))
		return
	}
	if h.c.started.Load() {
		h.c.setUp()
	}
}

// poll hands records over in offset order, at most MaxInFlight unsettled.
func (c *consumer) poll() {
	defer c.loops.Done()
	for {
		// One slot is needed to poll; take as many more as are free.
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
		n := 1
	more:
		for n < c.window {
			select {
			case c.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		fetches := c.client.PollRecords(c.ctx, n)
		if c.ctx.Err() != nil || fetches.IsClientClosed() {
			c.releaseSlots(n)
			return
		}
		var ferr error
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("topic %q partition %d: %w", topic, p, err)
			}
		})
		if ferr != nil {
			c.setDown(ferr)
			if c.opts.Reconnect.FailFast && isConnErr(ferr) {
				c.releaseSlots(n)
				return
			}
		}
		recs := fetches.Records()
		if len(recs) > 0 || ferr == nil {
			c.setUp()
		}
		c.releaseSlots(n - len(recs))
		for _, r := range recs {
			if !c.handOver(r) {
				c.releaseSlots(1)
			}
		}
	}
}

// handOver registers r with its partition and sends it to out; false when
// r was not handed over (its partition is revoked, or the consumer stops),
// and the record's slot is to be released.
func (c *consumer) handOver(r *kgo.Record) bool {
	c.mu.Lock()
	p := c.parts[r.Partition]
	if p == nil || p.revoking || r.Topic != c.opts.Topic {
		c.mu.Unlock()
		return false // the partition's next owner reads it
	}
	p.pending = append(p.pending, r.Offset)
	p.inflight++
	c.mu.Unlock()
	d := &delivery{rec: r, part: p, attempt: 1}
	m := recordMessage(d.rec, d.attempt)
	select {
	case c.out <- m:
	case <-c.ctx.Done():
		c.settle(d, false)
		return true
	}
	c.watchers.Add(1)
	go c.watch(d, m)
	return true
}

func (c *consumer) releaseSlots(n int) {
	for range n {
		<-c.slots
	}
}

// watch settles d once its message is acked, hands it over again when it
// is nacked (the bus.Source dead-letters it, and acks, after
// max_deliveries), and abandons it when the consumer stops or its
// partition is gone.
func (c *consumer) watch(d *delivery, m *message.Message) {
	defer c.watchers.Done()
	for {
		select {
		case <-m.Acked():
			c.settle(d, true)
			return
		case <-m.Nacked():
		case <-c.ctx.Done():
			c.settle(d, false)
			return
		}
		if !c.current(d) {
			c.settle(d, false)
			return
		}
		d.attempt++
		m = recordMessage(d.rec, d.attempt)
		select {
		case c.out <- m:
		case <-c.ctx.Done():
			c.settle(d, false)
			return
		}
	}
}

// current reports whether d's partition is still assigned as it was when
// d was handed over.
func (c *consumer) current(d *delivery) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.parts[d.rec.Partition] == d.part && !d.part.revoking
}

// settle ends d: done (acked) advances its partition's mark when the
// partition is still assigned; abandoned leaves the mark where it is.
func (c *consumer) settle(d *delivery, done bool) {
	c.mu.Lock()
	if done && c.parts[d.rec.Partition] == d.part {
		d.part.finish(d.rec.Offset)
	}
	d.part.inflight--
	c.mu.Unlock()
	<-c.slots
}

// recordMessage makes the watermill message of r's attempt-th delivery: id topic/partition/offset,
// headers as metadata (several values of one header joined with ", "),
// MetaKey the record's coordinates and key, DeliveredKey the attempt.
func recordMessage(r *kgo.Record, attempt int) *message.Message {
	m := message.NewMessage(MessageID(r.Topic, r.Partition, r.Offset), r.Value)
	for _, h := range r.Headers {
		if h.Key == MetaKey || h.Key == bus.DeliveredKey {
			continue
		}
		if v, ok := m.Metadata[h.Key]; ok {
			m.Metadata[h.Key] = v + ", " + string(h.Value)
			continue
		}
		m.Metadata[h.Key] = string(h.Value)
	}
	m.Metadata[MetaKey] = recordMeta(r)
	if keys, marked := m.Metadata[bus.JSONKeysKey]; marked {
		// Written by flowrun: only the listed keys are JSON; add ours.
		if keys == "" {
			m.Metadata[bus.JSONKeysKey] = MetaKey
		} else {
			m.Metadata[bus.JSONKeysKey] = keys + "," + MetaKey
		}
	}
	m.Metadata[bus.DeliveredKey] = strconv.Itoa(attempt)
	return m
}

// recordMeta is the MetaKey object of r: {"topic","partition","offset"}
// and "key" when r has one (as a string; invalid UTF-8 becomes U+FFFD).
func recordMeta(r *kgo.Record) string {
	type meta struct {
		Topic     string  `json:"topic"`
		Partition int32   `json:"partition"`
		Offset    int64   `json:"offset"`
		Key       *string `json:"key,omitempty"`
	}
	mt := meta{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
	if r.Key != nil {
		k := string(r.Key)
		mt.Key = &k
	}
	b, _ := json.Marshal(mt)
	return string(b)
}

// MessageID is the message_id of a record: topic/partition/offset, the
// same on every delivery of the record, in this process or another.
func MessageID(topic string, partition int32, offset int64) string {
	return topic + "/" + strconv.FormatInt(int64(partition), 10) + "/" + strconv.FormatInt(offset, 10)
}

// assigned starts tracking newly assigned partitions.
func (c *consumer) assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	ids := assigned[c.opts.Topic]
	c.mu.Lock()
	for _, id := range ids {
		c.parts[id] = &partition{id: id, done: map[int64]bool{}, mark: -1, committed: -1}
	}
	c.mu.Unlock()
	if len(ids) > 0 {
		c.logger.Info("kafka partitions assigned", "node", c.opts.Name, "topic", c.opts.Topic, "group", c.opts.Group, "partitions", ids)
	}
}

// revoked hands revoked partitions back: no more of their records are
// handed over, those in flight get up to RevokeWait to settle (none when
// the consumer is closing), what is done is committed, and the rest is
// abandoned.
func (c *consumer) revoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ids := revoked[c.opts.Topic]
	if len(ids) == 0 {
		return
	}
	c.mu.Lock()
	closing := c.closing
	for _, id := range ids {
		if p := c.parts[id]; p != nil {
			p.revoking = true
		}
	}
	c.mu.Unlock()
	if !closing {
		wait, cancel := context.WithTimeout(ctx, c.opts.RevokeWait)
		c.waitSettled(wait, ids)
		cancel()
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.ConnectTimeout)
	err := c.commit(cctx, ids)
	cancel()
	abandoned := c.forget(ids)
	level := slog.LevelInfo
	if abandoned > 0 || err != nil {
		level = slog.LevelWarn
	}
	c.logger.Log(ctx, level, "kafka partitions revoked", "node", c.opts.Name, "topic", c.opts.Topic, "group", c.opts.Group,
		"partitions", ids, "abandoned_in_flight", abandoned, "commit_error", err)
}

// lost forgets partitions whose session ended: nothing can be committed
// for them any more; their records in flight are abandoned.
func (c *consumer) lost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	ids := lost[c.opts.Topic]
	if len(ids) == 0 {
		return
	}
	abandoned := c.forget(ids)
	c.logger.Warn("kafka partitions lost", "node", c.opts.Name, "topic", c.opts.Topic, "group", c.opts.Group,
		"partitions", ids, "abandoned_in_flight", abandoned)
}

// waitSettled waits until no record of the partitions ids is in flight,
// or ctx ends.
func (c *consumer) waitSettled(ctx context.Context, ids []int32) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		n := 0
		c.mu.Lock()
		for _, id := range ids {
			if p := c.parts[id]; p != nil {
				n += p.inflight
			}
		}
		c.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// forget stops tracking partitions ids and returns how many of their
// records were still in flight (now abandoned).
func (c *consumer) forget(ids []int32) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, id := range ids {
		if p := c.parts[id]; p != nil {
			p.revoking = true
			n += p.inflight
			delete(c.parts, id)
		}
	}
	return n
}

// committer commits every CommitInterval until the consumer stops.
func (c *consumer) committer() {
	defer c.loops.Done()
	t := time.NewTicker(c.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			if err := c.commit(c.ctx, nil); err != nil && c.ctx.Err() == nil {
				c.logger.Warn("kafka commit failed; retried at the next interval", "node", c.opts.Name, "topic", c.opts.Topic,
					"group", c.opts.Group, "error", err)
			}
		}
	}
}

// commit commits the mark of each partition (of ids, or all when ids is
// nil) that moved since its last commit.
func (c *consumer) commit(ctx context.Context, ids []int32) error {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	offsets := map[int32]kgo.EpochOffset{}
	c.mu.Lock()
	for id, p := range c.parts {
		if ids != nil && !containsID(ids, id) {
			continue
		}
		if p.mark > p.committed {
			offsets[id] = kgo.EpochOffset{Epoch: -1, Offset: p.mark}
		}
	}
	c.mu.Unlock()
	if len(offsets) == 0 {
		return nil
	}
	var reqErr, partErr error
	c.client.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{c.opts.Topic: offsets},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				reqErr = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
						partErr = fmt.Errorf("partition %d: %w", p.Partition, err)
						delete(offsets, p.Partition)
					}
				}
			}
		})
	if reqErr != nil {
		return fmt.Errorf("commit: %w", reqErr)
	}
	c.mu.Lock()
	for id, o := range offsets {
		if p := c.parts[id]; p != nil && o.Offset > p.committed {
			p.committed = o.Offset
		}
	}
	c.mu.Unlock()
	if partErr != nil {
		return fmt.Errorf("commit: %w", partErr)
	}
	return nil
}

func containsID(ids []int32, id int32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// setDown reports the source not ready, logging the first error of a
// spell.
func (c *consumer) setDown(err error) {
	c.mu.Lock()
	first := c.down == nil
	c.down = err
	c.mu.Unlock()
	if first {
		c.logger.Warn("kafka client failing; it keeps trying", "node", c.opts.Name, "error", err)
	}
	if c.opts.Reconnect.FailFast && isConnErr(err) && c.started.Load() {
		// Losing the brokers ends the subscription (with fail_fast the
		// flow fails). In a goroutine: shutdown waits for the poll loop,
		// which may be the caller.
		go c.shutdown()
	}
	if c.opts.Health != nil {
		c.opts.Health.Set(c.opts.Name, err)
	}
}

// setUp reports the source ready again after setDown.
func (c *consumer) setUp() {
	c.mu.Lock()
	was := c.down
	c.down = nil
	c.mu.Unlock()
	if was != nil {
		c.logger.Info("kafka client working again", "node", c.opts.Name)
		if c.opts.Health != nil {
			c.opts.Health.Set(c.opts.Name, nil)
		}
	}
}

// isConnErr tells a fetch error that means the brokers are unreachable.
func isConnErr(err error) bool {
	var ke *kerr.Error
	return !errors.As(err, &ke) // broker error codes mean the broker answered
}

// shutdown stops the goroutines and closes out (once).
func (c *consumer) shutdown() {
	c.cancel()
	c.loops.Wait()
	c.watchers.Wait()
	c.closeOut.Do(func() { close(c.out) })
}

// release ends the consumer: it stops polling, commits what is done, closes
// out and leaves the group (whose revoke no longer waits). Records still
// in flight are abandoned: their partition's next owner reads them again.
func (c *consumer) release() error {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.ConnectTimeout)
	defer cancel()
	// Stop the poll loop first so no record is handed over after the
	// last commit, then commit while the group membership still holds.
	c.cancel()
	c.loops.Wait()
	err := c.commit(ctx, nil)
	c.shutdown()
	c.client.Close()
	if c.opts.Health != nil {
		c.opts.Health.Set(c.opts.Name, nil)
	}
	return err
}
