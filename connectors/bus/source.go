package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// Defaults for SourceOptions.
const (
	// DefaultWindow is the most messages emitted together, and the most
	// a broker lets the source hold unacknowledged.
	DefaultWindow = 256
	// DefaultWindowsInFlight is how many windows a source lets the
	// broker hand it before the first of them is settled.
	DefaultWindowsInFlight = 4
	// DefaultLinger is how long a window waits for one more message before
	// it is processed with what it has.
	DefaultLinger = 5 * time.Millisecond
	// DefaultMaxDeliveries is how many deliveries a failing message gets
	// before it goes to the dead-letter topic.
	DefaultMaxDeliveries = 5
	// DeadLetterSuffix is appended to the topic to name the default
	// dead-letter topic.
	DeadLetterSuffix = ".dead"
	// maxWindowWait bounds how long one window stays open while messages
	// keep trickling in, so a slow stream still sees low latency.
	maxWindowWait = 100 * time.Millisecond
	// closeDrainWait bounds how long Close waits for messages still being
	// handed over by the subscriber, to nack them for prompt redelivery.
	closeDrainWait = 20 * time.Millisecond
)

// ErrSubscribe reports a subscription that could not be made.
var ErrSubscribe = errors.New("cannot subscribe")

// ErrUnknownSink reports a SourceOptions.FailSinks entry that is not a
// sink of the graph.
var ErrUnknownSink = errors.New("unknown sink")

// Graph is what a Source needs of the graph it feeds: the ids of the sinks
// named by SourceOptions.FailSinks. *pipeline.Graph implements it.
type Graph interface {
	SinkID(name string) (pipeline.SinkID, bool)
}

// FailRule is what fails a message under SourceOptions FailOn and
// FailSinks, with the sinks resolved in a graph: the rule every bus
// source applies to its messages' outcomes.
type FailRule struct {
	failOn string
	names  []string
	sinks  []pipeline.SinkID
}

// NewFailRule resolves opts.FailSinks in graph; an unknown sink is
// ErrUnknownSink.
func NewFailRule(graph Graph, opts SourceOptions) (FailRule, error) {
	r := FailRule{failOn: opts.FailOn, names: opts.FailSinks}
	for _, name := range opts.FailSinks {
		id, ok := graph.SinkID(name)
		if !ok {
			return FailRule{}, fmt.Errorf("source %s: fail sink %q: %w", opts.Name, name, ErrUnknownSink)
		}
		r.sinks = append(r.sinks, id)
	}
	return r, nil
}

// Failure says why o fails its message, or "" when it does not.
func (r FailRule) Failure(o pipeline.Outcome) string {
	if o.UnlinkedErr() || (o.Errored() && r.failOn == FailOnErr) {
		node, meta := o.ErrEvent()
		reason := gjson.GetBytes(meta, "error").String()
		if reason == "" {
			reason = "event on err port"
		}
		return "node " + node + ": " + reason
	}
	for i, id := range r.sinks {
		if o.Reached(id) {
			return "reached sink " + r.names[i]
		}
	}
	return ""
}

// What counts as a failed message (SourceOptions.FailOn).
const (
	// FailOnUnlinkedErr fails a message when an event derived from it
	// reaches an "err" port with no link: a failure the flow did not
	// handle. A linked "err" port handles the failure.
	FailOnUnlinkedErr = "unlinked_err"
	// FailOnErr fails a message when an event derived from it reaches any
	// "err" port, linked or not.
	FailOnErr = "err"
)

