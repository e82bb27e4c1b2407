package kafka

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// Source is a pipeline.Source that emits the records of a topic, read in
// a consumer group, as events on "out" (and payloads that are not JSON on
// "err"). It keeps bus.Source's contract (windows, fail_on, fail_sinks,
// max_deliveries, dead letters) without its per-message machinery: each
// fetch of the client is emitted as one slice with one pipeline.Tracker,
// each record is settled as it completes, and each partition's offset is
// committed below its first record not settled.
//
// A record done (acked) lets its partition's commit pass it once every
// earlier record of the partition is done. A record that failed (see
// bus.SourceOptions.FailOn and FailSinks) is handed over again, by this
// process, with its delivery count one higher, until its MaxDeliveries-th
// failure (or at once when its payload is not JSON): then it is produced
// to DeadLetter and done. A record whose events the graph discarded
// (pipeline.Abandon, or a failing graph) is handed over again too.
//
// When Run's context is cancelled, the source stops emitting, waits until
// every record it emitted has completed (the graph drains them) and
// returns; Close then commits what is done and leaves the group.
type Source struct {
	opts  SourceOptions
	so    bus.SourceOptions // opts.Source, with defaults
	graph bus.Graph
	dead  message.Publisher
	rule  bus.FailRule // resolved by Run

	// connected is closed once c is set, or connecting has ended.
	connected chan struct{}
	c         *consumer
	// attemptsLock holds the attempt record's lock (AttemptsDir) until
	// Close; nil without one.
	attemptsLock *os.File
	life         context.Context // ends at Close: stops connecting
	stop         context.CancelFunc

	// unsettled counts the records emitted into the graph whose
	// completion has not been handled yet.
	unsettled sync.WaitGroup
	// retry is signalled when records wait in retries.
	retry chan struct{}
	// Failed records are settled (handed over again or dead-lettered,
	// which produces) by the settler goroutine, not by the graph
	// goroutine that completed them.
	wake        chan struct{}
	settlerDone chan struct{}

	mu      sync.Mutex
	retries []delivery // to hand over again
	queue   []failedRecord
	stopped bool // the settler has stopped: settle inline
	closed  bool
}

// failedRecord is a record that failed, waiting to be settled.
type failedRecord struct {
	d       delivery
	failure string
}

// NewSource returns a Source feeding graph with the records of opts.Topic,
// read in consumer group opts.Group (see the package doc for offsets,
// retries and rebalances). The brokers are contacted in the background:
// while they are unreachable the source retries with opts.Reconnect's
// backoff and reports itself not ready; with FailFast, NewSource fails
// instead. Dead letters are produced to opts.Source.DeadLetter (default
// the topic + ".dead") with the original record's key and its coordinates
// in header OriginHeader.
func NewSource(ctx context.Context, graph bus.Graph, opts SourceOptions) (*Source, error) {
	opts.EnsureDefaults()
	so := opts.Source
	so.Topic = opts.Topic
	if so.Name == "" {
		so.Name = opts.Name
	}
	if so.Logger == nil {
		so.Logger = opts.Logger
	}
	so.EnsureDefaults()
	opts.Source = so
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("source %s: %w: %w", so.Name, bus.ErrSubscribe, err)
	}
	if opts.Group == "" {
		return nil, fmt.Errorf("source %s: %w: no consumer group", so.Name, bus.ErrSubscribe)
	}
	if so.FailOn != bus.FailOnUnlinkedErr && so.FailOn != bus.FailOnErr {
		return nil, fmt.Errorf("source %s: %w: fail_on %q: want %q or %q", so.Name, bus.ErrSubscribe, so.FailOn, bus.FailOnUnlinkedErr, bus.FailOnErr)
	}
	if len(so.FailSinks) > 0 && graph == nil {
		return nil, fmt.Errorf("source %s: %w: no graph to find fail sinks in", so.Name, bus.ErrSubscribe)
	}
	opts.Reconnect.EnsureDefaults()
	var lock *os.File
	if opts.AttemptsDir != "" {
		var err error
		if lock, err = lockAttempts(opts.AttemptsDir, attemptsFile(opts.AttemptsDir, opts.Group, opts.Topic)); err != nil {
			return nil, fmt.Errorf("source %s: %w: %w", so.Name, bus.ErrSubscribe, err)
		}
	}
	client, err := newClient(opts.Options)
	if err != nil {
		closeLock(lock)
		return nil, fmt.Errorf("source %s: dead letters: %w", so.Name, err)
	}
	s := &Source{
		opts: opts, so: so, graph: graph, attemptsLock: lock,
		dead:        &publisher{client: client, dead: true},
		connected:   make(chan struct{}),
		retry:       make(chan struct{}, 1),
		wake:        make(chan struct{}, 1),
		settlerDone: make(chan struct{}),
	}
	// The subscription outlives Build's context: it ends at Close.
	s.life, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	if opts.Reconnect.FailFast {
		c, err := newConsumer(ctx, opts)
		if err != nil {
			s.stop()
			_ = s.dead.Close()
			closeLock(lock)
			if opts.Health != nil {
				opts.Health.Set(so.Name, err)
			}
			return nil, fmt.Errorf("source %s: %w to %q: %w (fail_fast): %w", so.Name, bus.ErrSubscribe, opts.Topic, bus.ErrDisconnected, err)
		}
		s.c = c
		close(s.connected)
	} else {
		go s.connect()
	}
	go s.settler()
	return s, nil
}

