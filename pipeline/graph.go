package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
)

// Errors returned while building a graph.
var (
	ErrDuplicateNode = errors.New("duplicate node")
	ErrUnknownNode   = errors.New("unknown node")
	ErrUnknownPort   = errors.New("unknown port")
	ErrCycle         = errors.New("links form a cycle")
	ErrGraphStarted  = errors.New("graph already started")
)

// DefaultQueueDepth is the number of slices a node's input channel holds
// before senders block.
const DefaultQueueDepth = 16

// DefaultMaxCoalesce is the most events merged into one Process call from
// slices waiting in a node's queue.
const DefaultMaxCoalesce = 4096

// DefaultStageDepth is the number of slices a StagedProcessor may have
// started and not yet finished.
const DefaultStageDepth = 4

// Options tune a Graph. The zero value is ready to use.
type Options struct {
	// QueueDepth bounds each node's input channel, in slices.
	// Default DefaultQueueDepth.
	QueueDepth int
	// MaxCoalesce bounds how many events of slices already queued for a
	// node are merged into one Process call. Default DefaultMaxCoalesce.
	MaxCoalesce int
	// StageDepth bounds the slices a StagedProcessor node has started and
	// not yet finished; 1 runs the stages of one slice after the other.
	// Default DefaultStageDepth.
	StageDepth int
	// Unlinked receives events emitted on ports that have no link. The
	// default logs events of the "err" port at error level (so failures are
	// never silent) and discards the others.
	Unlinked func(node, port string, ev Event)
	// Logger is used by the default Unlinked hook. Default slog.Default().
	Logger *slog.Logger
}

func (o *Options) ensureDefaults() {
	if o.QueueDepth <= 0 {
		o.QueueDepth = DefaultQueueDepth
	}
	if o.MaxCoalesce <= 0 {
		o.MaxCoalesce = DefaultMaxCoalesce
	}
	if o.StageDepth <= 0 {
		o.StageDepth = DefaultStageDepth
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Unlinked == nil {
		logger := o.Logger
		o.Unlinked = func(node, port string, ev Event) {
			if port == PortErr {
				logger.Error("event on unlinked err port", "node", node,
					"data", string(ev.DataJSON()), "meta", string(ev.MetaJSON()))
			}
		}
	}
}

// Graph is a set of named nodes and the links between their ports. Build it
// with AddSource, AddProcessor and Link, then call Run once.
type Graph struct {
	opts    Options
	nodes   map[string]*node
	order   []*node
	started bool
	sinks   int // sink nodes added so far

	// failed holds the error that stopped the graph (see Err).
	failed atomic.Pointer[error]
	// pool keeps the slices nodes are done with (see slicePool).
	pool slicePool
}

type node struct {
	name         string
	source       Source
	processor    Processor
	ports        []string        // output ports in declaration order
	portIndex    map[string]int  // port name -> index into ports
	errPort      int             // index of the "err" port, -1 if none
	sink         int             // SinkID of a processor with no ports, else -1
	targets      [][]*node       // per port: the nodes it is linked to
	in           chan []Event    // nil for sources
	upstream     map[*node]bool  // distinct nodes linked into this one
	upstreamLeft atomic.Int32    // upstream nodes still running; the input closes at 0
	counts       []atomic.Uint64 // events emitted per port
	received     atomic.Uint64   // events received on "in"
	// sharedInput is set when some slice arriving on "in" is also sent to
	// another node (a port linked to several), so n cannot tell when the
	// slice is no longer used and must not give it back to the pool.
	sharedInput bool
}

// New returns an empty graph.
func New(opts Options) *Graph {
	opts.ensureDefaults()
	return &Graph{opts: opts, nodes: map[string]*node{}}
}

// SinkID returns the id by which Outcome.Reached names the sink node, and
// false when there is no such node or it is not a sink (a processor with
// no output ports).
func (g *Graph) SinkID(name string) (SinkID, bool) {
	n, ok := g.nodes[name]
	if !ok || n.sink < 0 {
		return 0, false
	}
	return SinkID(n.sink), true
}

// Err returns the error that is stopping (or stopped) the graph because a
// node failed, and nil while no node has failed. A source that waited for
// the graph to go idle checks it to tell "every event was handled" from
// "the graph discarded events because it is failing".
func (g *Graph) Err() error {
	if p := g.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (g *Graph) add(name string, n *node, ports []string) error {
	if g.started {
		return ErrGraphStarted
	}
	if _, ok := g.nodes[name]; ok {
		return fmt.Errorf("%w %q", ErrDuplicateNode, name)
	}
	n.name = name
	n.portIndex = map[string]int{}
	for _, p := range ports {
		if _, dup := n.portIndex[p]; dup {
			continue
		}
		n.portIndex[p] = len(n.ports)
		n.ports = append(n.ports, p)
	}
	n.errPort, n.sink = -1, -1
	if i, ok := n.portIndex[PortErr]; ok {
		n.errPort = i
	}
	if n.processor != nil && len(n.ports) == 0 {
		n.sink = g.sinks
		g.sinks++
	}
	n.targets = make([][]*node, len(n.ports))
	n.counts = make([]atomic.Uint64, len(n.ports))
	n.upstream = map[*node]bool{}
	g.nodes[name] = n
	g.order = append(g.order, n)
	return nil
}

// AddSource adds a node that produces events on the given output ports.
func (g *Graph) AddSource(name string, s Source, ports ...string) error {
	return g.add(name, &node{source: s}, ports)
}

// AddProcessor adds a node that receives events on "in" and emits on the
// given output ports. A sink is a processor with no output ports.
func (g *Graph) AddProcessor(name string, p Processor, ports ...string) error {
	// The input channel is made here rather than in Run so that
	// QueueDepths can read it while Run starts.
	return g.add(name, &node{processor: p, in: make(chan []Event, g.opts.QueueDepth)}, ports)
}

// Link connects the output port fromPort of node from to the "in" port of
// node to. A port may be linked to several nodes (each receives every event)
// and a node may receive from several ports (events of each upstream node
// keep their order).
func (g *Graph) Link(from, fromPort, to string) error {
	if g.started {
		return ErrGraphStarted
	}
	src, ok := g.nodes[from]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownNode, from)
	}
	dst, ok := g.nodes[to]
	if !ok {
		return fmt.Errorf("%w %q", ErrUnknownNode, to)
	}
	pi, ok := src.portIndex[fromPort]
	if !ok {
		return fmt.Errorf("node %q has no output port %q (ports: %v): %w", from, fromPort, src.ports, ErrUnknownPort)
	}
	if dst.processor == nil {
		return fmt.Errorf("node %q is a source and has no %q port: %w", to, PortIn, ErrUnknownPort)
	}
	for _, t := range src.targets[pi] {
		if t == dst {
			return nil
		}
	}
	src.targets[pi] = append(src.targets[pi], dst)
	dst.upstream[src] = true
	return nil
}

