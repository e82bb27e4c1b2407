package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// Ports returns the output ports of a Connector: "out" for results and
// "err" for refused or failed commands.
func Ports() []string { return []string{pipeline.PortOut, pipeline.PortErr} }

// Connector is the kv node of a flow: it applies the command in each
// event's meta.kv to its Backend, within its namespace, and emits results on
// "out" and failures on "err". It implements pipeline.Processor and
// pipeline.Closer, owns its Backend (Close closes it) and runs a janitor
// goroutine reclaiming expired keys. Process is safe for concurrent use;
// several Connectors (one per namespace) may share one Backend through
// handles that each close independently.
type Connector struct {
	b      Backend
	opts   Options
	layout layout
	dec    decoder
	// result is the parsed Options.Result; nil when the connector
	// replaces events with results.
	result *resultPath

	scratchPool sync.Pool // *sliceScratch
	// inFlight counts slices submitted to a Submitter and not finished:
	// while any is, a read-only slice must queue behind them rather than
	// read past them.
	inFlight atomic.Int64
	// cut orders the slices whose commands were cut off from their
	// submission to the store's writer (see cut.go).
	cut cutter

	// borrowed marks a Connector made by WithNamespace: it does not own
	// its Backend and has no janitor.
	borrowed bool
	stop     context.CancelFunc
	// expiry is the ExpirySource, nil without Options.ExpiredEvents.
	expiry *expirySource
	// refs counts the holders of the Backend: the Connector and, once
	// handed out, its ExpirySource; the last to let go closes it.
	refs      atomic.Int32
	janitor   sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

var (
	_ pipeline.StagedProcessor = (*Connector)(nil)
	_ pipeline.Closer          = (*Connector)(nil)
)

// New returns a Connector over b. It starts the janitor unless
// opts.ReclaimInterval is negative. The Connector owns b from now on.
func New(b Backend, opts Options) (*Connector, error) {
	if b == nil {
		return nil, errors.New("kv: New needs a Backend")
	}
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	c := &Connector{b: b, opts: opts, layout: newLayout(opts.Namespace)}
	c.dec = decoder{opts: &c.opts}
	c.result, _ = parseResultPath(opts.Result) // checked by Validate
	c.refs.Store(1)
	if opts.ExpiredEvents {
		c.expiry = &expirySource{c: c, closed: make(chan struct{})}
	}
	c.reportPartialLoads()
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	if opts.ReclaimInterval > 0 && !opts.ExpiredEvents {
		c.janitor.Add(1)
		go c.runJanitor(ctx)
	}
	return c, nil
}

// WithNamespace returns a Connector for namespace ns ("" for
// DefaultNamespace) over c's Backend, with c's other options, for a
// program serving many namespaces: it reads nothing from the store, starts
// no janitor (call its Reclaim) and does not own the Backend, so its Close
// does nothing. It must not be used once c is closed. It costs one small
// allocation, released with the last reference to it.
func (c *Connector) WithNamespace(ns string) *Connector {
	opts := c.opts
	opts.Namespace = ns
	if ns == "" {
		opts.Namespace = DefaultNamespace
	}
	d := &Connector{b: c.b, opts: opts, layout: newLayout(opts.Namespace), borrowed: true, result: c.result}
	d.dec = decoder{opts: &d.opts}
	return d
}

// reportPartialLoads warns, through the connector's Logger, of every load
// into the store that did not complete (see PartialLoads).
func (c *Connector) reportPartialLoads() {
	ctx, cancel := context.WithTimeout(context.Background(), partialLoadCheckTimeout)
	defer cancel()
	loads, err := PartialLoads(ctx, c.b)
	if err != nil {
		c.opts.Logger.Warn("kv: could not check the store for partial loads", "namespace", c.opts.Namespace, "error", err)
		return
	}
	for _, p := range loads {
		c.opts.Logger.Warn("kv: the store is partially loaded: "+p.String()+"; load it again, or run flowrun kv check --forget-partial-loads",
			"namespace", c.opts.Namespace, "source", p.Source, "started", p.Started)
	}
}

// partialLoadCheckTimeout bounds the read of partial load markers at New,
// for a backend that cannot answer (an unreachable etcd cluster).
const partialLoadCheckTimeout = 10 * time.Second

// Options returns the connector's options with defaults filled in.
func (c *Connector) Options() Options { return c.opts }

// Close stops the janitor, waits for it, then closes the Backend (once
// the ExpirySource, if handed out, is closed too). Calls
// after the first return the first result. It does nothing on a Connector
// made by WithNamespace.
func (c *Connector) Close(context.Context) error {
	if c.borrowed {
		return nil
	}
	c.closeOnce.Do(func() {
		c.stop()
		c.janitor.Wait()
		if c.expiry != nil {
			close(c.expiry.closed) // its last pass; it closes the Backend if it holds it
		}
		c.closeErr = c.releaseBackend()
	})
	return c.closeErr
}

// retain adds a holder of the Backend.
func (c *Connector) retain() { c.refs.Add(1) }

// releaseBackend lets go of the Backend, closing it when no holder is left.
func (c *Connector) releaseBackend() error {
	if c.refs.Add(-1) == 0 {
		return c.b.Close()
	}
	return nil
}

// Process decodes every event of the slice, runs all valid commands in one
// Backend.Update (one TxnFunc each, so the backend can commit them as a
// group), then emits each event's results in input order. Per-command
// failures go to "err"; if the commit itself fails, every command of the
// slice goes to "err" with that error and none to "out". Process returns an
// error only for misuse it cannot report per event (never, today).
func (c *Connector) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	finish, err := c.Start(ctx, events)
	if err != nil {
		return err
	}
	return finish(ctx, emit)
}

