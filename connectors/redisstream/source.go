package redisstream

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// Source is a pipeline.Source reading a stream through a consumer group,
// with the promises of a bus.Source (see NewSource): it emits the entries
// of each read as events on "out" (payloads that are not JSON on "err"),
// in slices of at most Window with one pipeline.Tracker each, and settles
// each entry when everything derived from it is done: the completion
// queues its XACK and frees its slot directly, with no goroutine, channel
// or watermill message per entry. A failed entry is retried, or
// dead-lettered at max_deliveries, by the Source's settler goroutine.
type Source struct {
	sub    *subscriber
	dead   *publisher
	graph  bus.Graph
	so     bus.SourceOptions
	r      bus.Reconnect
	health *component.Health
	rule   bus.FailRule // resolved by Run

	// batches carries the deliveries of each read, from the sessions
	// the connect goroutine dials in turn; closed when it returns.
	batches     chan []delivery
	cancel      context.CancelFunc // ends the connect goroutine
	connectDone chan struct{}

	// unsettled counts the entries emitted into the graph and not yet
	// settled.
	unsettled sync.WaitGroup
	// Failed entries are settled (retried or dead-lettered, which
	// appends to a stream) by the settler goroutine, not by the graph
	// goroutine that completed them.
	wake        chan struct{}
	settlerDone chan struct{}

	mu      sync.Mutex
	queue   []failedEntry // failed entries waiting for the settler
	stopped bool          // the settler has stopped: settle inline
	err     error         // what ended the connect goroutine by itself
	closed  bool
}

// failedEntry is an entry that failed, waiting to be settled.
type failedEntry struct {
	d       delivery
	failure string
}

// SourceOptions configure NewSource.
type SourceOptions struct {
	Options
	// Source configures the windowed acknowledgement; its Topic is
	// Options.Stream and its DeadLetter defaults to Stream + ".dead".
	// Reject and Linger are not used: each read is emitted as it
	// arrives, in slices of at most Window.
	Source bus.SourceOptions
	// Reconnect says how to behave while the server is unreachable.
	Reconnect bus.Reconnect
	// Health, when set, reports the source not ready while disconnected.
	Health *component.Health
}

// NewSource returns a Source reading opts.Stream as consumer
// opts.Consumer of group opts.Group (created when missing) and feeding
// graph (which it watches for failures, so call it before the graph
// runs). Dead letters are appended to opts.Source.DeadLetter. Unless
// Reconnect.FailFast, the server may be unreachable at start: the source
// connects when it can, with Reconnect's backoff, and again whenever a
// session ends.
func NewSource(ctx context.Context, graph bus.Graph, opts SourceOptions) (*Source, error) {
	opts.Options.EnsureDefaults()
	so := opts.Source
	so.Topic = opts.Stream
	if so.Logger == nil {
		so.Logger = opts.Logger
	}
	so.EnsureDefaults()
	switch {
	case opts.Stream == "":
		return nil, fmt.Errorf("source %s: %w: no stream", so.Name, ErrConfig)
	case opts.Group == "":
		return nil, fmt.Errorf("source %s: %w: no consumer group", so.Name, ErrConfig)
	case opts.Consumer == "":
		return nil, fmt.Errorf("source %s: %w: no consumer name", so.Name, ErrConfig)
	case so.FailOn != bus.FailOnUnlinkedErr && so.FailOn != bus.FailOnErr:
		return nil, fmt.Errorf("source %s: %w: fail_on %q: want %q or %q", so.Name, ErrConfig, so.FailOn, bus.FailOnUnlinkedErr, bus.FailOnErr)
	case len(so.FailSinks) > 0 && graph == nil:
		return nil, fmt.Errorf("source %s: %w: no graph to find fail sinks in", so.Name, ErrConfig)
	}
	ro, err := opts.clientOptions(so.Name)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", so.Name, err)
	}
	opts.Reconnect.EnsureDefaults()
	client := redis.NewClient(ro)
	s := &Source{
		sub:         newSubscriber(client, opts.Options, so.InFlight()),
		dead:        &publisher{client: client},
		graph:       graph,
		so:          so,
		r:           opts.Reconnect,
		health:      opts.Health,
		batches:     make(chan []delivery),
		connectDone: make(chan struct{}),
		wake:        make(chan struct{}, 1),
		settlerDone: make(chan struct{}),
	}
	// The connection outlives Build's context: it ends at Close.
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	var first <-chan []delivery
	var release func()
	if s.r.FailFast {
		first, release, err = s.sub.dial(life)
		if err != nil {
			cancel()
			if s.health != nil {
				s.health.Set(so.Name, err)
			}
			_ = s.sub.close()
			return nil, fmt.Errorf("source %s: %w (fail_fast): %w", so.Name, bus.ErrDisconnected, err)
		}
	}
	go s.settler()
	go s.connect(life, first, release)
	return s, nil
}

