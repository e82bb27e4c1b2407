package redisstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/connectors/bus"
)

// maxAckBatch bounds the entry IDs acknowledged by one XACK.
const maxAckBatch = 1024

// subscriber reads one stream through a consumer group. Each call of its
// dial method starts a session (one reader, one claimer, one retrier)
// handing out the entries of each read as one slice of deliveries on a
// channel that closes when a command fails, and the Source dials again.
// What outlives a session is owned by the subscriber: the client
// (go-redis reconnects by itself), the entries in flight, the retries
// due, the acks not yet sent, and one goroutine, the acker, which sends
// the acks the reader has not sent with its next XREADGROUP. Each entry
// handed out is settled by a call of done or nack, from whichever
// goroutine completed it: no goroutine, channel or message per entry.
//
// At most inflight entries (window × windows_in_flight) are in flight
// (read and not yet acknowledged): the next windows are read and processed
// while earlier ones are synced and acknowledged. Each holds a slot from delivery until it is acknowledged,
// or dropped after a failure that is not retried.
type subscriber struct {
	client *redis.Client
	o      Options
	// ackWithBlock: the acks may go in the pipeline of a blocking
	// XREADGROUP, which go-redis reads with the client's read timeout
	// (a lone XREADGROUP gets BLOCK + 10 s): it is longer than blockFor.
	ackWithBlock bool

	slots     chan struct{}  // one token per entry in flight
	freed     chan struct{}  // a slot was freed
	ackWake   chan struct{}  // acks were queued
	retryWake chan struct{}  // a retry was scheduled
	stop      chan struct{}  // closed by close
	ackerDone chan struct{}  // closed when the acker has flushed
	unsettled sync.WaitGroup // one per entry handed out and not settled

	mu         sync.Mutex
	inflight   map[string]bool // handed out and not yet XACKed
	acks       []string        // to XACK: taken by the reader or the acker
	retries    []retry         // nacked entries waiting for their retry
	histCursor string          // last entry read back from the pending list
	histDone   bool            // the pending list has been read back
	closing    bool
}

// delivery is an entry handed out: taken (in flight here), holding a
// slot, and delivered n times (the group's count, this delivery
// included).
type delivery struct {
	x redis.XMessage
	n int
	// permanent marks an entry whose payload no retry mends (not JSON):
	// set by the Source, it is dead-lettered at its first failure.
	permanent bool
}

// retry is a nacked entry to claim back when due.
type retry struct {
	id  string
	due time.Time
}

func newSubscriber(client *redis.Client, o Options, inflight int) *subscriber {
	rt := client.Options().ReadTimeout
	s := &subscriber{
		client: client, o: o,
		ackWithBlock: rt <= 0 || rt >= blockFor+time.Second, // 0, -1: no timeout
		slots:        make(chan struct{}, inflight),
		freed:        make(chan struct{}, 1),
		ackWake:      make(chan struct{}, 1),
		retryWake:    make(chan struct{}, 1),
		stop:         make(chan struct{}),
		ackerDone:    make(chan struct{}),
		inflight:     map[string]bool{},
		histCursor:   "0",
	}
	go s.acker()
	return s
}