// checkAcyclic reports a cycle among the links, naming the nodes on it.
func (g *Graph) checkAcyclic() error {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[*node]int{}
	var path []string
	var visit func(n *node) error
	visit = func(n *node) error {
		switch state[n] {
		case visiting:
			return fmt.Errorf("%w: %v -> %s", ErrCycle, path, n.name)
		case done:
			return nil
		}
		state[n] = visiting
		path = append(path, n.name)
		for _, ts := range n.targets {
			for _, t := range ts {
				if err := visit(t); err != nil {
					return err
				}
			}
		}
		path = path[:len(path)-1]
		state[n] = done
		return nil
	}
	for _, n := range g.order {
		if err := visit(n); err != nil {
			return err
		}
	}
	return nil
}

// Run starts every node and blocks until the graph has finished.
//
// The graph finishes when every source has ended and every event has been
// processed by every node downstream of it. Cancelling ctx stops the sources;
// the events they already emitted are still processed (draining) before Run
// returns. If a node fails (Process, Run or Close returns an error), the
// graph stops without draining and Run returns the first error.
func (g *Graph) Run(ctx context.Context) error {
	if g.started {
		return ErrGraphStarted
	}
	g.started = true
	if err := g.checkAcyclic(); err != nil {
		return err
	}
	for _, n := range g.order {
		n.upstreamLeft.Store(int32(len(n.upstream)))
		for _, ts := range n.targets {
			for _, t := range ts {
				t.sharedInput = t.sharedInput || len(ts) > 1
			}
		}
	}

	// hard is cancelled only when a node fails; drain contexts derive from
	// it so that processing continues after ctx is cancelled.
	hard, abort := context.WithCancelCause(context.WithoutCancel(ctx))
	defer abort(nil)
	sourceCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()

	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	// record makes err the graph's error if it is the first and stops
	// the sources; fail also makes every node discard its queued input.
	record := func(n *node, err error) {
		errOnce.Do(func() {
			firstErr = fmt.Errorf("node %q: %w", n.name, err)
			g.failed.Store(&firstErr)
		})
		stopSources()
	}
	fail := func(n *node, err error) {
		record(n, err)
		abort(firstErr)
	}

	for _, n := range g.order {
		if n.processor != nil && len(n.upstream) == 0 {
			close(n.in) // nothing will ever feed it
		}
	}
	for _, n := range g.order {
		wg.Add(1)
		go func(n *node) {
			defer wg.Done()
			em := newEmitter(g, n)
			if n.source != nil {
				if err := n.source.Run(sourceCtx, em); err != nil && !stoppedBy(sourceCtx, err) {
					fail(n, err)
				}
				if err := em.Flush(hard); err != nil {
					fail(n, err)
				}
				em.discard()
			} else if sp, ok := n.processor.(StagedProcessor); ok && g.opts.StageDepth > 1 {
				g.runStaged(hard, n, sp, em, fail)
			} else {
				g.receive(hard, n, func(events []Event, own bool) {
					var flags uint32
					em.input(len(events))
					if err := n.processor.Process(hard, events, em); err != nil {
						fail(n, err)
						flags = flagFailed
					} else if err := em.Flush(hard); err != nil {
						fail(n, err)
						flags = flagFailed
					}
					if flags != 0 {
						em.discard()
					}
					g.releaseSlice(n, events, flags, own)
				})
				em.discard()
			}
			if c, ok := nodeCloser(n); ok {
				// A node that fails to close has already emitted all it
				// will: what it emitted is still delivered downstream
				// (for the kv connector, results of commands whose
				// store failed afterwards).
				if err := c.Close(hard); err != nil {
					record(n, err)
				}
			}
			g.release(n)
		}(n)
	}
	wg.Wait()
	return firstErr
}

