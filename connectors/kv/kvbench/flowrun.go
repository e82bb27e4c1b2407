package kvbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// storeOptions returns the options of the store under test, defaults
// filled, quiet. The raw Pebble side opens its database with the same
// Pebble tuning.
func (cfg Config) storeOptions() pebblestore.Options {
	opts := pebblestore.Options{NoSync: !cfg.Sync, RowCacheBytes: cfg.RowCacheBytes, MaxGroup: cfg.MaxGroup, MaxGroupBuild: cfg.MaxGroupBuild,
		Pace: cfg.Pace, NoPace: cfg.NoPace,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	opts.EnsureDefaults()
	return opts
}

// runFlowrun runs a workload through source -> kv connector -> sink.
func runFlowrun(ctx context.Context, cfg Config, workload, dir string, p *progress) (sideResult, error) {
	opts := cfg.storeOptions()
	quiet := opts.Logger
	var open *openLoop
	if cfg.Rate > 0 {
		open = newOpenLoop(cfg.Rate, cfg.Ops)
		open.diag.storeOptions(&opts)
	}
	store, err := pebblestore.Open(dir, opts)
	if err != nil {
		return sideResult{}, err
	}
	r, err := runFlowrunPart(ctx, cfg, workload, store, quiet, p, newGen(workload, cfg.Keys), true, open)
	// Reads the previous commit group answered skip the database as cache
	// hits do.
	st := store.RowCacheStats()
	if hits := st.Hits + st.PreviousGroup; opts.RowCacheBytes > 0 && hits+st.Misses > 0 {
		r.rowCacheHitRate = float64(hits) / float64(hits+st.Misses)
	}
	return r, err
}

// runFlowrunOn runs a workload through source -> kv connector on store ->
// sink; the graph closes store.
func runFlowrunOn(ctx context.Context, cfg Config, workload string, store kv.Backend, quiet *slog.Logger, p *progress) (sideResult, error) {
	return runFlowrunPart(ctx, cfg, workload, store, quiet, p, newGen(workload, cfg.Keys), true, nil)
}

// runFlowrunPart is runFlowrunOn for one part of a workload split in
// parts on one store: it runs the next cfg.Ops operations of ops, after the
// preload when preload is set (the first part). open, in open loop, is the
// run's state when the caller made it (to hook the store), else nil.
func runFlowrunPart(ctx context.Context, cfg Config, workload string, store kv.Backend, quiet *slog.Logger, p *progress, ops *gen, preload bool, open *openLoop) (sideResult, error) {
	conn, err := kv.New(store, kv.Options{Logger: quiet})
	if err != nil {
		_ = store.Close()
		return sideResult{}, err
	}
	nb := (cfg.Ops + cfg.Batch - 1) / cfg.Batch
	f := &flowSide{
		cfg:      cfg,
		workload: workload,
		vals:     newValues(cfg.ValueBytes),
		base:     time.Now(),
		starts:   make([]time.Duration, nb),
		opsIn:    make([]int, nb),
		arenas:   make([][]byte, nb),
		lat:      make([]time.Duration, nb),
		// Spares of completed batches' arenas. In-flight arenas are bounded
		// by the queues: a closed loop keeps a few batches in flight, an
		// open loop many small groups, whose arenas are kept too so that
		// the benchmark's own garbage does not add GC cycles to the flow's.
		free:      make(chan []byte, 64),
		preloaded: make(chan struct{}),
		p:         p,
		gen:       ops,
		preload:   preload && needsPreload(workload),
	}
	if cfg.Rate > 0 {
		f.open = open
		if f.open == nil {
			f.open = newOpenLoop(cfg.Rate, cfg.Ops)
		}
		f.starts, f.opsIn, f.arenas, f.lat = nil, nil, nil, nil
	}
	if f.preload {
		f.preloadLeft.Store(int64((cfg.Keys + preloadBatch - 1) / preloadBatch))
	} else {
		close(f.preloaded)
	}

	g := pipeline.New(pipeline.Options{Logger: quiet, MaxCoalesce: cfg.MaxCoalesce})
	steps := []error{
		g.AddSource("gen", pipeline.SourceFunc(f.generate), pipeline.PortOut),
		g.AddProcessor("kv", conn, kv.Ports()...), // the graph closes conn, and conn the store
		g.AddProcessor("sink", pipeline.ProcessorFunc(f.receive)),
		g.Link("gen", pipeline.PortOut, "kv"),
		g.Link("kv", pipeline.PortOut, "sink"),
		g.Link("kv", pipeline.PortErr, "sink"),
	}
	for _, err := range steps {
		if err != nil {
			_ = conn.Close(ctx)
			return sideResult{}, err
		}
	}
	if err := g.Run(ctx); err != nil {
		return sideResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return sideResult{}, err
	}
	if f.errs > 0 {
		return sideResult{}, fmt.Errorf("%d commands failed, first: %s", f.errs, f.firstErr)
	}
	if f.open != nil {
		return f.open.result()
	}
	if n := f.completed.Load(); n != int64(nb) {
		return sideResult{}, fmt.Errorf("%d of %d batches completed", n, nb)
	}
	weights := f.opsIn
	return sideResult{
		elapsed: f.lastDone - f.starts[0],
		cpu:     f.cpuEnd - f.cpuStart,
		p50us:   percentile(f.lat, weights, 0.50),
		p99us:   percentile(f.lat, weights, 0.99),
	}, nil
}

// flowSide is the state shared by the generating source, the counting sink
// and the completion of each batch (pipeline.Tracker). The source writes a
// batch's entries before handing it to the graph and its completion reads
// them once every result derived from it has reached the sink; the
// channels between the nodes order those accesses, so no lock is needed.
type flowSide struct {
	cfg      Config
	workload string
	vals     values

	base   time.Time
	starts []time.Duration // per batch: when the source handed it over
	opsIn  []int           // per batch: operations it holds
	arenas [][]byte        // per batch: the buffer its events point into
	free   chan []byte     // arenas of completed batches, for reuse

	// Completion state, written as batches complete.
	lat         []time.Duration
	lastDone    time.Duration
	completed   atomic.Int64  // timed batches completed
	preloadLeft atomic.Int64  // preload batches not yet completed
	preloaded   chan struct{} // closed once every preload batch is done
	p           *progress

	// cpuStart and cpuEnd are the process's CPU time when the source
	// starts the timed batches and when the last one completes (closed
	// loop).
	cpuStart, cpuEnd time.Duration

	// open is the open-loop state (Config.Rate > 0), nil in closed loop.
	open *openLoop
	// gen generates the operations; preload says whether the keys are
	// preloaded first (not when an earlier part of the workload did).
	gen     *gen
	preload bool

	// Sink-only state.
	errs     int
	firstErr string
}

// preloadDone counts one completed preload batch.
func (f *flowSide) preloadDone() {
	if f.preloadLeft.Add(-1) == 0 {
		close(f.preloaded)
	}
}

// batchDone records the latency of timed batch b once everything derived
// from it has reached the sink.
func (f *flowSide) batchDone(b int) {
	now := time.Since(f.base)
	f.lat[b] = now - f.starts[b]
	f.lastDone = now
	select {
	case f.free <- f.arenas[b]:
	default:
	}
	f.arenas[b] = nil
	f.p.add(f.opsIn[b])
	if f.completed.Add(1) == int64(len(f.starts)) {
		f.cpuEnd = processCPU()
	}
}

// generate is the source: the untimed preload, then the timed operations,
// batch by batch.
func (f *flowSide) generate(ctx context.Context, emit pipeline.SourceEmitter) error {
	if f.preload {
		var buf []byte
		var tr *pipeline.Tracker
		for k := range f.cfg.Keys {
			if k%preloadBatch == 0 {
				tr = pipeline.NewTracker(min(preloadBatch, f.cfg.Keys-k), nil, f.preloadDone)
			}
			buf = buf[:0:0] // preload events are not recycled
			start := len(buf)
			buf = appendMeta(buf, "put", k)
			meta := buf[start:]
			start = len(buf)
			buf = f.vals.preloadValue(buf, f.workload)
			emit.Emit(pipeline.PortOut, tr.Track(k%preloadBatch, pipeline.Event{Meta: meta, Data: buf[start:]}))
			if (k+1)%preloadBatch == 0 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		if err := emit.Flush(ctx); err != nil {
			return err
		}
		select {
		case <-f.preloaded:
		case <-ctx.Done():
			return nil
		}
	}

	g := f.gen
	scanEnd := appendKey(nil, f.cfg.Keys)
	// Room for one event's meta and data, so an arena never regrows.
	perEvent := 96
	switch f.workload {
	case Put, Mixed:
		perEvent += f.cfg.ValueBytes
	case CAS:
		perEvent += 2 * f.cfg.ValueBytes
	}
	if f.open != nil {
		return f.generateOpen(ctx, emit, g, scanEnd, perEvent)
	}
	f.cpuStart = processCPU()
	for b := range f.starts {
		if ctx.Err() != nil {
			return nil
		}
		var arena []byte
		select {
		case arena = <-f.free:
			arena = arena[:0]
		default:
			arena = make([]byte, 0, f.cfg.Batch*perEvent)
		}
		n := min(f.cfg.Batch, f.cfg.Ops-b*f.cfg.Batch)
		tr := pipeline.NewTracker(n, nil, func() { f.batchDone(b) })
		for i := range n {
			var ev pipeline.Event
			arena, ev = f.appendEvent(arena, g.op(), scanEnd)
			emit.Emit(pipeline.PortOut, tr.Track(i, ev))
		}
		f.opsIn[b] = n
		f.arenas[b] = arena
		f.starts[b] = time.Since(f.base)
		if err := emit.Flush(ctx); err != nil {
			return err
		}
	}
	return nil
}

// appendCommand appends {"kv":{"<name>":"<key>" (left open for arguments).
func appendCommand(dst []byte, name string, k int) []byte {
	dst = append(dst, `{"kv":{"`...)
	dst = append(dst, name...)
	dst = append(dst, `":"`...)
	dst = appendKey(dst, k)
	return append(dst, '"')
}

// appendMeta appends {"kv":{"<name>":"<key>"}}.
func appendMeta(dst []byte, name string, k int) []byte {
	return append(appendCommand(dst, name, k), "}}"...)
}

var errMetaPrefix = []byte(`{"error":`)

// receive is the sink: it counts failed commands. Batches are timed by
// their completion (batchDone).
func (f *flowSide) receive(_ context.Context, batch []pipeline.Event, _ pipeline.Emitter) error {
	for _, ev := range batch {
		if bytes.HasPrefix(ev.Meta, errMetaPrefix) {
			if f.errs == 0 {
				f.firstErr = fmt.Sprintf("event %d of its batch: %s", ev.Origin().Index(), ev.Meta)
			}
			f.errs++
		}
	}
	return nil
}

// appendEvent appends the meta and data of operation o to arena and returns
// the arena and the event pointing into it.
func (f *flowSide) appendEvent(arena []byte, o op, scanEnd []byte) ([]byte, pipeline.Event) {
	var ev pipeline.Event
	start := len(arena)
	switch o.kind {
	case opPut:
		arena = appendMeta(arena, "put", o.key)
		ev.Meta = arena[start:]
		start = len(arena)
		arena = f.vals.appendValue(arena, o.version)
		ev.Data = arena[start:]
	case opGet:
		arena = appendMeta(arena, "get", o.key)
		ev.Meta = arena[start:]
	case opIncrement:
		arena = appendCommand(arena, "increment", o.key)
		arena = append(arena, `,"by":`...)
		arena = appendInt(arena, incrementBy)
		arena = append(arena, "}}"...)
		ev.Meta = arena[start:]
	case opCAS:
		arena = appendCommand(arena, "cas", o.key)
		arena = append(arena, `,"old":`...)
		arena = f.vals.appendValue(arena, o.version)
		arena = append(arena, "}}"...)
		ev.Meta = arena[start:]
		start = len(arena)
		arena = f.vals.appendValue(arena, o.version+1)
		ev.Data = arena[start:]
	case opScan:
		arena = appendCommand(arena, "scan", o.key)
		arena = append(arena, `,"end":"`...)
		arena = append(arena, scanEnd...)
		arena = append(arena, `","limit":`...)
		arena = appendInt(arena, ScanLimit)
		arena = append(arena, "}}"...)
		ev.Meta = arena[start:]
	}
	return arena, ev
}