// dial checks the server, creates the group when missing and starts a
// session: the channel carries the deliveries of each read, and closes
// when the session ends (a command failed, or ctx ended); release ends
// the session and nacks what it handed out and nobody took.
func (s *subscriber) dial(ctx context.Context) (<-chan []delivery, func(), error) {
	pctx, cancel := context.WithTimeout(ctx, s.o.DialTimeout)
	defer cancel()
	if err := s.client.Ping(pctx).Err(); err != nil {
		return nil, nil, fmt.Errorf("%w at %s: %w", ErrConnect, s.o.redacted(), err)
	}
	// A new group reads the stream from its first entry.
	err := s.client.XGroupCreateMkStream(pctx, s.o.Stream, s.o.Group, "0").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return nil, nil, fmt.Errorf("%w at %s: create group %q on stream %q: %w", ErrConnect, s.o.redacted(), s.o.Group, s.o.Stream, err)
	}
	sctx, end := context.WithCancel(ctx)
	// Room for a few reads: each is one slice.
	out := make(chan []delivery, 4)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context, chan<- []delivery) error{s.read, s.claimLoop, s.retryLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := loop(sctx, out); err != nil && sctx.Err() == nil {
				s.o.Logger.Warn("redis stream session ends", "stream", s.o.Stream, "consumer", s.o.Consumer, "error", err)
				end()
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out, func() {
		end()
		wg.Wait()
		// What the session handed out and nobody took is nacked: the
		// entries stay pending (a closing subscriber drops them).
		for ds := range out {
			s.nackAll(ds)
		}
	}, nil
}

// waitFree waits until a quarter of the slots are free, or some are and
// no more have been freed for readLinger, and returns how many are: the
// reader then reads them in one XREADGROUP instead of one entry per ack.
func (s *subscriber) waitFree(ctx context.Context) (int, error) {
	want := max(1, cap(s.slots)/4)
	var linger *time.Timer
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for {
		free := cap(s.slots) - len(s.slots)
		if free >= want {
			return free, nil
		}
		var expired <-chan time.Time
		if free > 0 {
			if linger == nil {
				linger = time.NewTimer(readLinger)
			}
			expired = linger.C
		}
		select {
		case <-s.freed:
		case <-expired:
			return cap(s.slots) - len(s.slots), nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// tryAcquire takes up to n free slots without waiting.
func (s *subscriber) tryAcquire(n int) int {
	for i := range n {
		select {
		case s.slots <- struct{}{}:
		default:
			return i
		}
	}
	return n
}

func (s *subscriber) release(n int) {
	for range n {
		<-s.slots
	}
	if n > 0 {
		select {
		case s.freed <- struct{}{}:
		default:
		}
	}
}

// read delivers the consumer's own pending entries (those a previous run
// left unacknowledged), once, then new entries, as slots free up. It holds
// no slot while it waits for entries, so the claimer finds free slots:
// it reads as many entries as slots are free, then takes a slot for each
// as it hands it out.
func (s *subscriber) read(ctx context.Context, out chan<- []delivery) error {
	for {
		n, err := s.waitFree(ctx)
		if err != nil {
			return nil
		}
		s.mu.Lock()
		history, cursor := !s.histDone, s.histCursor
		s.mu.Unlock()
		args := &redis.XReadGroupArgs{Group: s.o.Group, Consumer: s.o.Consumer, Count: int64(n)}
		if history {
			args.Streams, args.Block = []string{s.o.Stream, cursor}, -1
		} else {
			args.Streams, args.Block = []string{s.o.Stream, ">"}, blockFor
		}
		var before map[string]bool
		if history {
			before = s.inflightNow()
		}
		res, err := s.readGroup(ctx, args)
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("XREADGROUP: %w", err)
		}
		var read []redis.XMessage
		if len(res) > 0 {
			read = res[0].Messages
		}
		xs := s.take(read, before)
		var counts map[string]int
		if history {
			if counts, err = s.pendingCounts(ctx, xs); err != nil {
				s.forgetAll(xs)
				return err
			}
			s.mu.Lock()
			if len(read) == 0 {
				s.histDone = true
			} else {
				s.histCursor = read[len(read)-1].ID
			}
			s.mu.Unlock()
		}
		// Entries read but not handed out when the session ends stay
		// pending; the claimer delivers them after ClaimIdle. The slots
		// free now are taken at once, not one per entry.
		if err := s.emit(ctx, out, xs, counts, s.tryAcquire(len(xs))); err != nil {
			return nil
		}
	}
}

// readGroup sends XREADGROUP, preceded in one pipeline by an XACK of the
// acks queued (maxAckBatch at most), as the go-redis benchmark
// BenchmarkBareXReadGroupAck does: one round trip, and one write to the
// server's append-only file, for both; unless the read blocks and the
// client's read timeout (read_timeout in the URL) is too short for it in
// a pipeline. Acks the XACK did not confirm are queued again for the
// acker.
func (s *subscriber) readGroup(ctx context.Context, args *redis.XReadGroupArgs) ([]redis.XStream, error) {
	var ids []string
	if args.Block < 0 || s.ackWithBlock {
		ids = s.takeAcks(maxAckBatch)
	}
	if len(ids) == 0 {
		return s.client.XReadGroup(ctx, args).Result()
	}
	pipe := s.client.Pipeline()
	ack := pipe.XAck(ctx, s.o.Stream, s.o.Group, ids...)
	read := pipe.XReadGroup(ctx, args)
	_, _ = pipe.Exec(ctx) // each command's error is its own
	if ack.Err() != nil {
		s.queueAcks(ids)
	} else {
		s.forget(ids...)
	}
	return read.Result()
}

// claimLoop keeps the entries in flight here from looking idle (refresh)
// and takes over, every claimEvery, the group's entries idle for
// ClaimIdle: those of consumers that died, and this consumer's own
// failures whose retry did not happen.
func (s *subscriber) claimLoop(ctx context.Context, out chan<- []delivery) error {
	t := time.NewTicker(s.o.claimEvery())
	defer t.Stop()
	for {
		if err := s.refresh(ctx); err != nil {
			return err
		}
		if err := s.claimIdle(ctx, out); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// refresh resets the idle time of the entries in flight here that have
// been idle for a quarter of ClaimIdle (XCLAIM ... JUSTID to this
// consumer, which does not count a delivery), so that no other consumer
// takes over an entry that is only slow: ClaimIdle is how long a consumer
// must be gone, not how long an entry may take. An entry another consumer
// took over meanwhile is idle for less and is left to it.
func (s *subscriber) refresh(ctx context.Context) error {
	ids := make([]string, 0, len(s.slots))
	s.mu.Lock()
	waiting := make(map[string]bool, len(s.retries))
	for _, r := range s.retries {
		waiting[r.id] = true
	}
	for id := range s.inflight {
		// A failed entry waiting for its retry is left idle: the retry
		// claims it back only if it has been idle since it failed.
		if !waiting[id] {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), maxAckBatch)]
		ids = ids[len(chunk):]
		err := s.client.XClaimJustID(ctx, &redis.XClaimArgs{
			Stream: s.o.Stream, Group: s.o.Group, Consumer: s.o.Consumer,
			MinIdle: s.o.ClaimIdle / 4, Messages: chunk,
		}).Err()
		if err != nil && !errors.Is(err, redis.Nil) {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("XCLAIM JUSTID: %w", err)
		}
	}
	return nil
}

func (s *subscriber) claimIdle(ctx context.Context, out chan<- []delivery) error {
	cursor := "0-0"
	for {
		n := s.tryAcquire(cap(s.slots))
		if n == 0 {
			return nil
		}
		before := s.inflightNow()
		xs, next, err := s.client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: s.o.Stream, Group: s.o.Group, Consumer: s.o.Consumer,
			MinIdle: s.o.ClaimIdle, Start: cursor, Count: int64(n),
		}).Result()
		if err != nil {
			s.release(n)
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("XAUTOCLAIM: %w", err)
		}
		xs = s.take(xs, before)
		counts, err := s.pendingCounts(ctx, xs)
		if err != nil {
			s.forgetAll(xs)
			s.release(n)
			return err
		}
		if len(xs) > 0 {
			s.o.Logger.Info("claimed idle entries", "stream", s.o.Stream, "consumer", s.o.Consumer, "entries", len(xs), "claim_idle", s.o.ClaimIdle)
		}
		if err := s.emit(ctx, out, xs, counts, n); err != nil {
			return nil
		}
		if next == "0-0" || next == "" {
			return nil
		}
		cursor = next
	}
}

// retryLoop claims back each nacked entry when its retry is due and
// delivers it again.
func (s *subscriber) retryLoop(ctx context.Context, out chan<- []delivery) error {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		s.mu.Lock()
		var due, later []retry
		next := now.Add(time.Hour)
		for _, r := range s.retries {
			if !r.due.After(now) {
				due = append(due, r)
			} else {
				later = append(later, r)
				next = minTime(next, r.due)
			}
		}
		s.retries = later
		s.mu.Unlock()
		if len(due) > 0 {
			if err := s.redeliver(ctx, out, due); err != nil {
				return err
			}
			continue
		}
		t.Reset(time.Until(next))
		select {
		case <-ctx.Done():
			return nil
		case <-s.retryWake:
		case <-t.C:
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// redeliver claims the due entries back (XCLAIM, which counts a delivery)
// and hands them out again. An entry that cannot be claimed back (another
// consumer took it over, or it was trimmed away) is dropped from this
// consumer.
func (s *subscriber) redeliver(ctx context.Context, out chan<- []delivery, due []retry) error {
	pipe := s.client.Pipeline()
	claims := make([]*redis.XMessageSliceCmd, len(due))
	for i, r := range due {
		// The entry has been idle since its delivery, at least RetryDelay
		// ago; a consumer that took it over meanwhile has reset that.
		claims[i] = pipe.XClaim(ctx, &redis.XClaimArgs{
			Stream: s.o.Stream, Group: s.o.Group, Consumer: s.o.Consumer,
			MinIdle: s.o.RetryDelay / 2, Messages: []string{r.id},
		})
	}
	if _, err := pipe.Exec(ctx); err != nil && !isReply(err) {
		s.mu.Lock()
		s.retries = append(s.retries, due...)
		s.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("XCLAIM: %w", err)
	}
	var xs []redis.XMessage
	for i, c := range claims {
		got, err := c.Result()
		if err != nil || len(got) == 0 || got[0].Values == nil {
			if err != nil {
				s.o.Logger.Warn("cannot claim a failed entry back; another consumer will", "stream", s.o.Stream, "id", due[i].id, "error", err)
			}
			s.forget(due[i].id)
			s.release(1)
			continue
		}
		xs = append(xs, got[0])
	}
	counts, err := s.pendingCounts(ctx, xs)
	if err != nil {
		s.requeue(xs)
		return err
	}
	// Each keeps the slot it had.
	if !s.send(ctx, out, deliveries(xs, counts)) {
		s.requeue(xs)
	}
	return nil
}

// requeue schedules entries claimed back but not handed out for another
// retry.
func (s *subscriber) requeue(xs []redis.XMessage) {
	s.mu.Lock()
	for _, x := range xs {
		s.retries = append(s.retries, retry{id: x.ID, due: time.Now().Add(s.o.RetryDelay)})
	}
	s.mu.Unlock()
}

// isReply tells a server's error reply to one command of a pipeline
// (handled with that command) from a failed exchange.
func isReply(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// pendingCounts returns the group's delivery count of each entry that is
// this consumer's, from XPENDING (one pipelined command per entry).
func (s *subscriber) pendingCounts(ctx context.Context, xs []redis.XMessage) (map[string]int, error) {
	if len(xs) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.XPendingExtCmd, len(xs))
	for i, x := range xs {
		cmds[i] = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: s.o.Stream, Group: s.o.Group, Consumer: s.o.Consumer, Start: x.ID, End: x.ID, Count: 1,
		})
	}
	if _, err := pipe.Exec(ctx); err != nil && !isReply(err) {
		return nil, fmt.Errorf("XPENDING: %w", err)
	}
	counts := make(map[string]int, len(xs))
	for i, c := range cmds {
		if p, err := c.Result(); err == nil && len(p) == 1 {
			counts[xs[i].ID] = int(p[0].RetryCount)
		}
	}
	return counts, nil
}

// take marks as in flight, and returns, the entries of xs that are
// neither in flight nor in before; it acknowledges those trimmed from the
// stream while pending (nothing to deliver). Every path that reads entries
// takes them as soon as Redis has replied, so that two paths reading one
// entry (the reader and the claimer, say) deliver it once.
func (s *subscriber) take(xs []redis.XMessage, before map[string]bool) []redis.XMessage {
	var kept []redis.XMessage
	var trimmed []string
	s.mu.Lock()
	for _, x := range xs {
		switch {
		case s.inflight[x.ID] || before[x.ID]:
		case x.Values == nil:
			trimmed = append(trimmed, x.ID)
		default:
			s.inflight[x.ID] = true
			kept = append(kept, x)
		}
	}
	s.mu.Unlock()
	for _, id := range trimmed {
		s.ack(id)
	}
	return kept
}

func (s *subscriber) forgetAll(xs []redis.XMessage) {
	for _, x := range xs {
		s.forget(x.ID)
	}
}

// emit hands out xs, taken (see take), as one slice, each delivered
// counts[ID] times (1 when missing) and with a slot: one of the held
// slots the caller acquired, else one it waits for; the held slots left
// over are released. The error is ctx's, when the session ended before
// the slice was handed out; its entries are then no longer in flight.
func (s *subscriber) emit(ctx context.Context, out chan<- []delivery, xs []redis.XMessage, counts map[string]int, held int) error {
	if len(xs) == 0 {
		s.release(held)
		return nil
	}
	if held > len(xs) {
		s.release(held - len(xs))
		held = len(xs)
	}
	for held < len(xs) {
		select {
		case s.slots <- struct{}{}:
			held++
		case <-ctx.Done():
			s.release(held)
			s.forgetAll(xs)
			return ctx.Err()
		}
	}
	if !s.send(ctx, out, deliveries(xs, counts)) {
		s.release(held)
		s.forgetAll(xs)
		return ctx.Err()
	}
	return nil
}

// deliveries returns the deliveries of xs, each delivered counts[ID]
// times (1 when missing).
func deliveries(xs []redis.XMessage, counts map[string]int) []delivery {
	ds := make([]delivery, len(xs))
	for i, x := range xs {
		ds[i] = delivery{x: x, n: max(1, counts[x.ID])}
	}
	return ds
}

// send hands ds out, to be settled each by done or nack. It returns
// false, ds not handed out, when ctx ends first.
func (s *subscriber) send(ctx context.Context, out chan<- []delivery, ds []delivery) bool {
	s.unsettled.Add(len(ds))
	select {
	case out <- ds:
		return true
	case <-ctx.Done():
		s.unsettled.Add(-len(ds))
		return false
	}
}

// done settles the delivery of id, done: its XACK is queued and its
// slot freed.
func (s *subscriber) done(id string) {
	s.mu.Lock()
	s.acks = append(s.acks, id)
	s.mu.Unlock()
	select {
	case s.ackWake <- struct{}{}:
	default:
	}
	s.release(1)
	s.unsettled.Done()
}

// nack settles the delivery of id, failed: the entry stays pending and
// keeps its slot until its retry (nacked).
func (s *subscriber) nack(id string) {
	if s.nacked(id) {
		s.release(1)
	}
	s.unsettled.Done()
}

// nackAll nacks every delivery of ds.
func (s *subscriber) nackAll(ds []delivery) {
	for _, d := range ds {
		s.nack(d.x.ID)
	}
}

// nacked schedules the retry of the nacked entry id, or, once the
// subscriber is closing, drops it from this consumer; it reports whether
// the entry's slot is to be freed (dropped).
func (s *subscriber) nacked(id string) bool {
	s.mu.Lock()
	if s.closing {
		delete(s.inflight, id)
		s.mu.Unlock()
		return true
	}
	s.retries = append(s.retries, retry{id: id, due: time.Now().Add(s.o.RetryDelay)})
	s.mu.Unlock()
	select {
	case s.retryWake <- struct{}{}:
	default:
	}
	return false
}

// ack queues id for XACK.
func (s *subscriber) ack(id string) { s.queueAcks([]string{id}) }

// queueAcks queues ids for XACK, by the reader's next XREADGROUP or else
// the acker.
func (s *subscriber) queueAcks(ids []string) {
	if len(ids) == 0 {
		return
	}
	s.mu.Lock()
	s.acks = append(s.acks, ids...)
	s.mu.Unlock()
	select {
	case s.ackWake <- struct{}{}:
	default:
	}
}

// takeAcks takes up to n of the acks queued (n <= 0: all).
func (s *subscriber) takeAcks(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n <= 0 || n > len(s.acks) {
		n = len(s.acks)
	}
	if n == 0 {
		return nil
	}
	ids := append([]string(nil), s.acks[:n]...)
	rest := copy(s.acks, s.acks[n:])
	clear(s.acks[rest:])
	s.acks = s.acks[:rest]
	return ids
}

// inflightNow copies the set of entries in flight. Taken before a read of
// pending entries (the read-back, XAUTOCLAIM), it tells which of the
// entries read were in flight then: those are skipped even if they have
// been acknowledged since, which would otherwise make them look new.
func (s *subscriber) inflightNow() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]bool, len(s.inflight))
	for id := range s.inflight {
		m[id] = true
	}
	return m
}