// started is a slice a StagedProcessor has started and its FinishFunc.
type started struct {
	finish FinishFunc
	events []Event
	own    bool // the slice goes back to the pool once finished
}

// runStaged feeds n's input to sp: this goroutine starts slices in order
// while a second one finishes them in the same order and flushes their
// output. The channel between them holds StageDepth-1 started slices, and
// the finisher holds one more.
func (g *Graph) runStaged(hard context.Context, n *node, sp StagedProcessor, em *emitter, fail func(*node, error)) {
	queue := make(chan started, g.opts.StageDepth-1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for s := range queue {
			// Called even when failing: the processor may hold resources
			// (or writes in flight) until its FinishFunc returns.
			var flags uint32
			em.input(len(s.events))
			if err := s.finish(hard, em); err != nil {
				fail(n, err)
				flags = flagFailed
			} else if err := em.Flush(hard); err != nil {
				fail(n, err)
				flags = flagFailed
			}
			if flags != 0 {
				em.discard()
			}
			g.releaseSlice(n, s.events, flags, s.own)
		}
		em.discard()
	}()
	g.receive(hard, n, func(events []Event, own bool) {
		finish, err := sp.Start(hard, events)
		if err != nil {
			fail(n, err)
			g.releaseSlice(n, events, flagFailed, own)
			return
		}
		queue <- started{finish: finish, events: events, own: own}
	})
	close(queue)
	<-finished
}

// receive hands each slice arriving at n, merged with those queued behind
// it (see coalesce), to handle, which must pass the slice and own to
// releaseSlice once done with its events. Once the
// graph is failing, slices are discarded instead, their events released
// as failed, so upstream never blocks.
func (g *Graph) receive(hard context.Context, n *node, handle func(events []Event, own bool)) {
	for events := range n.in {
		if hard.Err() != nil {
			g.releaseSlice(n, events, flagFailed, !n.sharedInput)
			continue
		}
		events, merged := g.coalesce(n, events)
		n.received.Add(uint64(len(events)))
		handle(events, merged || !n.sharedInput)
	}
}

// releaseSlice releases the slice's events as input of n (releaseAll),
// then gives the slice back to the pool when own says only n held it.
func (g *Graph) releaseSlice(n *node, events []Event, flags uint32, own bool) {
	n.releaseAll(events, flags)
	g.recycle(events, own)
}