// connect hands the deliveries of each session to batches, dialing again
// (with the Reconnect backoff, reporting the node not ready meanwhile)
// whenever a session ends by itself; with FailFast a lost session ends
// it, setting err. It closes batches when it returns.
func (s *Source) connect(ctx context.Context, ds <-chan []delivery, release func()) {
	defer close(s.connectDone)
	defer close(s.batches)
	for {
		if ds == nil {
			err := s.r.Retry(ctx, s.so.Name, s.health, s.so.Logger, func(ctx context.Context) error {
				var err error
				ds, release, err = s.sub.dial(ctx)
				return err
			})
			if err != nil {
				if ctx.Err() == nil {
					s.setErr(err)
				}
				return
			}
		}
		if s.health != nil {
			s.health.Set(s.so.Name, nil)
		}
		lost := s.forward(ctx, ds)
		release()
		ds, release = nil, nil
		if !lost {
			return
		}
		err := fmt.Errorf("%w: connection lost", bus.ErrDisconnected)
		if s.health != nil {
			s.health.Set(s.so.Name, err)
		}
		if s.r.FailFast {
			s.setErr(fmt.Errorf("%w (fail_fast)", err))
			return
		}
		s.so.Logger.Warn("connection to the broker lost, reconnecting", "node", s.so.Name)
	}
}