// Start implements pipeline.StagedProcessor: it decodes events and, on a
// backend that queues work (Submitter), hands the slice's commands to the
// store before returning, so that the next slice is decoded and applied
// while this one's commit is synced. The FinishFunc waits for the outcome
// and emits as Process does. Commands of consecutive slices apply in
// input order either way.
func (c *Connector) Start(ctx context.Context, events []pipeline.Event) (pipeline.FinishFunc, error) {
	sc := c.scratch(len(events))
	sc.events = events
	sc.x.ctx, sc.x2.ctx = ctx, ctx
	sc.readOnly = true
	for i, ev := range events {
		sc.corrs[i], sc.errs[i] = c.decodeEvent(ev, &sc.cmds[i])
		if sc.errs[i] != nil {
			continue
		}
		sc.idx = append(sc.idx, i)
		sc.readOnly = sc.readOnly && sc.cmds[i].readOnly()
	}
	n := len(sc.idx)
	if n == 0 {
		return sc.finishFn, nil
	}
	v, viewer := c.b.(Viewer)
	sub, submitter := c.b.(Submitter)
	switch {
	case !submitter:
		// The slice runs when it finishes: finishing is in input order and
		// nothing is applied before, so order holds.
		sc.deferred = true
	case sc.readOnly && viewer && c.inFlight.Load() == 0:
		// Read now, in order: every write of an earlier slice has
		// returned, and no later slice has started. Nothing in this
		// slice writes, so the reads need not queue behind the writer.
		sc.outcome(sc.view(ctx, v, n))
	default:
		c.inFlight.Add(1)
		sc.seq, sc.from, sc.cutFrom, sc.x.submitKeys = c.cut.number(), 0, -1, 0
		if hs, ok := sub.(HintedSubmitter); ok {
			hints := c.readHintsOf(sc)
			if len(sc.hintKeys) == 0 {
				hints = nil // nothing read by key (blind puts): nothing to look up ahead
			}
			sc.wait = hs.SubmitHinted(ctx, sc.fns[:n], hints, sc.txErrs[:n])
		} else {
			sc.wait = sub.Submit(ctx, sc.fns[:n], sc.txErrs[:n])
		}
	}
	return sc.finishFn, nil
}

