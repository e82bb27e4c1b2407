package bus

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
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
	// DefaultWindow is the most messages acknowledged together.
	DefaultWindow = 256
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

// Graph is what a Source needs of the graph it feeds; *pipeline.Graph
// implements it.
type Graph interface {
	// WaitIdle blocks until every event fed so far has been processed.
	WaitIdle(ctx context.Context) error
	// WatchUnlinked observes events that reach unlinked ports.
	WatchUnlinked(fn func(node, port string, ev pipeline.Event)) error
	// Err reports a node failure that made the graph discard events.
	Err() error
}

// SourceOptions configure a Source.
type SourceOptions struct {
	// Name is the source node's name, used in logs and errors and to give
	// this source a Seq range of its own. Default "bus".
	Name string
	// Topic is the topic (NATS subject) subscribed to. Required.
	Topic string
	// Window is the most messages emitted, then acknowledged, together.
	// Default DefaultWindow.
	Window int
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
	if o.Linger <= 0 {
		o.Linger = DefaultLinger
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = DefaultMaxDeliveries
	}
	if o.DeadLetter == "" {
		o.DeadLetter = o.Topic + DeadLetterSuffix
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Source is a pipeline.Source that emits the messages of a topic as events
// on "out" (and payloads that are not JSON on "err") and acknowledges them
// only once the graph has handled everything derived from them.
//
// Run works in windows: it takes up to Window messages (fewer when none
// arrives for Linger), gives each a Seq of its own, emits and flushes them,
// and waits until the graph is idle. Then each message is acked, unless an
// event derived from it reached an unlinked "err" port (anywhere in the
// graph): such a message is nacked for redelivery, or, once it has been
// delivered MaxDeliveries times (or if its payload is not JSON, which no
// retry fixes), published to DeadLetter with metadata "error" and acked.
// If a node fails, the graph discards events, so the window is nacked.
//
// A message whose broker delivery count (JetStream's NumDelivered) is
// already over MaxDeliveries when it arrives is dead-lettered and acked
// before it reaches the graph: its earlier deliveries were never settled,
// which happens when the process dies while handling it, so a message that
// kills the process is set aside after MaxDeliveries restarts instead of
// crash-looping forever. The in-process bus gives no count (and loses its
// messages with the process anyway).
//
// When Run's context is cancelled, the source stops taking messages,
// finishes the window in flight (acking it) and returns.
type Source struct {
	sub    message.Subscriber
	dead   message.Publisher
	graph  Graph
	opts   SourceOptions
	msgs   <-chan *message.Message
	cancel context.CancelFunc
	base   uint64 // high bits of this source's Seqs

	next uint64 // low bits of the next Seq; only Run touches it

	mu      sync.Mutex
	first   uint64         // Seq of the window's first message
	failure []string       // per window message: why it failed ("" = ok)
	tries   map[string]int // deliveries seen, by UUID, when the bus has no count
	closed  bool
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
	if graph == nil {
		return nil, fmt.Errorf("source %s: %w: no graph to wait for", opts.Name, ErrSubscribe)
	}
	h := fnv.New32a()
	h.Write([]byte(opts.Name))
	s := &Source{
		sub: sub, dead: dead, graph: graph, opts: opts,
		// The top bit keeps these Seqs apart from line-numbered sources,
		// the name hash apart from other bus sources of the flow.
		base:  1<<63 | uint64(h.Sum32()&0x7fffffff)<<32,
		tries: map[string]int{},
	}
	if err := graph.WatchUnlinked(s.watch); err != nil {
		return nil, fmt.Errorf("source %s: %w", opts.Name, err)
	}
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

// watch records which window messages an unlinked "err" event derives from.
func (s *Source) watch(node, port string, ev pipeline.Event) {
	if port != pipeline.PortErr {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := ev.Seq - s.first
	if ev.Seq < s.first || i >= uint64(len(s.failure)) || s.failure[i] != "" {
		return
	}
	reason := gjson.GetBytes(ev.Meta, "error").String()
	if reason == "" {
		reason = "event on err port"
	}
	s.failure[i] = "node " + node + ": " + reason
}

// Run implements pipeline.Source.
func (s *Source) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	for {
		window, open := s.collect(ctx)
		if len(window) > 0 {
			if err := s.process(ctx, emit, window); err != nil {
				return err
			}
		}
		if !open || ctx.Err() != nil {
			return nil
		}
	}
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

// process emits a window, waits for the graph to handle it and settles
// every message.
func (s *Source) process(ctx context.Context, emit pipeline.SourceEmitter, window []*message.Message) error {
	if s.next+uint64(len(window)) > 1<<32 {
		s.next = 0 // wrap before the low bits would spill into the name hash
	}
	first := s.base | s.next
	s.mu.Lock()
	s.first = first
	s.failure = make([]string, len(window))
	s.mu.Unlock()
	permanent := make([]bool, len(window))
	overdue := make([]bool, len(window))
	for i, m := range window {
		if n, ok := brokerDeliveries(m); ok && n > s.opts.MaxDeliveries {
			// Delivered more than MaxDeliveries times although each
			// failure is dead-lettered at MaxDeliveries: the earlier
			// deliveries were never settled, so the process handling them
			// died. Set the message aside instead of running it again.
			overdue[i] = true
			s.setAside(m, n)
			continue
		}
		ev, err := ToEvent(m, first+uint64(i))
		if err != nil {
			permanent[i] = true
			emit.Emit(pipeline.PortErr, ev)
			continue
		}
		emit.Emit(pipeline.PortOut, ev)
	}
	s.next += uint64(len(window))
	// The window is finished even when a shutdown signal arrives meanwhile:
	// the graph drains what was emitted, and the acks must follow.
	hold := context.WithoutCancel(ctx)
	err := emit.Flush(hold)
	if err == nil {
		err = s.graph.WaitIdle(hold)
	}
	if err == nil {
		err = s.graph.Err()
	}
	s.mu.Lock()
	failure := s.failure
	s.failure = nil
	s.mu.Unlock()
	if err != nil {
		for i, m := range window {
			if !overdue[i] {
				m.Nack()
			}
		}
		return err
	}
	for i, m := range window {
		if !overdue[i] {
			s.settle(m, failure[i], permanent[i])
		}
	}
	return nil
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
	m.Ack()
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
	m.Ack()
}

// deliveries returns how many times m has been delivered, this time
// included: the broker's count when it gives one, else the source's own.
func (s *Source) deliveries(m *message.Message) int {
	if n, ok := brokerDeliveries(m); ok {
		return n
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tries[m.UUID]++
	return s.tries[m.UUID]
}

func (s *Source) forget(m *message.Message) {
	s.mu.Lock()
	delete(s.tries, m.UUID)
	s.mu.Unlock()
}

// deadLetter publishes m's payload and metadata, plus ErrorKey, to the
// dead-letter topic.
func (s *Source) deadLetter(m *message.Message, reason string) error {
	if s.dead == nil {
		return errors.New("no dead-letter publisher")
	}
	dl := message.NewMessage(watermill.NewUUID(), m.Payload)
	for k, v := range m.Metadata {
		if k != DeliveredKey {
			dl.Metadata.Set(k, v)
		}
	}
	dl.Metadata.Set(ErrorKey, reason)
	if keys := dl.Metadata.Get(JSONKeysKey); keys != "" {
		// "error" is now a plain string, whatever it was before.
		var kept []string
		for _, k := range strings.Split(keys, ",") {
			if k != ErrorKey {
				kept = append(kept, k)
			}
		}
		dl.Metadata.Set(JSONKeysKey, strings.Join(kept, ","))
	}
	return s.dead.Publish(s.opts.DeadLetter, dl)
}

// Close ends the subscription. Messages the subscriber was still handing
// over are nacked so that they are redelivered promptly, then OnClose
// releases the connection. The final window was acked by Run before Close
// is called.
func (s *Source) Close(context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
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