// closeLock releases the attempt record's lock, if any.
func closeLock(f *os.File) {
	if f != nil {
		_ = f.Close()
	}
}

// connect makes the consumer, retrying with Reconnect's backoff while the
// brokers are unreachable, until it is made or Close is called.
func (s *Source) connect() {
	defer close(s.connected)
	_ = s.opts.Reconnect.Retry(s.life, s.so.Name, s.opts.Health, s.opts.Logger, func(ctx context.Context) error {
		c, err := newConsumer(ctx, s.opts)
		if err == nil {
			s.c = c
		}
		return err
	})
}

// Run implements pipeline.Source.
func (s *Source) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	rule, err := bus.NewFailRule(s.graph, s.so)
	if err != nil {
		return err
	}
	s.rule = rule
	select {
	case <-s.connected:
	case <-ctx.Done():
		return nil
	}
	c := s.c
	if c == nil {
		return nil // Close ended the connecting
	}
	var dec recordDecoder // reused from record to record
	for open := true; open && ctx.Err() == nil; {
		var ds []delivery
		select {
		case ds, open = <-c.batches:
			c.began(ds)
		case <-s.retry:
			ds = s.takeRetries()
		case <-ctx.Done():
		}
		if ds = s.setAside(ds); len(ds) == 0 {
			continue
		}
		if err := s.process(ctx, emit, &dec, ds); err != nil {
			// The graph is failing: what it holds completes as failed
			// while it shuts down.
			return err
		}
	}
	// Every record emitted completes, the graph draining what is in
	// flight; return once all are handled, so that Close commits them.
	s.unsettled.Wait()
	if err := c.lostError(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("source %s: %w (fail_fast): %w", s.so.Name, bus.ErrDisconnected, err)
	}
	return nil
}

// process emits a batch of records, tracked together, and flushes it;
// each record is settled when it completes (see completed).
func (s *Source) process(ctx context.Context, emit pipeline.SourceEmitter, dec *recordDecoder, ds []delivery) error {
	tr := pipeline.NewTracker(len(ds), func(i int, o pipeline.Outcome) { s.completed(&ds[i], o) }, nil)
	// A Failed outcome is handed over again: processors may abandon an
	// event for redelivery (pipeline.Abandon).
	tr.SetRedelivers()
	s.unsettled.Add(len(ds))
	for i := range ds {
		ev, err := dec.event(ds[i].rec, ds[i].attempt)
		if err != nil {
			ds[i].permanent = true
			emit.Emit(pipeline.PortErr, tr.Track(i, ev))
			continue
		}
		emit.Emit(pipeline.PortOut, tr.Track(i, ev))
	}
	// The batch is handed over even when a shutdown signal arrives
	// meanwhile: the graph drains what was emitted, and the settling
	// follows.
	return emit.Flush(context.WithoutCancel(ctx))
}

// recordDecoder makes the events of records, as bus.ToEvent makes those
// of their watermill messages, reusing one message and the decoder's
// scratch space from record to record (not safe for concurrent use).
type recordDecoder struct {
	msg message.Message
	dec bus.Decoder
}

// event is the event of r's attempt-th delivery; an error (a payload
// that is not JSON, say) comes with an event for the "err" port.
func (d *recordDecoder) event(r *kgo.Record, attempt int) (pipeline.Event, error) {
	fillMessage(&d.msg, r, attempt)
	return d.dec.ToEvent(&d.msg)
}

// completed settles d, whose events are all done: done when it did not
// fail, handed over again when the graph discarded its events, and
// otherwise queued for the settler (retry or dead letter).
func (s *Source) completed(d *delivery, o pipeline.Outcome) {
	defer s.unsettled.Done()
	if o.Failed() {
		s.redeliver(*d)
		return
	}
	failure := s.failure(o)
	if failure == "" {
		s.c.settle(d, true)
		return
	}
	s.fail(failedRecord{d: *d, failure: failure})
}

// fail queues f for the settler (or settles it at once once the settler
// has stopped).
func (s *Source) fail(f failedRecord) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		s.settle(f)
		return
	}
	s.queue = append(s.queue, f)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	s.mu.Unlock()
}