// SourceOptions configure a Source.
type SourceOptions struct {
	// Name is the source node's name, used in logs and errors. Default
	// "bus".
	Name string
	// Topic is the topic (NATS subject) subscribed to. Required.
	Topic string
	// Window is the most messages emitted together; each is acknowledged
	// on its own as soon as it is done. Default DefaultWindow.
	Window int
	// WindowsInFlight is how many windows' worth of messages the broker
	// may hand the source unacknowledged (see InFlight), for a subscriber
	// that has such a limit (the AMQP prefetch, the entries a Redis
	// Streams consumer reads ahead): while one window's puts are synced
	// and its acks sent, the next windows are read and processed. More
	// in flight means more throughput when the flow waits on the broker
	// or the disk, and more messages redelivered after a crash. The
	// source itself emits each window as soon as it is collected.
	// Default DefaultWindowsInFlight.
	WindowsInFlight int
	// Linger is how long a window waits for one more message before it is
	// processed with what it has. Default DefaultLinger.
	Linger time.Duration
	// MaxDeliveries is the number of deliveries after which a message that
	// still fails goes to DeadLetter instead of being redelivered.
	// Default DefaultMaxDeliveries.
	MaxDeliveries int
	// DeadLetter is the topic failed messages are published to. Default
	// Topic + DeadLetterSuffix.
	DeadLetter string
	// FailOn says which "err" events fail the message they derive from:
	// FailOnUnlinkedErr or FailOnErr. Default FailOnUnlinkedErr.
	FailOn string
	// FailSinks names sinks of the graph (a dead-letter file, say) whose
	// receiving an event derived from a message fails the message too.
	FailSinks []string
	// Reject, when set, dead-letters through the broker instead of
	// publishing to DeadLetter: a message to dead-letter is handed to
	// Reject (with the reason) in place of the publish and the ack, and
	// Reject settles it (RabbitMQ: a nack without requeue, which sends it
	// to the queue's dead-letter exchange). If Reject fails, the message
	// is nacked for redelivery.
	Reject func(m *message.Message, reason string) error
	// OnClose, when set, is called by Close after the subscription has
	// ended, to release what the source owns (a broker connection).
	OnClose func() error
	// Logger receives warnings about nacked and dead-lettered messages.
	// Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields with their defaults.
func (o *SourceOptions) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "bus"
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.WindowsInFlight <= 0 {
		o.WindowsInFlight = DefaultWindowsInFlight
	}
	if o.Linger <= 0 {
		o.Linger = DefaultLinger
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = DefaultMaxDeliveries
	}
	if o.DeadLetter == "" {
		o.DeadLetter = o.Topic + DeadLetterSuffix
	}
	if o.FailOn == "" {
		o.FailOn = FailOnUnlinkedErr
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// InFlight is the most messages the broker should hand the source
// unacknowledged: Window × WindowsInFlight (after EnsureDefaults).
func (o *SourceOptions) InFlight() int { return o.Window * o.WindowsInFlight }

// Source is a pipeline.Source that emits the messages of a topic as events
// on "out" (and payloads that are not JSON on "err") and acknowledges each
// message as soon as everything derived from it is done (pipeline.Tracker),
// whatever other messages or sources are doing.
//
// Run emits messages in windows of up to Window (fewer when none arrives
// for Linger), without waiting for earlier windows to finish. When a
// message is done it is acked, unless it failed (see SourceOptions.FailOn
// and FailSinks): a failed message is nacked for redelivery, or, once it has
// been delivered MaxDeliveries times (or if its payload is not JSON, which
// no retry fixes), published to DeadLetter with metadata "error" and acked.
// A message whose events the graph discarded because a node failed is
// nacked.
//
// A message whose broker delivery count (JetStream's NumDelivered) is
// already over MaxDeliveries when it arrives is dead-lettered and acked
// before it reaches the graph: its earlier deliveries were never settled,
// which happens when the process dies while handling it, so a message that
// kills the process is set aside after MaxDeliveries restarts instead of
// crash-looping forever. The in-process bus gives no count (and loses its
// messages with the process anyway).
//
// When Run's context is cancelled, the source stops taking messages, waits
// until every message it emitted is settled (the graph drains them) and
// returns.
type Source struct {
	sub    message.Subscriber
	dead   message.Publisher
	graph  Graph
	opts   SourceOptions
	msgs   <-chan *message.Message
	cancel context.CancelFunc
	rule   FailRule // resolved by Run

	// unsettled counts the messages emitted into the graph and not yet
	// settled (acked or nacked).
	unsettled sync.WaitGroup
	// Failed messages are settled (nacked or dead-lettered, which
	// publishes) by the settler goroutine, not by the graph goroutine
	// that completed them.
	wake        chan struct{}
	settlerDone chan struct{}

	mu      sync.Mutex
	queue   []failed       // failed messages waiting for the settler
	stopped bool           // the settler has stopped: settle inline
	tries   map[string]int // deliveries seen, by UUID, when the bus has no count
	closed  bool
	// maxTries bounds len(tries); 0 means maxTracked. Tests lower it.
	maxTries int
}

// maxTracked bounds the delivery counts a Source keeps for a bus that has
// no count of its own. Messages whose id changes on every delivery would
// otherwise grow them by one per failure, without end; beyond the bound an
// arbitrary count is forgotten, so that message may get more than
// MaxDeliveries deliveries before it is dead-lettered.
const maxTracked = 1 << 16

// failed is a message that failed, waiting to be settled.
type failed struct {
	m         *message.Message
	failure   string
	permanent bool
}

// NewSource subscribes to opts.Topic and returns a source feeding graph
// (which it watches for failures, so call it before the graph runs).
// Dead letters are published with dead. Messages start arriving at once and
// wait, unacknowledged, until Run takes them.
func NewSource(ctx context.Context, sub message.Subscriber, dead message.Publisher, graph Graph, opts SourceOptions) (*Source, error) {
	opts.EnsureDefaults()
	if opts.Topic == "" {
		return nil, fmt.Errorf("source %s: %w: no topic", opts.Name, ErrSubscribe)
	}
	if opts.FailOn != FailOnUnlinkedErr && opts.FailOn != FailOnErr {
		return nil, fmt.Errorf("source %s: %w: fail_on %q: want %q or %q", opts.Name, ErrSubscribe, opts.FailOn, FailOnUnlinkedErr, FailOnErr)
	}
	if len(opts.FailSinks) > 0 && graph == nil {
		return nil, fmt.Errorf("source %s: %w: no graph to find fail sinks in", opts.Name, ErrSubscribe)
	}
	s := &Source{
		sub: sub, dead: dead, graph: graph, opts: opts,
		tries:       map[string]int{},
		wake:        make(chan struct{}, 1),
		settlerDone: make(chan struct{}),
	}
	go s.settler()
	// The subscription outlives Build's context: it ends at Close.
	subCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	msgs, err := sub.Subscribe(subCtx, opts.Topic)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("source %s: %w to %q: %w", opts.Name, ErrSubscribe, opts.Topic, err)
	}
	s.msgs, s.cancel = msgs, cancel
	return s, nil
}

// Ports are the output ports of a Source.
func Ports() []string { return []string{pipeline.PortOut, pipeline.PortErr} }

// Run implements pipeline.Source.
func (s *Source) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	rule, err := NewFailRule(s.graph, s.opts)
	if err != nil {
		return err
	}
	s.rule = rule
	for {
		window, open := s.collect(ctx)
		if len(window) > 0 {
			if err := s.process(ctx, emit, window); err != nil {
				// The graph is failing: what it holds completes as
				// failed (and is nacked) while it shuts down.
				return err
			}
		}
		if !open || ctx.Err() != nil {
			break
		}
	}
	// Every message emitted completes, the graph draining what is in
	// flight; return once all are settled, so that Close does not end the
	// subscription under their acks.
	s.unsettled.Wait()
	// A subscription that ended by itself (a ReconnectingSubscriber with
	// FailFast losing its broker) fails the flow.
	if e, ok := s.sub.(interface{ Err() error }); ok && ctx.Err() == nil {
		if err := e.Err(); err != nil {
			return fmt.Errorf("source %s: %w", s.opts.Name, err)
		}
	}
	return nil
}

