// Package lua implements the lua processor: a sandboxed Lua 5.1 script
// (github.com/yuin/gopher-lua, a pure-Go VM) run once per event, with a kv
// table bound to a kv connector's namespace.
//
// Each event's script run is one kv.Connector.Run function, so the kv
// writes it makes are atomic, and its emitted events are held back until
// the commit succeeds: writes and outputs of an event take effect together
// or not at all. A slice of events is one Run (one commit group).
package lua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/sjson"
	glua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/pipeline"
)

// Errors reported by New and on the err port.
var (
	// ErrScript reports a script that does not compile, or raised an error
	// while handling an event (the message holds the chunk name and line).
	ErrScript = errors.New("lua script error")
	// ErrLimit reports a script stopped by a limit: Timeout, MaxMemory
	// (during one run, or for the state kept across events),
	// MaxCallDepth, MaxStackSlots or MaxStringBytes. The message names
	// the option as the flow file spells it ("(timeout)", "(max_memory)").
	ErrLimit = errors.New("lua limit exceeded")
	// ErrMemoryLimit reports a script stopped by MaxMemory; it comes
	// wrapped together with ErrLimit.
	ErrMemoryLimit = errors.New("memory limit")
	// ErrInvalidOption reports a malformed option (bad port name, no script).
	ErrInvalidOption = errors.New("invalid option")
)

// Defaults for Options.
const (
	DefaultTimeout        = 5 * time.Second
	DefaultMaxMemory      = 64 << 20
	DefaultMaxCallDepth   = 200
	DefaultMaxStackSlots  = 256 * 1024
	DefaultMaxStringBytes = 4 << 20
)