// setAside returns ds less the records the attempt record sets aside
// (crashStarts), which are dead-lettered, unprocessed, by the settler.
func (s *Source) setAside(ds []delivery) []delivery {
	kept := ds[:0]
	for _, d := range ds {
		if d.crashStarts == 0 {
			kept = append(kept, d)
			continue
		}
		d.permanent = true
		d.attempt = d.crashStarts + 1
		s.fail(failedRecord{d: d, failure: fmt.Sprintf("handling began %d times without finishing, max_deliveries %d: "+
			"the process died handling it (attempts_dir)", d.crashStarts, s.so.MaxDeliveries)})
	}
	return kept
}

// redeliver queues d to be handed over again, with its delivery count
// one higher, unless its partition has been revoked or lost meanwhile
// (then it is abandoned: the partition's next owner reads it).
func (s *Source) redeliver(d delivery) {
	if !s.c.current(&d) {
		s.c.settle(&d, false)
		return
	}
	d.attempt++
	d.permanent = false
	s.mu.Lock()
	s.retries = append(s.retries, d)
	s.mu.Unlock()
	select {
	case s.retry <- struct{}{}:
	default:
	}
}

// takeRetries returns the records waiting to be handed over again, less
// those whose partition has gone (abandoned).
func (s *Source) takeRetries() []delivery {
	s.mu.Lock()
	ds := s.retries
	s.retries = nil
	s.mu.Unlock()
	kept := ds[:0]
	for i := range ds {
		if s.c.current(&ds[i]) {
			kept = append(kept, ds[i])
		} else {
			s.c.settle(&ds[i], false)
		}
	}
	return kept
}

// failure says why o fails its record under FailOn and FailSinks, or ""
// when it does not.
func (s *Source) failure(o pipeline.Outcome) string { return s.rule.Failure(o) }

// settler settles failed records until Close stops it.
func (s *Source) settler() {
	defer close(s.settlerDone)
	for range s.wake {
		for {
			s.mu.Lock()
			q := s.queue
			s.queue = nil
			s.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, f := range q {
				s.settle(f)
			}
		}
	}
}

// settle hands a failed record over again, or, at its MaxDeliveries-th
// delivery (or when its payload is not JSON), dead-letters it and marks it
// done; a dead letter that cannot be produced hands it over again.
func (s *Source) settle(f failedRecord) {
	d := f.d
	id := MessageID(d.rec.Topic, d.rec.Partition, d.rec.Offset)
	n := d.attempt
	if !d.permanent && n < s.so.MaxDeliveries {
		s.so.Logger.Warn("message failed, redelivering", "source", s.so.Name, "message", id,
			"delivery", n, "max_deliveries", s.so.MaxDeliveries, "error", f.failure)
		s.redeliver(d)
		return
	}
	reason := fmt.Sprintf("%s (delivery %d of %d)", f.failure, n, s.so.MaxDeliveries)
	if err := s.deadLetter(&d, reason); err != nil {
		s.so.Logger.Error("cannot publish dead letter, redelivering", "source", s.so.Name, "message", id,
			"dead_letter", s.so.DeadLetter, "error", err)
		s.redeliver(d)
		return
	}
	s.so.Logger.Warn("message dead-lettered", "source", s.so.Name, "message", id,
		"dead_letter", s.so.DeadLetter, "error", reason)
	s.c.settle(&d, true)
}

// deadLetter produces d's record, its metadata and ErrorKey to the
// dead-letter topic, as bus.Source does.
func (s *Source) deadLetter(d *delivery, reason string) error {
	return s.dead.Publish(s.so.DeadLetter, bus.DeadLetterMessage(recordMessage(d.rec, d.attempt), reason))
}

// Close ends the subscription: failed records still queued are settled,
// records waiting to be handed over again are abandoned (read again by
// the partition's next owner), what is done is committed and the group
// left. Run settled every record it emitted before returning (unless the
// graph failed).
func (s *Source) Close(context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stopped = true
	close(s.wake)
	s.mu.Unlock()
	<-s.settlerDone
	s.stop()
	<-s.connected
	var err error
	if c := s.c; c != nil {
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, f := range q {
			s.settle(f)
		}
		s.mu.Lock()
		retries := s.retries
		s.retries = nil
		s.mu.Unlock()
		for i := range retries {
			c.settle(&retries[i], false)
		}
		err = c.release()
	}
	_ = s.dead.Close()
	closeLock(s.attemptsLock)
	if s.opts.Health != nil {
		s.opts.Health.Set(s.so.Name, nil)
	}
	if err != nil {
		return fmt.Errorf("source %s: close: %w", s.so.Name, err)
	}
	return nil
}

var _ pipeline.Closer = (*Source)(nil)
