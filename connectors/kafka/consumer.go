package kafka

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
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

// consumer is the consumer-group client of a source. It owns two
// goroutines: the poll loop, which hands the records fetched over in
// batches (in offset order within each partition) on batches, and the
// committer. Both stop when ctx ends; batches is closed once the poll loop
// has. A record handed over stays in flight until settle is called for it
// (once, whatever its retries).
type consumer struct {
	opts    SourceOptions
	window  int // MaxInFlight
	maxPoll int // the most records in one batch
	client  *kgo.Client
	batches chan []delivery
	space   chan struct{} // signalled when records in flight settle
	logger  *slog.Logger

	ctx     context.Context
	cancel  context.CancelFunc
	loops   sync.WaitGroup // poll loop and committer
	started atomic.Bool    // the first contact succeeded

	mu       sync.Mutex
	parts    map[int32]*partition // assigned partitions of opts.Topic
	inflight int                  // records handed over and not settled
	closing  bool                 // release has begun: revokes do not wait
	down     error                // the last poll error, while it lasts
	lostErr  error                // why the poll loop ended by itself (fail_fast)

	commitMu sync.Mutex // serialises commits

	// attempts is the durable attempt record (SourceOptions.AttemptsDir),
	// nil without one; used under mu. advanced is signalled when a mark
	// moves, for attemptsWriter.
	attempts *attempts
	advanced chan struct{}
}

// partition is the progress of one assigned partition. A new value is made
// at each assignment, so a record remembers the partition value it was
// handed over under and its settling is ignored once that is gone.
type partition struct {
	id int32
	// pending[head:] are the offsets handed over and not yet below the
	// mark, ascending, each with whether it is done.
	pending   []pendingOffset
	head      int
	mark      int64 // next offset to commit: all before are done; -1 none yet
	committed int64 // last offset committed; -1 none
	inflight  int   // records handed over and not settled
	revoking  bool  // hand over no more records
	// counted: the record at the partition's mark in the attempt record
	// (attempts) has been counted in this assignment.
	counted bool
	// begun is the highest offset whose batch has begun reaching the graph
	// (consumer.began); -1 none.
	begun int64
}

// pendingOffset is one offset handed over and whether it is done.
type pendingOffset struct {
	offset int64
	done   bool
}

func newPartition(id int32) *partition {
	return &partition{id: id, mark: -1, committed: -1, begun: -1}
}

// add registers offset, above every offset added before, as handed over.
func (p *partition) add(offset int64) {
	p.pending = append(p.pending, pendingOffset{offset: offset})
}

// waiting is how many offsets handed over are not yet below the mark.
func (p *partition) waiting() int { return len(p.pending) - p.head }

// finish records offset as done and advances the mark past every done
// offset at the head: the mark is one past the highest offset below which
// every offset handed over is done, whatever order they finish in.
func (p *partition) finish(offset int64) {
	q := p.pending[p.head:]
	i, found := slices.BinarySearchFunc(q, offset, func(e pendingOffset, o int64) int { return cmp.Compare(e.offset, o) })
	if !found {
		return
	}
	q[i].done = true
	for p.head < len(p.pending) && p.pending[p.head].done {
		p.mark = p.pending[p.head].offset + 1
		p.head++
	}
	switch {
	case p.head == len(p.pending):
		p.pending, p.head = p.pending[:0], 0
	case p.head >= 1024 && 2*p.head >= len(p.pending):
		n := copy(p.pending, p.pending[p.head:])
		p.pending, p.head = p.pending[:n], 0
	}
}

// delivery is one record handed over, and how many times.
type delivery struct {
	rec     *kgo.Record
	part    *partition
	attempt int
	// permanent: its payload is not JSON, which no retry mends.
	permanent bool
	// crashStarts, when > 0, is how many times handling the record began
	// without finishing, by the attempt record: it is dead-lettered
	// without being emitted.
	crashStarts int
}