// finish completes the slice begun by Start: it waits for (or, on a
// backend that cannot queue, runs) the slice's commands, emits each
// event's outcome in input order and releases sc.
func (sc *sliceScratch) finish(ctx context.Context, emit pipeline.Emitter) error {
	c := sc.c
	defer c.release(sc)
	switch {
	case sc.wait != nil:
		err := sc.wait()
		sc.runCut(ctx, err)
		c.inFlight.Add(-1)
		sc.outcome(err)
	case sc.deferred:
		sc.x.ctx, sc.x2.ctx = ctx, ctx
		sc.outcome(c.update(ctx, sc))
	}
	for i, ev := range sc.events {
		c.emit(emit, &sc.metas, ev, &sc.cmds[i], &sc.results[i], sc.corrs[i], sc.errs[i])
	}
	if c.opts.OnCommands != nil {
		c.observe(sc.cmds, sc.errs)
	}
	return nil
}

// update runs the slice's commands through whichever path the backend
// offers: View for a slice that only reads, UpdateHinted for a backend
// whose reads are remote, Update otherwise.
func (c *Connector) update(ctx context.Context, sc *sliceScratch) error {
	n := len(sc.idx)
	fns, txErrs := sc.fns[:n], sc.txErrs[:n]
	if v, ok := c.b.(Viewer); ok && sc.readOnly {
		// Nothing in this slice writes, so nothing in it must be ordered
		// after a write of it: the reads need not queue behind other
		// writers, and may run in parallel.
		return sc.view(ctx, v, n)
	}
	if h, ok := c.b.(ReadHinter); ok {
		return h.UpdateHinted(ctx, fns, c.readHintsOf(sc), txErrs)
	}
	return c.b.Update(ctx, fns, txErrs)
}

// outcome records each command's error once the slice has run: its own,
// or ErrCommit for all when the commit failed (err).
func (sc *sliceScratch) outcome(err error) {
	for j, i := range sc.idx {
		if err != nil {
			sc.errs[i] = fmt.Errorf("%s: %w: %w", sc.cmds[i].op, ErrCommit, err)
		} else {
			sc.errs[i] = sc.txErrs[j]
		}
	}
}

// sliceScratch is the working memory of one Process call, pooled per
// Connector so a steady stream of slices allocates none of it. fns[j]
// runs the command at cmds[idx[j]]; each closure is built once, when its
// slot is first needed, and finds its command through idx.
type sliceScratch struct {
	c       *Connector
	events  []pipeline.Event
	cmds    []command
	corrs   []corrRef // each event's meta.correlation, found by decodeEvent
	errs    []error
	results []result
	idx     []int
	fns     []TxnFunc
	txErrs  []error
	// hints, hintKeys and hintBuf hold the slice's read hints
	// (readHintsOf): each command's keys, the keys, their bytes.
	hints    [][][]byte
	hintKeys [][]byte
	hintBuf  []byte
	x        execer // backends run one Update's fns one at a time
	// metas holds the metas of the events finish emits.
	metas resultArena

	// A large read-only slice is read by two View calls at once: fns2
	// are the same commands run with their own execer x2.
	fns2 []TxnFunc
	x2   execer

	// Between Start and finish: wait reports the outcome of commands
	// submitted to the store; deferred says they are still to be run.
	readOnly bool // no decoded command of the slice writes
	wait     func() error
	deferred bool
	// For a slice submitted to the writer: its sequence number (0 when
	// not submitted), the first slot of the submission running, and the
	// slot from which its commands were cut off, or -1 (see cut.go).
	seq           uint64
	from, cutFrom int
	finishFn      pipeline.FinishFunc // sc.finish, bound once
}

// minParallelReads is the smallest read-only slice split between two
// goroutines; below it, starting one costs more than it saves.
const minParallelReads = 256