func (s *subscriber) forget(ids ...string) {
	s.mu.Lock()
	for _, id := range ids {
		delete(s.inflight, id)
	}
	s.mu.Unlock()
}

// ackLinger is how long the acker leaves queued acks to the reader,
// which sends them with its next XREADGROUP, before it sends them itself:
// longer than a read's round trip on a busy server, short enough that
// an entry is not left pending for long after it is done.
const ackLinger = 10 * time.Millisecond

// acker sends the acks the reader has not sent ackLinger after they were
// queued (the reader is waiting for new entries, or its session is down),
// retrying a failed XACK until it succeeds; once stop is closed it sends
// what is left and returns.
func (s *subscriber) acker() {
	defer close(s.ackerDone)
	t := time.NewTimer(ackLinger)
	t.Stop()
	for {
		select {
		case <-s.ackWake:
		case <-s.stop:
			s.flushAcks(s.takeAcks(0))
			return
		}
		t.Reset(ackLinger)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
		}
		s.flushAcks(s.takeAcks(0))
	}
}

// flushAcks XACKs ids, maxAckBatch per XACK.
func (s *subscriber) flushAcks(ids []string) {
	for len(ids) > 0 {
		n := min(len(ids), maxAckBatch)
		s.xack(ids[:n])
		ids = ids[n:]
	}
}