// collect waits for a first message, then takes more until the window is
// full, none arrives for Linger, or the window has been open for
// maxWindowWait. open is false once the subscription has ended.
func (s *Source) collect(ctx context.Context) (window []*message.Message, open bool) {
	select {
	case m, ok := <-s.msgs:
		if !ok {
			return nil, false
		}
		window = append(window, m)
	case <-ctx.Done():
		return nil, true
	}
	deadline := time.NewTimer(maxWindowWait)
	defer deadline.Stop()
	idle := time.NewTimer(s.opts.Linger)
	defer idle.Stop()
	for len(window) < s.opts.Window {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				return window, false
			}
			window = append(window, m)
			idle.Reset(s.opts.Linger)
		case <-idle.C:
			return window, true
		case <-deadline.C:
			return window, true
		case <-ctx.Done():
			return window, true
		}
	}
	return window, true
}

// process emits a window of messages, each tracked, and flushes it; each
// message is settled when it completes (see completed).
func (s *Source) process(ctx context.Context, emit pipeline.SourceEmitter, window []*message.Message) error {
	permanent := make([]bool, len(window))
	tr := pipeline.NewTracker(len(window), func(i int, o pipeline.Outcome) {
		s.completed(window[i], permanent[i], o)
	}, nil)
	// A Failed outcome is nacked (completed): processors may abandon an
	// event for redelivery (pipeline.Abandon).
	tr.SetRedelivers()
	for i, m := range window {
		if n, ok := brokerDeliveries(m); ok && n > s.opts.MaxDeliveries {
			// Delivered more than MaxDeliveries times although each
			// failure is dead-lettered at MaxDeliveries: the earlier
			// deliveries were never settled, so the process handling them
			// died. Set the message aside instead of running it again.
			s.setAside(m, n)
			continue
		}
		s.unsettled.Add(1)
		ev, err := ToEvent(m)
		if err != nil {
			permanent[i] = true
			emit.Emit(pipeline.PortErr, tr.Track(i, ev))
			continue
		}
		emit.Emit(pipeline.PortOut, tr.Track(i, ev))
	}
	// The window is handed over even when a shutdown signal arrives
	// meanwhile: the graph drains what was emitted, and the acks follow.
	return emit.Flush(context.WithoutCancel(ctx))
}