// Options configure a Processor.
type Options struct {
	// Script is the Lua source run once per event. Required.
	Script string
	// Name names the chunk in error messages ("rules.lua:12: ..."). Default
	// "script".
	Name string
	// Store is the kv connector the script's kv table works on, in its
	// namespace and with its limits. Nil: every kv function raises an
	// error. The Processor does not own it: the caller closes it after
	// closing the Processor.
	Store *kv.Connector
	// Ports are the output ports emit may use besides "out" and "err".
	Ports []string
	// Timeout bounds the run of the script for one event, in wall-clock
	// time including its kv reads, so it must leave room for a loaded
	// machine. Default 5s.
	Timeout time.Duration
	// MaxMemory bounds how much the process heap may grow while the script
	// runs for one event, and the estimated size of the state the script
	// keeps across events (see memory.go). The first is checked by a
	// watchdog only once a run has lasted a few milliseconds, then every
	// few milliseconds, and measures the whole process (see the watchdog),
	// so it stops runaway scripts rather than accounting for small ones.
	// Default 64 MiB.
	MaxMemory int64
	// MaxCallDepth bounds the Lua call stack (recursion). Default 200.
	MaxCallDepth int
	// MaxStackSlots bounds the Lua value stack (registry), the VM's memory
	// for locals and temporaries. Default 262144 slots.
	MaxStackSlots int
	// MaxStringBytes bounds a string built by one library call (string.rep,
	// gsub, format, table.concat, ...; see stdlib.go), a value converted
	// to JSON for kv or emit, and the total size of one event's outputs.
	// Default 4 MiB.
	MaxStringBytes int
	// Now is the clock of os.time and os.date. Default time.Now.
	Now func() time.Time
	// Logger receives log.* calls. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills unset (zero or negative) fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "script"
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.MaxCallDepth <= 0 {
		o.MaxCallDepth = DefaultMaxCallDepth
	}
	if o.MaxStackSlots <= 0 {
		o.MaxStackSlots = DefaultMaxStackSlots
	}
	if o.MaxStringBytes <= 0 {
		o.MaxStringBytes = DefaultMaxStringBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Processor runs a Lua script on each event. It implements
// pipeline.Processor and pipeline.Closer; Process calls are serialised (one
// Lua VM).
type Processor struct {
	opts  Options
	proto *glua.FunctionProto
	ports map[string]bool

	mu   sync.Mutex
	vm   *vm // nil until first use or after a failed run
	dog  *watchdog
	outs [][]output // per-slice scratch, reused
	logs []runLogs
	errs []error
	fns  []func(*kv.Session) error
	// outBuf holds the outputs of the slice's events (each event's outs is
	// a slice of it), arena the bytes of their data and meta: a few
	// allocations per slice instead of several per event. outBuf is reused;
	// arena is handed over with the emitted events, so each slice starts a
	// new one.
	outBuf []output
	arena  []byte
	// Commit groups of a slice, see runGroups.
	deferOn  bool
	runStart int // the slice index of the current Run's first event
}

var (
	_ pipeline.Processor = (*Processor)(nil)
	_ pipeline.Closer    = (*Processor)(nil)
)

// New compiles opts.Script and returns a Processor. A syntax error is
// reported here, wrapped in ErrScript, before any event flows.
func New(opts Options) (*Processor, error) {
	opts.EnsureDefaults()
	proto, err := compileScript(&opts)
	if err != nil {
		return nil, err
	}
	p := &Processor{opts: opts, proto: proto, ports: map[string]bool{pipeline.PortOut: true, pipeline.PortErr: true}}
	for _, port := range opts.Ports {
		p.ports[port] = true
	}
	p.dog = newWatchdog(opts.Timeout, opts.MaxMemory)
	return p, nil
}

// Check reports what New would refuse in opts (no script, a malformed
// port name, a script that does not compile) without creating anything:
// flowrun validate runs it.
func Check(opts Options) error {
	opts.EnsureDefaults()
	_, err := compileScript(&opts)
	return err
}

// compileScript checks opts, whose defaults are filled, and compiles the script.
func compileScript(opts *Options) (*glua.FunctionProto, error) {
	if strings.TrimSpace(opts.Script) == "" {
		return nil, fmt.Errorf("lua: %w: a script is required", ErrInvalidOption)
	}
	for _, port := range opts.Ports {
		if port == "" || strings.ContainsAny(port, " \t.,") {
			return nil, fmt.Errorf("lua: %w: port %q is not a valid name", ErrInvalidOption, port)
		}
	}
	chunk, err := parse.Parse(strings.NewReader(opts.Script), opts.Name)
	if err != nil {
		return nil, fmt.Errorf("lua: %w: %w", ErrScript, err)
	}
	proto, err := glua.Compile(chunk, opts.Name)
	if err != nil {
		return nil, fmt.Errorf("lua: %w: %w", ErrScript, err)
	}
	// The main chunk is a vararg function that, for Lua 5.0 compatibility,
	// gets a fresh `arg` table (with a 32-slot map) on every call. Scripts
	// receive no arguments, so the table is pure per-event garbage.
	proto.IsVarArg &^= glua.VarArgNeedsArg
	return proto, nil
}

// Ports returns the output ports: "out", "err" and Options.Ports.
func (p *Processor) Ports() []string {
	return append([]string{pipeline.PortOut, pipeline.PortErr}, p.opts.Ports...)
}

// Close releases the VM and stops the watchdog. It does not close Store.
func (p *Processor) Close(context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropVM()
	p.dog.stop()
	return nil
}

// dropVM discards the VM, so no state of a half-run script survives.
func (p *Processor) dropVM() {
	if p.vm != nil {
		p.vm.close()
		p.vm = nil
	}
}

// output is an event emitted by a script, held until its writes commit.
type output struct {
	port string
	ev   pipeline.Event
}

// Process runs the script once per event of the slice, all in one kv
// Connector.Run, then emits each event's outputs in input order, or the
// event on "err" with meta.error when its script failed or the commit did.
func (p *Processor) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	defer p.endSlice()
	n := len(events)
	p.outs = resize(p.outs, n)
	p.logs = resize(p.logs, n)
	p.errs = resize(p.errs, n)
	p.fns = resize(p.fns, n)
	outs, logs, errs, fns := p.outs, p.logs, p.errs, p.fns
	for i, ev := range events {
		// Run may call fn more than once (optimistic execution): each call
		// replaces the outputs and log lines of the one before, so only
		// the run whose writes count is emitted and logged.
		fns[i] = func(s *kv.Session) error {
			if s.InWriter() && p.deferRest(s, i) {
				outs[i], logs[i] = nil, runLogs{}
				return kv.ErrDeferred
			}
			o, lg, err := p.runOne(ctx, s, ev)
			outs[i], logs[i] = o, lg
			return err
		}
	}
	if p.opts.Store != nil {
		p.runGroups(ctx, fns, errs)
	} else {
		for i, fn := range fns {
			errs[i] = fn(nil)
		}
	}
	for i, ev := range events {
		p.writeLogs(ctx, logs[i])
		if errs[i] != nil {
			meta, _ := sjson.SetBytes(append([]byte(nil), ev.MetaJSON()...), "error", errs[i].Error())
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, meta))
			continue
		}
		for _, o := range outs[i] {
			emit.Emit(o.port, o.ev)
		}
	}
	clear(outs)
	clear(logs)
	clear(errs)
	clear(fns)
	clear(p.outBuf)
	p.outBuf, p.arena = p.outBuf[:0], nil
	return nil
}