// view runs the n commands of a read-only slice through v, the second half
// on another goroutine when the slice is large and there is a second CPU.
// A ViewHinter is told the keys each command reads.
func (sc *sliceScratch) view(ctx context.Context, v Viewer, n int) error {
	vh, hinted := v.(ViewHinter)
	var hints [][][]byte
	if hinted {
		hints = sc.c.readHintsOf(sc)
	}
	// run views slots [from, to) through fns, sc.fns or sc.fns2.
	run := func(fns []TxnFunc, from, to int) error {
		if hinted {
			return vh.ViewHinted(ctx, fns[from:to], hints[from:to], sc.txErrs[from:to])
		}
		return v.View(ctx, fns[from:to], sc.txErrs[from:to])
	}
	if n < minParallelReads || runtime.GOMAXPROCS(0) < 2 {
		return run(sc.fns, 0, n)
	}
	h := n / 2
	var err2 error
	done := make(chan struct{})
	go func() {
		defer close(done)
		err2 = run(sc.fns2, h, n)
	}()
	err := run(sc.fns, 0, h)
	<-done
	if err == nil {
		err = err2
	}
	return err
}

// scratch returns working memory for a slice of n events.
func (c *Connector) scratch(n int) *sliceScratch {
	sc, _ := c.scratchPool.Get().(*sliceScratch)
	if sc == nil {
		sc = &sliceScratch{c: c, x: execer{c: c}, x2: execer{c: c}, cutFrom: -1}
		sc.finishFn = sc.finish
	}
	sc.grow(n)
	sc.cmds, sc.corrs, sc.errs, sc.results = sc.cmds[:n], sc.corrs[:n], sc.errs[:n], sc.results[:n]
	for j := len(sc.fns); j < n; j++ {
		sc.fns = append(sc.fns, sc.slot(j, &sc.x))
		sc.fns2 = append(sc.fns2, sc.slot(j, &sc.x2))
	}
	return sc
}

// grow makes room for a slice of n events. The room grows by doubling, up
// to the graph's usual largest slice, rather than to n: slices merged from
// queued ones vary in length, and growing to each new largest one
// reallocated everything many times over.
func (sc *sliceScratch) grow(n int) {
	if cap(sc.cmds) >= n {
		return
	}
	size := max(n, min(2*cap(sc.cmds), pipeline.DefaultMaxCoalesce))
	sc.cmds = make([]command, size)
	sc.corrs = make([]corrRef, size)
	sc.errs = make([]error, size)
	sc.results = make([]result, size)
	sc.idx = make([]int, 0, size)
	sc.txErrs = make([]error, size)
}

// slot returns the TxnFunc running the command of slot j with x.
func (sc *sliceScratch) slot(j int, x *execer) TxnFunc {
	return func(tx Txn) error {
		if sc.seq != 0 && x == &sc.x && sc.cutHere(j) {
			return errCut
		}
		i := sc.idx[j]
		NoteInput(tx, sc.cmds[i].input)
		x.begin(tx)
		x.startEvent()
		r, err := x.runIdem(&sc.cmds[i])
		sc.results[i] = r
		return err
	}
}

// release clears sc, so the pool holds no reference to events or results
// already handed on, and returns it to the pool.
func (c *Connector) release(sc *sliceScratch) {
	clear(sc.cmds)
	clear(sc.corrs)
	clear(sc.errs)
	clear(sc.results)
	clear(sc.txErrs[:len(sc.idx)])
	sc.idx = sc.idx[:0]
	sc.x.reset()
	sc.x2.reset()
	sc.x.ctx, sc.x2.ctx = nil, nil
	sc.events, sc.wait, sc.deferred = nil, nil, false
	sc.seq, sc.from, sc.cutFrom = 0, 0, -1
	c.scratchPool.Put(sc)
}

// readHintsOf returns, for a backend that takes read hints (ReadHinter,
// ViewHinter, HintedSubmitter), the keys each command of the slice will
// read, in the order of its TxnFuncs. They are built in sc's memory,
// reused from slice to slice, and stay valid until sc is released.
func (c *Connector) readHintsOf(sc *sliceScratch) [][][]byte {
	hints := slices.Grow(sc.hints[:0], len(sc.idx))
	keys, buf := sc.hintKeys[:0], sc.hintBuf[:0]
	for _, i := range sc.idx {
		from := len(keys)
		keys, buf = c.readHints(keys, buf, &sc.cmds[i])
		hints = append(hints, keys[from:len(keys):len(keys)])
	}
	// A slice that outgrew buf or keys points into the earlier arrays,
	// which stay valid; the next slice reuses the last ones.
	sc.hints, sc.hintKeys, sc.hintBuf = hints, keys, buf
	return hints
}