// recycle gives events back to the pool when own says that nothing else
// refers to the slice: every node it was sent to is done with it.
func (g *Graph) recycle(events []Event, own bool) {
	if own {
		g.pool.put(events)
	}
}

// releaseAll drops the reference each tracked event of the slice holds as input
// of n, after setting flags (and n's sink bit when n is a sink).
func (n *node) releaseAll(events []Event, flags uint32) {
	for i := range events {
		if o := events[i].origin; o.t != nil {
			o.t.release(o.i, flags, n.sink)
		}
	}
}

// coalesce appends to first the slices already waiting in n's queue, up to
// Options.MaxCoalesce events, so that a node that fell behind catches up
// with fewer, larger Process calls (for the kv connector: larger commit
// groups, one fsync each). Order is kept. merged reports that the slice
// returned is a new one, which only n holds; the slices merged into it go
// back to the pool unless they were also sent elsewhere.
func (g *Graph) coalesce(n *node, first []Event) (events []Event, merged bool) {
	if len(n.in) == 0 || len(first) >= g.opts.MaxCoalesce {
		return first, false
	}
	// Downstream nodes may still hold the slice handed over last time, so
	// a merged slice always gets another backing array. It is sized for
	// the slices queued now if they are like first, and grows: MaxCoalesce
	// events each time (256 KiB) would cost more than the merge saves when
	// many small slices come in, as from http_server.
	size := min(g.opts.MaxCoalesce, len(first)*(1+len(n.in)))
	events = append(g.pool.get(size), first...)
	g.recycle(first, !n.sharedInput)
	for len(events) < g.opts.MaxCoalesce {
		select {
		case next, ok := <-n.in:
			if !ok {
				return events, true
			}
			events = append(g.pool.grow(events, len(next)), next...)
			g.recycle(next, !n.sharedInput)
			continue
		default:
		}
		break
	}
	return events, true
}

// stoppedBy reports whether err is just ctx's own cancellation, which is
// how a source that was asked to stop may legitimately end.
func stoppedBy(ctx context.Context, err error) bool {
	return ctx.Err() != nil && errors.Is(err, ctx.Err())
}

func nodeCloser(n *node) (Closer, bool) {
	if n.source != nil {
		c, ok := n.source.(Closer)
		return c, ok
	}
	c, ok := n.processor.(Closer)
	return c, ok
}

// release tells every node downstream of n that n will send nothing more,
// closing the input of those that have no running upstream left.
func (g *Graph) release(n *node) {
	seen := map[*node]bool{}
	for _, ts := range n.targets {
		for _, t := range ts {
			if seen[t] {
				continue
			}
			seen[t] = true
			if t.upstreamLeft.Add(-1) == 0 {
				close(t.in)
			}
		}
	}
}

// emitter buffers a node's output per port until Flush.
type emitter struct {
	g    *Graph
	n    *node
	buf  [][]Event
	sent []int // per port: targets that already have buf[i]
	// last is, per port, the length of the slice flushed last: the next
	// slice is made that large at once rather than grown by doubling
	// (a third of the copying and about half the garbage of a
	// 1000-event slice).
	last []int
	// For a processor: the length of the input slice being processed
	// (in) and of the one processed when last was flushed (lastIn), so
	// that a slice's output is sized in proportion to its input: a 1:1
	// processor fed slices of varying length gets one allocation per
	// slice, not a doubling every time a slice is longer than the last.
	in, lastIn int
	// port is the index of the port of the last Emit: most events of a
	// node go to the same port, and comparing a name is cheaper than a
	// map lookup.
	port int
}

// newEmitter returns an emitter for n's ports.
func newEmitter(g *Graph, n *node) *emitter {
	return &emitter{g: g, n: n, buf: make([][]Event, len(n.ports)), sent: make([]int, len(n.ports)), last: make([]int, len(n.ports))}
}

