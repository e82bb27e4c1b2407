package kvbench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// preloadSeq is added to the Seq of preload events so the sink tells them
// from timed ones.
const preloadSeq = 1 << 62

// storeOptions returns the options of the store under test, defaults
// filled, quiet. The raw Pebble side opens its database with the same
// Pebble tuning.
func (cfg Config) storeOptions() pebblestore.Options {
	opts := pebblestore.Options{NoSync: !cfg.Sync, RowCacheBytes: cfg.RowCacheBytes, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	opts.EnsureDefaults()
	return opts
}

// runFlowrun runs a workload through source -> kv connector -> sink.
func runFlowrun(ctx context.Context, cfg Config, workload, dir string, p *progress) (sideResult, error) {
	opts := cfg.storeOptions()
	quiet := opts.Logger
	store, err := pebblestore.Open(dir, opts)
	if err != nil {
		return sideResult{}, err
	}
	r, err := runFlowrunOn(ctx, cfg, workload, store, quiet, p)
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
	conn, err := kv.New(store, kv.Options{Logger: quiet})
	if err != nil {
		_ = store.Close()
		return sideResult{}, err
	}
	nb := (cfg.Ops + cfg.Batch - 1) / cfg.Batch
	f := &flowSide{
		cfg:       cfg,
		workload:  workload,
		vals:      newValues(cfg.ValueBytes),
		base:      time.Now(),
		starts:    make([]time.Duration, nb),
		remaining: make([]int, nb),
		opsIn:     make([]int, nb),
		arenas:    make([][]byte, nb),
		lat:       make([]time.Duration, nb),
		free:      make(chan []byte, 4), // spares; in-flight arenas are bounded by the queues
		preloaded: make(chan struct{}),
		p:         p,
	}
	if needsPreload(workload) {
		f.preloadLeft = cfg.Keys
	} else {
		close(f.preloaded)
	}

	g := pipeline.New(pipeline.Options{Logger: quiet})
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
	for b, n := range f.remaining {
		if n != 0 {
			return sideResult{}, fmt.Errorf("batch %d: %d more result events expected than received", b, n)
		}
	}
	weights := f.opsIn
	return sideResult{
		elapsed: f.lastDone - f.starts[0],
		p50us:   percentile(f.lat, weights, 0.50),
		p99us:   percentile(f.lat, weights, 0.99),
	}, nil
}

// flowSide is the state shared by the generating source and the counting
// sink. The source writes a batch's entries before handing it to the graph
// and the sink reads them after receiving its results; the channels between
// the nodes order those accesses, so no lock is needed.
type flowSide struct {
	cfg      Config
	workload string
	vals     values

	base      time.Time
	starts    []time.Duration // per batch: when the source handed it over
	remaining []int           // per batch: result events still expected
	opsIn     []int           // per batch: operations it holds
	arenas    [][]byte        // per batch: the buffer its events point into
	free      chan []byte     // arenas of completed batches, for reuse

	// Sink-only state.
	lat         []time.Duration
	lastDone    time.Duration
	preloadLeft int
	preloaded   chan struct{} // closed once every preload result is in
	errs        int
	firstErr    string
	p           *progress
}

// generate is the source: the untimed preload, then the timed operations,
// batch by batch.
func (f *flowSide) generate(ctx context.Context, emit pipeline.SourceEmitter) error {
	if needsPreload(f.workload) {
		var buf []byte
		for k := range f.cfg.Keys {
			buf = buf[:0:0] // preload events are not recycled
			start := len(buf)
			buf = appendMeta(buf, "put", k)
			meta := buf[start:]
			start = len(buf)
			buf = f.vals.preloadValue(buf, f.workload)
			emit.Emit(pipeline.PortOut, pipeline.Event{Meta: meta, Data: buf[start:], Seq: preloadSeq + uint64(k)})
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

	g := newGen(f.workload, f.cfg.Keys)
	scanEnd := appendKey(nil, f.cfg.Keys)
	// Room for one event's meta and data, so an arena never regrows.
	perEvent := 96
	switch f.workload {
	case Put, Mixed:
		perEvent += f.cfg.ValueBytes
	case CAS:
		perEvent += 2 * f.cfg.ValueBytes
	}
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
		expect := 0
		for i := range n {
			o := g.op()
			ev := pipeline.Event{Seq: uint64(b*f.cfg.Batch + i)}
			start := len(arena)
			expect++
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
				expect += scanRows(f.cfg.Keys, o.key) - 1 // one event per entry read
			}
			emit.Emit(pipeline.PortOut, ev)
		}
		f.opsIn[b] = n
		f.remaining[b] = expect
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

// receive is the sink: it counts results per batch and records a batch's
// latency when its last result arrives.
func (f *flowSide) receive(_ context.Context, batch []pipeline.Event, _ pipeline.Emitter) error {
	now := time.Since(f.base)
	for _, ev := range batch {
		if bytes.HasPrefix(ev.Meta, errMetaPrefix) {
			if f.errs == 0 {
				f.firstErr = fmt.Sprintf("seq %d: %s", ev.Seq, ev.Meta)
			}
			f.errs++
		}
		if ev.Seq >= preloadSeq {
			f.preloadLeft--
			if f.preloadLeft == 0 {
				close(f.preloaded)
			}
			continue
		}
		b := int(ev.Seq) / f.cfg.Batch
		f.remaining[b]--
		if f.remaining[b] != 0 {
			continue
		}
		f.lat[b] = now - f.starts[b]
		f.lastDone = now
		select {
		case f.free <- f.arenas[b]:
		default:
		}
		f.arenas[b] = nil
		f.p.add(f.opsIn[b])
	}
	return nil
}