// readHints appends to dst the keys cmd reads by point lookups: its
// idempotency record and the key of every command that reads its key
// first. The keys' bytes are appended to buf, which is returned too.
func (c *Connector) readHints(dst [][]byte, buf []byte, cmd *command) ([][]byte, []byte) {
	if cmd.idem != "" {
		from := len(buf)
		buf = c.layout.idemKey(buf, cmd.idem)
		dst = append(dst, buf[from:len(buf):len(buf)])
	}
	switch cmd.op {
	case opGet, opExists, opSwap, opCas, opCad, opDelete, opIncrement, opExpiry, opTouch:
	case opPut:
		if !cmd.keepTTL {
			return dst, buf
		}
	case opBatch:
		for i := range cmd.sub {
			dst, buf = c.readHints(dst, buf, &cmd.sub[i])
		}
		return dst, buf
	default:
		return dst, buf
	}
	from := len(buf)
	buf = c.layout.dataKey(buf, cmd.key)
	return append(dst, buf[from:len(buf):len(buf)]), buf
}

// InvalidOp is the op reported to Options.OnCommands for events whose
// command could not be decoded.
const InvalidOp = "invalid"

// observe tallies the outcomes of one slice by op and reports each
// non-zero count once, so the hook costs a few calls per slice, not one
// per event.
func (c *Connector) observe(cmds []command, errs []error) {
	var tally [opLast + 1][2]int
	for i := range cmds {
		ok := 0
		if errs[i] == nil {
			ok = 1
		}
		tally[cmds[i].op][ok]++
	}
	for o := range tally {
		for ok, n := range tally[o] {
			if n == 0 {
				continue
			}
			name := op(o).String()
			if name == "" {
				name = InvalidOp
			}
			c.opts.OnCommands(c.opts.Namespace, name, ok == 1, n)
		}
	}
}

// corrRef is an event's meta.correlation as decodeEvent found it: raw
// (nil when absent) once known says the meta was a valid JSON object.
type corrRef struct {
	raw   []byte
	known bool
}

// get returns the correlation of ev, reading the meta when decodeEvent
// could not.
func (r corrRef) get(ev pipeline.Event) []byte {
	if r.known {
		return r.raw
	}
	return correlation(ev, false)
}

// decodeEvent reads the command of one event into *cmd and, in the same
// pass over the meta's fields, its correlation.
func (c *Connector) decodeEvent(ev pipeline.Event, cmd *command) (corrRef, error) {
	if corr, ok := c.decodeSimple(ev, cmd); ok {
		return corr, nil
	}
	var (
		corr corrRef
		err  error
	)
	*cmd, corr, err = c.decodeGeneral(ev)
	return corr, err
}

// decodeGeneral is decodeEvent for any meta: parsed, then checked field by
// field.
func (c *Connector) decodeGeneral(ev pipeline.Event) (command, corrRef, error) {
	meta := ev.MetaJSON()
	if !gjson.ValidBytes(meta) {
		return command{}, corrRef{}, fmt.Errorf("meta is not valid JSON: %w", ErrInvalidCommand)
	}
	// Strings read from meta (the key) alias the event's bytes, which
	// nobody modifies.
	m := gjson.Parse(bytesString(meta))
	if !m.IsObject() {
		return command{}, corrRef{}, fmt.Errorf("meta must be an object: %w", ErrInvalidCommand)
	}
	// The first "kv" and "correlation", as gjson's Get finds them.
	var kv gjson.Result
	corr := corrRef{known: true}
	seenKV, seenCorr := false, false
	m.ForEach(func(k, v gjson.Result) bool {
		switch {
		case !seenKV && k.Str == "kv":
			kv, seenKV = v, true
		case !seenCorr && k.Str == "correlation":
			corr.raw, seenCorr = viewOf(ev.Meta, v.Raw), true
		}
		return !seenKV || !seenCorr
	})
	cmd, err := c.dec.decode(kv, ev.Data, false)
	if err == nil && cmd.idem == "" && c.opts.IdemFrom != "" && cmd.op.writes() {
		err = c.idemFrom(&cmd, m)
	}
	if err == nil && c.opts.InputFrom != "" {
		err = c.inputFrom(&cmd, m)
	}
	if err == nil && c.result != nil {
		err = c.result.check(&cmd, ev)
	}
	return cmd, corr, err
}