// completed settles m, whose events are all done: ack when it did not fail,
// nack when the graph discarded its events, and otherwise hand it to the
// settler (retry or dead letter).
func (s *Source) completed(m *message.Message, permanent bool, o pipeline.Outcome) {
	defer s.unsettled.Done()
	if o.Failed() {
		m.Nack()
		return
	}
	failure := s.failure(o)
	if failure == "" {
		s.forget(m)
		m.Ack()
		return
	}
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		s.settle(m, failure, permanent)
		return
	}
	s.queue = append(s.queue, failed{m: m, failure: failure, permanent: permanent})
	select {
	case s.wake <- struct{}{}:
	default:
	}
	s.mu.Unlock()
}

// failure says why o fails its message under SourceOptions.FailOn and
// FailSinks, or "" when it does not.
func (s *Source) failure(o pipeline.Outcome) string { return s.rule.Failure(o) }

// settler settles failed messages until Close stops it, then settles
// what is left.
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
				s.settle(f.m, f.failure, f.permanent)
			}
		}
	}
}

// setAside dead-letters m, delivered n times, without processing it, and
// acks it; if the dead letter cannot be published, m is nacked and will be
// set aside on its next delivery.
func (s *Source) setAside(m *message.Message, n int) {
	reason := fmt.Sprintf("delivered %d times, more than max_deliveries %d, without being settled: "+
		"the process handling it stopped each time (a crash or kill?); not processed again", n, s.opts.MaxDeliveries)
	if err := s.deadLetter(m, reason); err != nil {
		s.opts.Logger.Error("cannot publish dead letter, redelivering", "source", s.opts.Name, "message", m.UUID,
			"dead_letter", s.opts.DeadLetter, "error", err)
		m.Nack()
		return
	}
	s.opts.Logger.Warn("message dead-lettered before processing", "source", s.opts.Name, "message", m.UUID,
		"dead_letter", s.opts.DeadLetter, "error", reason)
	s.forget(m)
	if s.opts.Reject == nil {
		m.Ack()
	}
}

// brokerDeliveries returns the broker's count of m's deliveries, this one
// included, when the broker gives one (JetStream does; the in-process bus
// does not).
func brokerDeliveries(m *message.Message) (int, bool) {
	if v := m.Metadata.Get(DeliveredKey); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n, true
		}
	}
	return 0, false
}