func newConsumer(ctx context.Context, o SourceOptions) (*consumer, error) {
	c := &consumer{
		opts:    o,
		window:  o.MaxInFlight,
		maxPoll: max(o.Source.Window, 1),
		batches: make(chan []delivery),
		space:   make(chan struct{}, 1),
		logger:  o.Logger,
		parts:   map[int32]*partition{},
	}
	if o.AttemptsDir != "" {
		// The Source holds the record's lock (lockAttempts).
		a, err := loadAttempts(attemptsFile(o.AttemptsDir, o.Group, o.Topic), o.Source.MaxDeliveries)
		if err != nil {
			return nil, err
		}
		c.attempts = a
	}
	c.ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	reset := kgo.NewOffset().AtStart()
	if o.Start == StartLatest {
		reset = kgo.NewOffset().AtEnd()
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID("flowrun-" + o.Name),
		kgo.ConsumerGroup(o.Group),
		kgo.ConsumeTopics(o.Topic),
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
	if c.attempts != nil {
		c.advanced = make(chan struct{}, 1)
		c.loops.Add(1)
		go c.attemptsWriter()
	}
	return c, nil
}

// attemptsWriter records the marks that moved (attempts.advance) until the
// consumer stops: a record finished before a crash is then not counted as
// begun again at the next start, but for one finished after the last
// write (a window of one write).
func (c *consumer) attemptsWriter() {
	defer c.loops.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.advanced:
		}
		c.mu.Lock()
		err := c.attempts.advance(c.parts)
		c.mu.Unlock()
		if err != nil {
			c.logger.Error("cannot write the attempt record", "node", c.opts.Name, "error", err)
		}
	}
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

// poll hands the records fetched over in batches (one per fetch, in offset
// order within each partition), at most MaxInFlight unsettled.
func (c *consumer) poll() {
	defer c.loops.Done()
	defer close(c.batches)
	for {
		free := c.room()
		if free == 0 {
			return
		}
		fetches := c.client.PollRecords(c.ctx, min(free, c.maxPoll))
		if c.ctx.Err() != nil || fetches.IsClientClosed() {
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
				return
			}
		}
		recs := fetches.Records()
		if len(recs) > 0 || ferr == nil {
			c.setUp()
		}
		if len(recs) == 0 {
			continue
		}
		ds := c.handOver(recs)
		if len(ds) == 0 {
			continue
		}
		select {
		case c.batches <- ds:
		case <-c.ctx.Done():
			for i := range ds {
				c.settle(&ds[i], false)
			}
			return
		}
	}
}

// room waits until a whole batch (Window records, or MaxInFlight when it
// is smaller) fits under MaxInFlight and returns how many records may be
// handed over; 0 once the consumer stops. Waiting for a whole batch's room
// instead of one record's keeps batches large once the limit is reached:
// each record settled would otherwise let one more be fetched alone.
func (c *consumer) room() int {
	need := min(c.maxPoll, c.window)
	for {
		c.mu.Lock()
		free := c.window - c.inflight
		c.mu.Unlock()
		if free >= need {
			return free
		}
		select {
		case <-c.space:
		case <-c.ctx.Done():
			return 0
		}
	}
}

// handOver registers recs with their partitions, in one batch of
// deliveries; records of a partition not assigned or being revoked are
// left out (the partition's next owner reads them).
func (c *consumer) handOver(recs []*kgo.Record) []delivery {
	ds := make([]delivery, 0, len(recs))
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		p := c.parts[r.Partition]
		if p == nil || p.revoking || r.Topic != c.opts.Topic {
			continue
		}
		p.add(r.Offset)
		p.inflight++
		ds = append(ds, delivery{rec: r, part: p, attempt: 1})
	}
	c.inflight += len(ds)
	return ds
}