// inputFrom gives cmd the input position found at Options.InputFrom in
// the event's meta; none is 0 (unknown).
func (c *Connector) inputFrom(cmd *command, meta gjson.Result) error {
	v := meta.Get(c.opts.InputFrom)
	if !v.Exists() {
		return nil
	}
	raw := v.Raw
	if v.Type == gjson.String {
		raw = v.Str
	}
	n, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || v.Type != gjson.String && v.Type != gjson.Number {
		return cmd.errf(ErrInvalidCommand, "meta.%s (the input position, option input_from) must be a non-negative integer, got %s",
			c.opts.InputFrom, jsonType(v))
	}
	cmd.input = n
	return nil
}

// viewOf returns raw, a substring of the string viewing meta, as a slice
// of meta (capacity capped, so appending copies), or a copy when it is not
// one.
func viewOf(meta []byte, raw string) []byte {
	if len(raw) > 0 && len(raw) <= len(meta) {
		off := uintptr(unsafe.Pointer(unsafe.StringData(raw))) - uintptr(unsafe.Pointer(unsafe.SliceData(meta)))
		if off <= uintptr(len(meta)-len(raw)) {
			return meta[off : int(off)+len(raw) : int(off)+len(raw)]
		}
	}
	return []byte(raw)
}

// idemFrom gives cmd the idempotency key found at Options.IdemFrom in the
// event's meta. A write without one is refused: the flow asked for
// exactly-once effects, and applying it unguarded would quietly break that.
func (c *Connector) idemFrom(cmd *command, meta gjson.Result) error {
	what := "meta." + c.opts.IdemFrom
	v := meta.Get(c.opts.IdemFrom)
	switch {
	case !v.Exists():
		return cmd.errf(ErrInvalidCommand, "%s (the idempotency key, option idem_from) is missing", what)
	case v.Type != gjson.String:
		return cmd.errf(ErrInvalidCommand, "%s (the idempotency key, option idem_from) must be a string, got %s", what, jsonType(v))
	}
	return c.dec.setIdem(cmd, v, what)
}

// correlation returns the raw meta.correlation of ev, nil when absent.
// valid says ev.Meta is known to be valid JSON (its command decoded).
func correlation(ev pipeline.Event, valid bool) []byte {
	if len(ev.Meta) == 0 || !valid && !gjson.ValidBytes(ev.Meta) {
		return nil
	}
	r := gjson.Get(bytesString(ev.Meta), "correlation")
	if !r.Exists() {
		return nil
	}
	if r.Index > 0 && r.Index+len(r.Raw) <= len(ev.Meta) {
		return ev.Meta[r.Index : r.Index+len(r.Raw) : r.Index+len(r.Raw)]
	}
	return []byte(r.Raw)
}

func asCmdError(err error, target **cmdError) bool { return errors.As(err, target) }