// settle acks, nacks or dead-letters one message.
func (s *Source) settle(m *message.Message, failure string, permanent bool) {
	if failure == "" {
		s.forget(m)
		m.Ack()
		return
	}
	n := s.deliveries(m)
	if !permanent && n < s.opts.MaxDeliveries {
		s.opts.Logger.Warn("message failed, redelivering", "source", s.opts.Name, "message", m.UUID,
			"delivery", n, "max_deliveries", s.opts.MaxDeliveries, "error", failure)
		m.Nack()
		return
	}
	reason := fmt.Sprintf("%s (delivery %d of %d)", failure, n, s.opts.MaxDeliveries)
	if err := s.deadLetter(m, reason); err != nil {
		s.opts.Logger.Error("cannot publish dead letter, redelivering", "source", s.opts.Name, "message", m.UUID,
			"dead_letter", s.opts.DeadLetter, "error", err)
		m.Nack()
		return
	}
	s.opts.Logger.Warn("message dead-lettered", "source", s.opts.Name, "message", m.UUID,
		"dead_letter", s.opts.DeadLetter, "error", reason)
	s.forget(m)
	if s.opts.Reject == nil {
		m.Ack()
	}
}

// deliveries returns how many times m has been delivered, this time
// included: the broker's count when it gives one, else the source's own.
func (s *Source) deliveries(m *message.Message) int {
	if n, ok := brokerDeliveries(m); ok {
		return n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	limit := s.maxTries
	if limit <= 0 {
		limit = maxTracked
	}
	if _, ok := s.tries[m.UUID]; !ok && len(s.tries) >= limit {
		for k := range s.tries {
			delete(s.tries, k)
			break
		}
	}
	s.tries[m.UUID]++
	return s.tries[m.UUID]
}

func (s *Source) forget(m *message.Message) {
	s.mu.Lock()
	delete(s.tries, m.UUID)
	s.mu.Unlock()
}

// deadLetter publishes m's payload and metadata, plus ErrorKey, to the
// dead-letter topic, or hands m to SourceOptions.Reject.
func (s *Source) deadLetter(m *message.Message, reason string) error {
	if s.opts.Reject != nil {
		return s.opts.Reject(m, reason)
	}
	if s.dead == nil {
		return errors.New("no dead-letter publisher")
	}
	return s.dead.Publish(s.opts.DeadLetter, DeadLetterMessage(m, reason))
}

// DeadLetterMessage returns the dead letter of m: a new message with m's
// payload and metadata (without the delivery count and decode error) and
// ErrorKey set to reason, a plain string whatever it was before.
func DeadLetterMessage(m *message.Message, reason string) *message.Message {
	dl := message.NewMessage(watermill.NewUUID(), m.Payload)
	for k, v := range m.Metadata {
		if k != DeliveredKey && k != DecodeErrorKey {
			dl.Metadata.Set(k, v)
		}
	}
	dl.Metadata.Set(ErrorKey, reason)
	if keys := dl.Metadata.Get(JSONKeysKey); keys != "" {
		var kept []string
		for _, k := range strings.Split(keys, ",") {
			if k != ErrorKey {
				kept = append(kept, k)
			}
		}
		dl.Metadata.Set(JSONKeysKey, strings.Join(kept, ","))
	}
	return dl
}

// Close ends the subscription. Failed messages still queued are settled,
// messages the subscriber was still handing over are nacked so that they
// are redelivered promptly, then OnClose releases the connection. Run
// settled every message it emitted before returning (unless the graph
// failed).
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
		s.settle(f.m, f.failure, f.permanent)
	}
	t := time.NewTimer(closeDrainWait)
	defer t.Stop()
drain:
	for range s.opts.Window {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				break drain
			}
			m.Nack()
		case <-t.C:
			break drain
		}
	}
	s.cancel()
	if s.opts.OnClose != nil {
		if err := s.opts.OnClose(); err != nil {
			return fmt.Errorf("source %s: close: %w", s.opts.Name, err)
		}
	}
	return nil
}