// began records, in the attempt record (when there is one), that the
// batch ds taken from batches is about to reach the graph, before any of
// its records does: a crash while handling one is then counted at the
// next start. It sets crashStarts on the deliveries to set aside.
func (c *consumer) began(ds []delivery) {
	if c.attempts == nil || len(ds) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	marks := map[*partition]int64{}
	current := ds[:0:0]
	for _, d := range ds {
		p := d.part
		if c.parts[d.rec.Partition] != p || p.head >= len(p.pending) {
			continue // revoked meanwhile: its next owner counts
		}
		p.begun = max(p.begun, d.rec.Offset)
		if _, ok := marks[p]; !ok {
			marks[p] = p.pending[p.head].offset
		}
		current = append(current, d)
	}
	if len(current) < len(ds) {
		return // rare: leave the record as it is rather than count a partition gone
	}
	if err := c.attempts.check(ds, marks); err != nil {
		c.logger.Error("cannot write the attempt record: a record that kills the process may be read again on every restart",
			"node", c.opts.Name, "error", err)
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
		if c.advanced != nil {
			select {
			case c.advanced <- struct{}{}:
			default:
			}
		}
	}
	d.part.inflight--
	c.inflight--
	c.mu.Unlock()
	select {
	case c.space <- struct{}{}:
	default:
	}
}

// recordMessage makes the watermill message of r's attempt-th delivery
// (see fillMessage).
func recordMessage(r *kgo.Record, attempt int) *message.Message {
	m := message.NewMessage("", nil)
	fillMessage(m, r, attempt)
	return m
}

// fillMessage sets m (whose metadata it clears) to r's attempt-th
// delivery: id topic/partition/offset, headers as metadata (several values
// of one header joined with ", "), MetaKey the record's coordinates and
// key, DeliveredKey the attempt.
func fillMessage(m *message.Message, r *kgo.Record, attempt int) {
	m.UUID = MessageID(r.Topic, r.Partition, r.Offset)
	m.Payload = r.Value
	if m.Metadata == nil {
		m.Metadata = make(message.Metadata, len(r.Headers)+3)
	}
	clear(m.Metadata)
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
}

// recordMeta is the MetaKey object of r: {"topic","partition","offset"}
// and "key" when r has one (as a string; invalid UTF-8 becomes U+FFFD).
func recordMeta(r *kgo.Record) string {
	var num [20]byte
	var b strings.Builder
	b.Grow(48 + len(r.Topic) + len(r.Key))
	b.WriteString(`{"topic":`)
	writeJSONString(&b, r.Topic)
	b.WriteString(`,"partition":`)
	b.Write(strconv.AppendInt(num[:0], int64(r.Partition), 10))
	b.WriteString(`,"offset":`)
	b.Write(strconv.AppendInt(num[:0], r.Offset, 10))
	if r.Key != nil {
		b.WriteString(`,"key":`)
		writeJSONString(&b, string(r.Key))
	}
	b.WriteByte('}')
	return b.String()
}

// writeJSONString writes s as a JSON string, the bytes json.Marshal
// gives (HTML characters and U+2028/U+2029 escaped, invalid UTF-8 as
// U+FFFD): printable ASCII with nothing to escape is copied as is, the
// rest is left to json.Marshal.
func writeJSONString(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			b.Write(q)
			return
		}
	}
	b.WriteByte('"')
	b.WriteString(s)
	b.WriteByte('"')
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
		c.parts[id] = newPartition(id)
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
	fatal := c.opts.Reconnect.FailFast && isConnErr(err) && c.started.Load()
	c.mu.Lock()
	first := c.down == nil
	c.down = err
	if fatal && c.lostErr == nil {
		c.lostErr = err
	}
	c.mu.Unlock()
	if first {
		c.logger.Warn("kafka client failing; it keeps trying", "node", c.opts.Name, "error", err)
	}
	if fatal {
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

// shutdown stops the goroutines (batches is then closed).
func (c *consumer) shutdown() {
	c.cancel()
	c.loops.Wait()
}

// lostError returns why the poll loop ended by itself (fail_fast and the
// brokers lost), or nil.
func (c *consumer) lostError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lostErr
}

// release ends the consumer: it stops polling, commits what is done and
// leaves the group (whose revoke no longer waits). Records still
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
	c.client.Close()
	if c.opts.Health != nil {
		c.opts.Health.Set(c.opts.Name, nil)
	}
	return err
}