func (e *emitter) Emit(port string, ev Event) {
	i, ok := e.port, true
	if i >= len(e.n.ports) || e.n.ports[i] != port {
		// Not the port of the last Emit: look it up.
		if i, ok = e.n.portIndex[port]; ok {
			e.port = i
		}
	}
	if !ok || len(e.n.targets[i]) == 0 {
		if ok {
			e.n.counts[i].Add(1)
		}
		e.g.opts.Unlinked(e.n.name, port, ev)
		if o := ev.origin; o.t != nil {
			flags := flagUnlinked
			if port == PortErr {
				flags = flagErr | flagUnlinkedErr
				o.t.note(o.i, e.n.name, ev.Meta)
			}
			if e.n.source != nil {
				// A source's event is held by nothing else: it is
				// done as soon as it is emitted here.
				o.t.ref(o.i, 1, flags)
				o.t.release(o.i, 0, -1)
			} else {
				o.t.ref(o.i, 0, flags)
			}
		}
		return
	}
	if o := ev.origin; o.t != nil {
		var flags uint32
		if i == e.n.errPort {
			flags = flagErr
			o.t.note(o.i, e.n.name, ev.Meta)
		}
		o.t.ref(o.i, len(e.n.targets[i]), flags)
	}
	switch buf := e.buf[i]; {
	case buf == nil:
		e.buf[i] = e.g.pool.get(e.sizeFor(i))
	case len(buf) == cap(buf):
		e.buf[i] = e.g.pool.grow(buf, 1) // full: to a larger pooled slice
	}
	e.buf[i] = append(e.buf[i], ev)
}

// input tells the emitter of a processor that a slice of n events is being
// processed.
func (e *emitter) input(n int) { e.in = n }

// sizeFor returns the capacity to give port i's next slice: its last
// length, scaled by how much longer or shorter the input slice is than the
// one that gave it, but no more than the larger of that last length and
// the input's (an output larger than both grows by append).
func (e *emitter) sizeFor(i int) int {
	last := e.last[i]
	if e.in == 0 || e.lastIn == 0 || e.in == e.lastIn {
		return last
	}
	return max(1, min(last*e.in/e.lastIn, max(last, e.in)))
}

// Flush sends each port's queued slice to every node linked to it. If ctx
// ends part way, the targets already served are remembered so that a later
// Flush (the graph's final one, when draining) does not deliver the same
// slice to them twice.
func (e *emitter) Flush(ctx context.Context) error {
	for i, events := range e.buf {
		if len(events) == 0 {
			continue
		}
		targets := e.n.targets[i]
		for e.sent[i] < len(targets) {
			select {
			case targets[e.sent[i]].in <- events:
				e.sent[i]++
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		e.n.counts[i].Add(uint64(len(events)))
		e.last[i], e.lastIn = len(events), e.in
		e.buf[i] = nil // receivers own the sent slice now
		e.sent[i] = 0
	}
	return nil
}

// discard drops what is still queued once the node has failed or its
// Flush failed (the graph is failing): each tracked event is released as
// failed once for every target it did not reach. It is called at once, not
// when the node ends, because a source may wait for those completions
// before it ends.
func (e *emitter) discard() {
	for i, events := range e.buf {
		missed := len(e.n.targets[i]) - e.sent[i]
		for _, ev := range events {
			if o := ev.origin; o.t != nil {
				for range missed {
					o.t.release(o.i, flagFailed, -1)
				}
			}
		}
		e.buf[i] = nil
		e.sent[i] = 0
	}
}

// PortCount is the number of events one node emitted on one port.
type PortCount struct {
	Node   string
	Port   string
	Events uint64
}

// Counts returns how many events each node emitted per port and received on
// "in" (reported with Port "in"), sorted by node then port. It is safe to
// call while the graph runs.
func (g *Graph) Counts() []PortCount {
	var out []PortCount
	for _, n := range g.order {
		if n.processor != nil {
			out = append(out, PortCount{Node: n.name, Port: PortIn, Events: n.received.Load()})
		}
		for i, p := range n.ports {
			out = append(out, PortCount{Node: n.name, Port: p, Events: n.counts[i].Load()})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Port < out[j].Port
	})
	return out
}

// QueueDepth is how full one processor's input queue is. Every link into a
// node feeds the same queue, so this is the depth of all its incoming links
// together.
type QueueDepth struct {
	Node string
	// Slices is the number of slices waiting; Capacity the most it holds
	// before senders block (Options.QueueDepth).
	Slices, Capacity int
}

// QueueDepths returns the input queue depth of every processor, sorted by
// node. It is safe to call while the graph runs; a queue stuck at Capacity
// marks the node that holds the flow back.
func (g *Graph) QueueDepths() []QueueDepth {
	var out []QueueDepth
	for _, n := range g.order {
		if n.processor != nil {
			out = append(out, QueueDepth{Node: n.name, Slices: len(n.in), Capacity: cap(n.in)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