// xack XACKs ids, retrying with backoff while the server is away; after
// stop, for DialTimeout at most (the entries stay pending and are
// delivered again).
func (s *subscriber) xack(ids []string) {
	r := bus.Reconnect{Initial: 50 * time.Millisecond, Max: time.Second}
	r.EnsureDefaults()
	var deadline time.Time
	for n := 0; ; n++ {
		ctx, cancel := context.WithTimeout(context.Background(), s.o.DialTimeout)
		err := s.client.XAck(ctx, s.o.Stream, s.o.Group, ids...).Err()
		cancel()
		if err == nil {
			s.forget(ids...)
			return
		}
		stopped := false
		select {
		case <-s.stop:
			stopped = true
		default:
		}
		if stopped && deadline.IsZero() {
			deadline = time.Now().Add(s.o.DialTimeout)
		}
		if stopped && time.Now().After(deadline) {
			s.o.Logger.Error("acks not sent; the entries will be delivered again", "stream", s.o.Stream,
				"entries", len(ids), "error", err)
			return
		}
		if n == 0 {
			s.o.Logger.Warn("XACK failed, retrying", "stream", s.o.Stream, "entries", len(ids), "error", err)
		}
		time.Sleep(r.Backoff(n))
	}
}

// close stops retries, waits (DialTimeout at most) until every entry
// handed out is settled (done or nack), sends the last acks and closes the client.
func (s *subscriber) close() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	for _, r := range s.retries {
		delete(s.inflight, r.id)
	}
	s.retries = nil
	s.mu.Unlock()
	settled := make(chan struct{})
	go func() {
		s.unsettled.Wait()
		close(settled)
	}()
	t := time.NewTimer(s.o.DialTimeout)
	select {
	case <-settled:
	case <-t.C:
		s.o.Logger.Warn("closing with entries not settled; they stay pending", "stream", s.o.Stream)
	}
	t.Stop()
	close(s.stop)
	<-s.ackerDone
	return s.client.Close()
}