// emit sends the outcome of one command, its meta built in metas.
func (c *Connector) emit(emit pipeline.Emitter, metas *resultArena, ev pipeline.Event, cmd *command, r *result, cr corrRef, err error) {
	corr := cr.get(ev)
	if err != nil {
		if c.opts.AbandonFailedCommits && ev.Redeliverable() && errors.Is(err, ErrCommit) {
			pipeline.Abandon(ev)
			return
		}
		emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, errMeta(cmd, corr, err)))
		return
	}
	if c.result != nil {
		c.emitResult(emit, ev, cmd, r)
		return
	}
	if cmd.op == opScan {
		for i, rw := range r.rows {
			meta := openMeta(metas.alloc(metaSize(rw.key, corr)), cmd.op, rw.key, true)
			if i == len(r.rows)-1 {
				meta = append(meta, `,"last":true`...)
			}
			emit.Emit(pipeline.PortOut, ev.Derive(rw.value, metas.shrink(closeMeta(meta, corr))))
		}
		return
	}
	meta := metas.alloc(metaSize(cmd.key, corr) + len(r.next))
	if cmd.op == opBatch {
		meta = append(meta, `{"kv":{"op":"batch","found":true`...)
	} else {
		meta = openMeta(meta, cmd.op, cmd.key, r.found)
	}
	if r.next != nil {
		meta = append(meta, `,"next":`...)
		meta = append(meta, r.next...)
	}
	if r.replayed {
		meta = append(meta, `,"replayed":true`...)
	}
	emit.Emit(pipeline.PortOut, ev.Derive(r.data, metas.shrink(closeMeta(meta, corr))))
}

// metaSize is room for an out meta of key and corr, so that building it
// allocates once (keys needing escapes may still grow it).
func metaSize(key string, corr []byte) int {
	return len(`{"kv":{"op":"get_all","key":"","found":false,"last":true,"next":},"correlation":}`) + len(key) + len(corr)
}

// openMeta starts an out meta: {"kv":{"op":..,"key":..,"found":..
func openMeta(dst []byte, o op, key string, found bool) []byte {
	dst = append(dst, `{"kv":{"op":"`...)
	dst = append(dst, o.String()...)
	dst = append(dst, `","key":`...)
	dst = appendString(dst, key)
	if found {
		return append(dst, `,"found":true`...)
	}
	return append(dst, `,"found":false`...)
}

// closeMeta ends the kv object and appends the correlation.
func closeMeta(dst, corr []byte) []byte {
	dst = append(dst, '}')
	if corr != nil {
		dst = append(dst, `,"correlation":`...)
		dst = append(dst, corr...)
	}
	return append(dst, '}')
}

// errMeta builds {"error":..,"kv":{"op":..,"key":..},"correlation":..}.
func errMeta(cmd *command, corr []byte, err error) []byte {
	dst := append([]byte(nil), `{"error":`...)
	dst = appendString(dst, err.Error())
	if cmd.op != opNone {
		dst = append(dst, `,"kv":{"op":"`...)
		dst = append(dst, cmd.op.String()...)
		dst = append(dst, '"')
		if cmd.hasKey && cmd.op != opBatch {
			dst = append(dst, `,"key":`...)
			dst = appendString(dst, cmd.key)
		}
		var ce *cmdError
		if errors.As(err, &ce) {
			if cmd.op == opBatch {
				dst = append(dst, `,"index":`...)
				dst = fmt.Appendf(dst, "%d", ce.index)
			}
			if ce.hasCurrent {
				dst = append(dst, `,"current":`...)
				dst = append(dst, ce.current...)
			}
		}
		dst = append(dst, '}')
	}
	if corr != nil {
		dst = append(dst, `,"correlation":`...)
		dst = append(dst, corr...)
	}
	return append(dst, '}')
}

// reclaimChunk bounds the expiry index entries handled per transaction, so
// the janitor never holds the writer for long. A backend that limits the
// writes of a transaction (TxnLimiter) gets smaller chunks: each entry
// costs up to two deletions, the record's and its own.
const reclaimChunk = 1000

// reclaimChunkFor returns the expiry index entries one reclaim
// transaction on b may handle.
func reclaimChunkFor(b Backend) int {
	if l, ok := b.(TxnLimiter); ok && l.MaxTxnWrites() > 0 {
		return max(1, min(reclaimChunk, l.MaxTxnWrites()/2))
	}
	return reclaimChunk
}

// expiryIndex is one kind of record reclaimed by expiry: the prefix of its
// index and the key of the record an index entry stands for.
type expiryIndex struct {
	prefix []byte
	record func(key []byte) []byte
}