// runGroups runs fns, the scripts of a slice, in one Store.Run, or in
// several when the store's writer runs them: once the scripts of one Run
// have held the writer for Timeout, the rest of the slice goes to the next
// Run, so that the commands of other connectors on the store, queued
// meanwhile, wait for about two Timeouts at most (the writer may commit
// them in one group with the slice's next part) instead of a whole slice
// of slow scripts. Events keep their order: a
// deferred event's script runs after every earlier event's writes are
// committed.
func (p *Processor) runGroups(ctx context.Context, fns []func(*kv.Session) error, errs []error) {
	// Only the time scripts spend in the writer counts (Session.InWriter):
	// with optimistic execution, runs in the caller's goroutine hold
	// nothing, and once a script defers in the writer, kv defers every
	// later function, optimistic results included, so order holds.
	p.deferOn = true
	defer func() { p.deferOn = false }()
	for start := 0; start < len(fns); {
		p.runStart = start
		runErrs, err := p.opts.Store.Run(ctx, fns[start:])
		if err != nil {
			for i := start; i < len(fns); i++ {
				errs[i] = err
			}
			return
		}
		next := len(fns)
		for i, e := range runErrs {
			if errors.Is(e, kv.ErrDeferred) {
				next = start + i
				break
			}
			errs[start+i] = e
		}
		if next < len(fns) {
			// Let the commands queued behind this part go first: an
			// empty Run joins the writer's queue after them and returns
			// once they are committed. Without it the writer may build
			// them into one commit group with the next part, and they
			// would wait for that part's scripts too.
			if _, err := p.opts.Store.Run(ctx, []func(*kv.Session) error{func(*kv.Session) error { return nil }}); err != nil {
				for i := next; i < len(fns); i++ {
					errs[i] = err
				}
				return
			}
		}
		start = next
	}
}

// deferRest reports, in the writer, whether the event i about to run, and
// every one after it in the Run (kv defers them, see kv.ErrDeferred), is
// deferred to the next Run: the Run's first event always runs, and the
// others only while the Run has held the writer for less than Timeout
// (see runGroups).
func (p *Processor) deferRest(s *kv.Session, i int) bool {
	return p.deferOn && i != p.runStart && s.WriterHeld() >= p.opts.Timeout
}

// resize returns s with length n, reusing its array when large enough.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// writeLogs writes the log lines of an event's run to the logger.
func (p *Processor) writeLogs(ctx context.Context, lg runLogs) {
	if len(lg.lines) == 0 && lg.dropped == 0 {
		return
	}
	l := p.opts.Logger.With("script", p.opts.Name)
	for _, line := range lg.lines {
		l.Log(ctx, line.level, line.msg)
	}
	if lg.dropped > 0 {
		l.Warn(fmt.Sprintf("%d log lines of this event dropped: the event's log lines total over %d bytes", lg.dropped, p.opts.MaxStringBytes))
	}
}

// runOne runs the script for one event with session s (nil without a
// store). A failed run discards the VM, so no state of a half-run script
// survives into the next event.
func (p *Processor) runOne(ctx context.Context, s *kv.Session, ev pipeline.Event) ([]output, runLogs, error) {
	if p.vm == nil {
		v, err := p.newVM()
		if err != nil {
			return nil, runLogs{}, err
		}
		p.vm = v
	}
	v := p.vm
	if v.ctx == nil {
		// One cancellable context per slice (the slice context): the
		// watchdog cancels it to stop a run, after which the VM is
		// discarded with it.
		v.ctx, v.cancel = context.WithCancelCause(ctx)
		v.L.SetContext(v.ctx)
	}
	outs, lg, err := v.run(ctx, s, ev)
	switch {
	case err != nil:
		p.dropVM()
	case v.ctx.Err() != nil:
		// The watchdog fired as the script finished: the run counts, but
		// the next one needs a live context.
		p.endSlice()
	}
	return outs, lg, err
}

// endSlice releases the slice context of the VM.
func (p *Processor) endSlice() {
	if v := p.vm; v != nil && v.ctx != nil {
		v.L.RemoveContext()
		v.cancel(nil)
		v.ctx, v.cancel = nil, nil
	}
}