// forward hands ds to batches until ds closes (lost: true) or ctx ends.
func (s *Source) forward(ctx context.Context, ds <-chan []delivery) (lost bool) {
	for {
		select {
		case b, ok := <-ds:
			if !ok {
				return ctx.Err() == nil
			}
			select {
			case s.batches <- b:
			case <-ctx.Done():
				s.sub.nackAll(b)
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

func (s *Source) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// Run implements pipeline.Source: it emits the deliveries of each read
// until ctx ends (or, with FailFast, the connection is lost), then waits
// until every entry it emitted is settled, the graph draining them.
func (s *Source) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	rule, err := bus.NewFailRule(s.graph, s.so)
	if err != nil {
		return err
	}
	s.rule = rule
	dec := &decoder{stream: s.sub.o.Stream, consumer: s.sub.o.Consumer}
	for open := true; open && ctx.Err() == nil; {
		var ds []delivery
		select {
		case ds, open = <-s.batches:
		case <-ctx.Done():
		}
		for len(ds) > 0 {
			n := min(len(ds), s.so.Window)
			if err := s.process(ctx, emit, dec, ds[:n:n]); err != nil {
				// The graph is failing: what it holds completes as
				// failed while it shuts down; what was not emitted stays
				// pending.
				s.sub.nackAll(ds[n:])
				return err
			}
			ds = ds[n:]
		}
	}
	// Every entry emitted completes, the graph draining what is in
	// flight; return once all are settled, so that Close does not end the
	// subscription under their acks.
	s.unsettled.Wait()
	s.mu.Lock()
	err = s.err
	s.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("source %s: %w", s.so.Name, err)
	}
	return nil
}

// process emits ds, tracked together, and flushes them; each entry is
// settled when it completes (see completed). An entry delivered more than
// MaxDeliveries times is set aside instead.
func (s *Source) process(ctx context.Context, emit pipeline.SourceEmitter, dec *decoder, ds []delivery) error {
	tr := pipeline.NewTracker(len(ds), func(i int, o pipeline.Outcome) { s.completed(&ds[i], o) }, nil)
	// A Failed outcome is nacked (completed): processors may abandon an
	// event for redelivery (pipeline.Abandon).
	tr.SetRedelivers()
	for i := range ds {
		d := &ds[i]
		if d.n > s.so.MaxDeliveries {
			// Delivered more than MaxDeliveries times although each
			// failure is dead-lettered at MaxDeliveries: the earlier
			// deliveries were never settled, so the process handling them
			// died. Set the entry aside instead of running it again.
			s.setAside(dec, d)
			continue
		}
		s.unsettled.Add(1)
		ev, err := dec.event(d.x, d.n)
		if err != nil {
			d.permanent = true
			emit.Emit(pipeline.PortErr, tr.Track(i, ev))
			continue
		}
		emit.Emit(pipeline.PortOut, tr.Track(i, ev))
	}
	// The slice is handed over even when a shutdown signal arrives
	// meanwhile: the graph drains what was emitted, and the acks follow.
	return emit.Flush(context.WithoutCancel(ctx))
}

// completed settles d, whose events are all done: done when it did not
// fail, nacked when the graph discarded its events, and otherwise handed
// to the settler (retry or dead letter).
func (s *Source) completed(d *delivery, o pipeline.Outcome) {
	defer s.unsettled.Done()
	if o.Failed() {
		s.sub.nack(d.x.ID)
		return
	}
	failure := s.rule.Failure(o)
	if failure == "" {
		s.sub.done(d.x.ID)
		return
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		s.settle(failedEntry{d: *d, failure: failure})
		return
	}
	s.queue = append(s.queue, failedEntry{d: *d, failure: failure})
	select {
	case s.wake <- struct{}{}:
	default:
	}
	s.mu.Unlock()
}

// settler settles failed entries until Close stops it.
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

// settle nacks a failed entry for a retry, or dead-letters it once it has
// been delivered MaxDeliveries times (or at once when no retry mends it)
// and then acknowledges it; if the dead letter cannot be appended, the
// entry is nacked.
func (s *Source) settle(f failedEntry) {
	d := f.d
	id := d.x.ID
	if !d.permanent && d.n < s.so.MaxDeliveries {
		s.so.Logger.Warn("message failed, redelivering", "source", s.so.Name, "message", id,
			"delivery", d.n, "max_deliveries", s.so.MaxDeliveries, "error", f.failure)
		s.sub.nack(id)
		return
	}
	reason := fmt.Sprintf("%s (delivery %d of %d)", f.failure, d.n, s.so.MaxDeliveries)
	dec := &decoder{stream: s.sub.o.Stream, consumer: s.sub.o.Consumer}
	if err := s.deadLetter(dec, &d, reason); err != nil {
		s.so.Logger.Error("cannot publish dead letter, redelivering", "source", s.so.Name, "message", id,
			"dead_letter", s.so.DeadLetter, "error", err)
		s.sub.nack(id)
		return
	}
	s.so.Logger.Warn("message dead-lettered", "source", s.so.Name, "message", id,
		"dead_letter", s.so.DeadLetter, "error", reason)
	s.sub.done(id)
}

// setAside dead-letters d, delivered more than MaxDeliveries times,
// without processing it, and acknowledges it; if the dead letter cannot
// be appended, d is nacked and will be set aside on its next delivery.
func (s *Source) setAside(dec *decoder, d *delivery) {
	reason := fmt.Sprintf("delivered %d times, more than max_deliveries %d, without being settled: "+
		"the process handling it stopped each time (a crash or kill?); not processed again", d.n, s.so.MaxDeliveries)
	if err := s.deadLetter(dec, d, reason); err != nil {
		s.so.Logger.Error("cannot publish dead letter, redelivering", "source", s.so.Name, "message", d.x.ID,
			"dead_letter", s.so.DeadLetter, "error", err)
		s.sub.nack(d.x.ID)
		return
	}
	s.so.Logger.Warn("message dead-lettered before processing", "source", s.so.Name, "message", d.x.ID,
		"dead_letter", s.so.DeadLetter, "error", reason)
	s.sub.done(d.x.ID)
}

// deadLetter appends the dead letter of d (bus.DeadLetterMessage of its
// message: its payload and metadata, plus ErrorKey) to DeadLetter.
func (s *Source) deadLetter(dec *decoder, d *delivery, reason string) error {
	return s.dead.Publish(s.so.DeadLetter, bus.DeadLetterMessage(dec.message(d.x, d.n), reason))
}

// Close ends the connection: failed entries still queued are settled,
// entries read and not emitted are nacked (they stay pending), then the
// subscriber sends the last acks and closes the client. Run settled
// every entry it emitted before returning (unless the graph failed).
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
	s.mu.Lock()
	q := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, f := range q {
		s.settle(f)
	}
	s.cancel()
	for ds := range s.batches {
		s.sub.nackAll(ds)
	}
	<-s.connectDone
	if s.health != nil {
		s.health.Set(s.so.Name, nil)
	}
	if err := s.sub.close(); err != nil {
		return fmt.Errorf("source %s: close: %w", s.so.Name, err)
	}
	return nil
}
