package pipeline

import "context"

// Emitter queues events on a node's output ports. Events queued while a
// Processor handles a slice are sent downstream, one slice per port, when
// Process returns; a Source decides when to send with Flush. Emitting on a
// port with no link hands the event to the graph's Unlinked hook.
type Emitter interface {
	Emit(port string, ev Event)
}

// SourceEmitter is the Emitter given to a Source.
type SourceEmitter interface {
	Emitter
	// Flush sends every queued event downstream, blocking while the
	// downstream channels are full (backpressure). It returns an error only
	// when the graph is stopping because a node failed.
	Flush(ctx context.Context) error
}

// Processor handles slices of events arriving on its "in" port.
//
// Process is called from one goroutine per node, slice after slice in arrival
// order, so a Processor needs no locking of its own. It must not keep or
// modify the slice or its events. A returned error is fatal for the whole
// graph; per-event failures are emitted on the "err" port instead.
type Processor interface {
	Process(ctx context.Context, events []Event, emit Emitter) error
}

// FinishFunc completes a slice begun by StagedProcessor.Start: it waits for
// whatever Start set in motion and emits the slice's events. An error is
// fatal for the whole graph, as from Process.
type FinishFunc func(ctx context.Context, emit Emitter) error

// StagedProcessor is a Processor whose work on a slice splits into a part
// that must happen in input order before the next slice starts (decoding,
// handing writes to a store) and a part that only waits and emits (a disk
// sync, building results). The graph runs the two stages of consecutive
// slices concurrently, up to Options.StageDepth slices in flight, so the
// wait of one slice overlaps the start of the next.
//
// Start is called from one goroutine, slice after slice in arrival order;
// the returned FinishFuncs are called from another goroutine, one at a
// time and in the same order, each while later slices may already be
// starting. Every FinishFunc returned is called exactly once, even while
// the graph is failing, so it may hold resources until then. A
// StagedProcessor may keep the slice (without modifying it) until its
// FinishFunc returns. Process must do what Start followed by the FinishFunc
// does; it is used where stages do not apply.
type StagedProcessor interface {
	Processor
	Start(ctx context.Context, events []Event) (FinishFunc, error)
}

// ProcessorFunc adapts a function to the Processor interface.
type ProcessorFunc func(ctx context.Context, events []Event, emit Emitter) error

// Process calls f(ctx, events, emit).
func (f ProcessorFunc) Process(ctx context.Context, events []Event, emit Emitter) error {
	return f(ctx, events, emit)
}

// Source produces events until it is exhausted or ctx is cancelled.
//
// Run returns nil when the source ended normally, including when ctx was
// cancelled: stopping on cancellation is how a graph shuts down (returning
// ctx's own error then is also treated as a normal end). Events
// queued but not flushed when Run returns are flushed by the graph.
type Source interface {
	Run(ctx context.Context, emit SourceEmitter) error
}

// SourceFunc adapts a function to the Source interface.
type SourceFunc func(ctx context.Context, emit SourceEmitter) error

// Run calls f(ctx, emit).
func (f SourceFunc) Run(ctx context.Context, emit SourceEmitter) error { return f(ctx, emit) }

// Closer is implemented by nodes that hold resources (stores, files). The
// graph calls Close once, after the node has processed its last event, with
// a context that is not cancelled by the shutdown signal so that flushing can
// finish.
type Closer interface {
	Close(ctx context.Context) error
}