// Reclaim deletes the records of this namespace that expired at or before
// the connector's clock's now (keys and idempotency records), with their
// expiry index entries, and returns how many records it deleted. The
// janitor calls it every Options.ReclaimInterval; expired records are
// invisible to commands whether or not they have been reclaimed.
func (c *Connector) Reclaim(ctx context.Context) (int, error) {
	return c.reclaimAll(ctx, c.opts.OnExpired)
}

// reclaimAll is Reclaim reporting expired keys (not idempotency records)
// to report when it is not nil.
func (c *Connector) reclaimAll(ctx context.Context, report func(context.Context, []ExpiredKey) error) (int, error) {
	indexes := []expiryIndex{
		{c.layout.expiry, func(k []byte) []byte { return c.layout.dataKey(nil, string(k)) }},
		{c.layout.idemExpiry, func(k []byte) []byte { return c.layout.idemKey(nil, string(k)) }},
	}
	total := 0
	for i, ix := range indexes {
		var (
			n   int
			err error
		)
		if i == 0 && report != nil {
			n, err = c.reclaimReporting(ctx, ix, report)
		} else {
			n, err = c.reclaim(ctx, ix)
		}
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// reclaim empties one expiry index up to now, reclaimChunk entries per
// transaction. Each transaction resumes after the last entry the one
// before handled, rather than at the start of the index: the entries
// deleted so far stay in the store as tombstones until a compaction, and
// scanning over them again makes each transaction slower than the last.
// Reclaiming 300,000 expired keys on Pebble (loaded two-core machine):
// from the start each time, 11.5 s, transactions of 17 ms median and
// 50 ms at the 90th percentile; resuming, 3.5 s, 3 ms and 10-16 ms. An
// entry written during the pass with an expiry already behind the resume
// point is left for the next pass.
func (c *Connector) reclaim(ctx context.Context, ix expiryIndex) (int, error) {
	total := 0
	chunk := reclaimChunkFor(c.b)
	from := ix.prefix
	for {
		n, more := 0, false
		var last []byte
		fn := func(tx Txn) error {
			n, more, last = 0, false, nil
			now := c.opts.Now().UnixMilli()
			end := appendIndexKey(nil, ix.prefix, now+1, nil) // entries with expireAt <= now
			if bytes.Compare(from, end) >= 0 {
				return nil
			}
			var idx [][]byte
			err := tx.Scan(from, end, func(k, _ []byte, _ int64) (bool, error) {
				if len(idx) == chunk {
					more = true
					return false, nil
				}
				idx = append(idx, append([]byte(nil), k...))
				return true, nil
			})
			if err != nil {
				return err
			}
			for _, ik := range idx {
				exp, key, ok := parseIndexKey(ix.prefix, ik)
				if ok {
					rk := ix.record(key)
					_, stored, found, err := tx.Get(rk)
					if err != nil {
						return err
					}
					// Only a record still carrying this expiry is expired;
					// one rewritten since has its own index entry.
					if found && stored == exp {
						if err := tx.Delete(rk); err != nil {
							return err
						}
						n++
					}
				}
				if err := tx.Delete(ik); err != nil {
					return err
				}
			}
			if len(idx) > 0 {
				last = idx[len(idx)-1]
			}
			return nil
		}
		errs := make([]error, 1)
		if err := c.b.Update(ctx, []TxnFunc{fn}, errs); err != nil {
			return total, fmt.Errorf("reclaim namespace %q: %w", c.opts.Namespace, err)
		}
		if errs[0] != nil {
			return total, fmt.Errorf("reclaim namespace %q: %w", c.opts.Namespace, errs[0])
		}
		total += n
		if last != nil {
			from = append(last, 0) // the first key after it
		}
		if !more || ctx.Err() != nil {
			return total, ctx.Err()
		}
	}
}

func (c *Connector) runJanitor(ctx context.Context) {
	defer c.janitor.Done()
	t := time.NewTicker(c.opts.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := c.Reclaim(ctx); err != nil && ctx.Err() == nil {
				c.opts.Logger.Error("kv: reclaiming expired keys failed", "namespace", c.opts.Namespace, "error", err)
			}
		}
	}
}
