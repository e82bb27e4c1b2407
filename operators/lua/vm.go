package lua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
	glua "github.com/yuin/gopher-lua"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/internal/suggest"
	"github.com/flowrun/flowrun/operators/lua/internal/luapattern"
	"github.com/flowrun/flowrun/pipeline"
)

// vm is one sandboxed Lua state with the per-event bindings.
type vm struct {
	p    *Processor
	L    *glua.LState
	null *glua.LUserData // json.null
	fn   *glua.LFunction // the compiled script, made once per VM

	// The slice context: the context of the script runs of the current
	// slice of events, cancelled by the watchdog to stop a run; nil
	// between slices.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// Set for the duration of one run.
	sess  *kv.Session
	ev    pipeline.Event
	bytes int // total size of outs
	limit error

	// event is the table of the event global, refilled for each run:
	// data and meta are built from the event's JSON on first access
	// (eventIndex); dataSet and metaSet say they were built or assigned.
	event, eventMT   *glua.LTable
	dataSet, metaSet bool

	scratch  []entry        // table members being encoded, see appendTable
	results  []gjson.Result // JSON members being converted, see fromResult
	jsonBase int            // where the value toJSON is encoding starts in dst
	rawLen   int            // length of the JSON fromJSON is converting
	tmp      []byte         // encoding of a kv value, copied by the Session

	matcher luapattern.Matcher // pattern matching of the string library
	mem     memState           // see memory.go

	// The log lines of the current run (see logFn).
	logs       []logLine
	logBytes   int
	logDropped int
}

// newVM opens a state with only the safe libraries and the flowrun
// bindings.
func (p *Processor) newVM() (*vm, error) {
	L := glua.NewState(glua.Options{
		SkipOpenLibs:    true,
		CallStackSize:   p.opts.MaxCallDepth,
		RegistrySize:    1024,
		RegistryMaxSize: p.opts.MaxStackSlots,
	})
	v := &vm{p: p, L: L}
	for _, lib := range []struct {
		name string
		fn   glua.LGFunction
	}{{glua.BaseLibName, glua.OpenBase}, {glua.TabLibName, glua.OpenTable}, {glua.StringLibName, glua.OpenString}, {glua.MathLibName, glua.OpenMath}, {glua.OsLibName, glua.OpenOs}} {
		if err := L.CallByParam(glua.P{Fn: L.NewFunction(lib.fn), NRet: 0, Protect: true}, glua.LString(lib.name)); err != nil {
			L.Close()
			return nil, fmt.Errorf("lua: opening %s: %w", lib.name, err)
		}
	}
	g := L.G.Global
	// No access to files or other chunks: scripts are self-contained.
	for _, name := range []string{"dofile", "loadfile", "load", "loadstring", "require", "module", "collectgarbage", "getfenv", "setfenv", "newproxy", "_printregs"} {
		g.RawSetString(name, glua.LNil)
	}
	v.sandboxOS()
	v.sandboxLibs()
	v.null = L.NewUserData()
	json := L.NewTable()
	json.RawSetString("null", v.null)
	L.SetGlobal("json", json)
	L.SetGlobal("emit", L.NewFunction(v.emit))
	v.newEventTable()
	logT := L.NewTable()
	for _, lv := range []struct {
		name  string
		level slog.Level
	}{{"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warn", slog.LevelWarn}, {"error", slog.LevelError}} {
		logT.RawSetString(lv.name, L.NewFunction(v.logFn(lv.level)))
	}
	L.SetGlobal("log", logT)
	L.SetGlobal("print", logT.RawGetString("info"))
	L.SetGlobal("kv", v.kvTable())
	for _, name := range []string{"kv", "log", "json", "os", "string", "table", "math"} {
		if t, ok := L.GetGlobal(name).(*glua.LTable); ok {
			namedMissing(L, name, t)
		}
	}
	v.fn = L.NewFunctionFromProto(p.proto)
	v.initMem()
	return v, nil
}

// namedMissing makes reading a field that library table t (the global
// name) does not have an error naming it and listing what t has, instead
// of a nil that fails later as "attempt to call a non-function object":
// kv.incr('n') raises "kv.incr does not exist (kv has: batch, cas, ...)".
func namedMissing(L *glua.LState, name string, t *glua.LTable) {
	var fields []string
	t.ForEach(func(k, _ glua.LValue) {
		if s, ok := k.(glua.LString); ok {
			fields = append(fields, string(s))
		}
	})
	sort.Strings(fields)
	has := strings.Join(fields, ", ")
	mt := L.NewTable()
	mt.RawSetString("__index", L.NewFunction(func(L *glua.LState) int {
		key := L.ToStringMeta(L.Get(2)).String()
		hint := suggest.DidYouMean(key, fields)
		for _, f := range fields {
			if hint == "" && key != "" && (strings.HasPrefix(f, key) || strings.HasPrefix(key, f)) {
				hint = fmt.Sprintf(" (did you mean %q?)", f) // incr: increment
			}
		}
		L.RaiseError("%s.%s does not exist%s (%s has: %s)", name, key, hint, name, has)
		return 0
	}))
	L.SetMetatable(t, mt)
}

// close releases the state and the slice context.
func (v *vm) close() {
	if v.cancel != nil {
		v.cancel(nil)
	}
	v.L.Close()
}

// sandboxOS keeps only os.time, os.date and os.clock, reading the
// injectable clock.
func (v *vm) sandboxOS() {
	L := v.L
	orig := L.GetGlobal("os").(*glua.LTable)
	origTime, origDate, origClock := orig.RawGetString("time"), orig.RawGetString("date"), orig.RawGetString("clock")
	now := v.p.opts.Now
	os := L.NewTable()
	os.RawSetString("clock", origClock)
	os.RawSetString("time", L.NewFunction(func(L *glua.LState) int {
		if L.GetTop() == 0 || L.Get(1) == glua.LNil {
			L.Push(glua.LNumber(now().Unix()))
			return 1
		}
		L.Push(origTime)
		L.Push(L.Get(1))
		L.Call(1, 1)
		return 1
	}))
	os.RawSetString("date", L.NewFunction(func(L *glua.LState) int {
		f := L.OptString(1, "%c")
		// A conversion writes at most 32 bytes.
		v.produce(L, "os.date", 32*len(f))
		t := L.Get(2)
		if t == glua.LNil {
			t = glua.LNumber(now().Unix())
		}
		L.Push(origDate)
		L.Push(glua.LString(f))
		L.Push(t)
		L.Call(2, 1)
		return 1
	}))
	L.SetGlobal("os", os)
}

// run executes the script for ev. It returns the events the script
// emitted, or the error it raised, and in both cases its log lines.
func (v *vm) run(ctx context.Context, s *kv.Session, ev pipeline.Event) ([]output, runLogs, error) {
	outs, err := v.exec(ctx, s, ev)
	lg := runLogs{lines: v.logs, dropped: v.logDropped}
	v.logs, v.logBytes, v.logDropped = nil, 0, 0
	return outs, lg, err
}

// runLogs are the log lines of one run.
type runLogs struct {
	lines   []logLine
	dropped int
}

func (v *vm) exec(ctx context.Context, s *kv.Session, ev pipeline.Event) ([]output, error) {
	L := v.L
	p := v.p
	v.sess, v.ev, v.bytes, v.limit = s, ev, 0, nil
	v.logs, v.logBytes, v.logDropped = nil, 0, 0
	defer func() { v.sess = nil }()
	// Outputs and their bytes go to the slice's buffers; a failed run
	// takes its own back out.
	outStart, arenaStart := len(p.outBuf), len(p.arena)
	ok := false
	defer func() {
		if !ok {
			p.outBuf, p.arena = p.outBuf[:outStart], p.arena[:arenaStart]
		}
	}()
	v.resetEvent()
	L.SetGlobal("event", v.event)

	v.p.dog.begin(v.cancel)
	L.Push(v.fn)
	err := L.PCall(0, 0, nil)
	v.p.dog.end()
	if err == nil {
		if err := v.checkState(); err != nil {
			return nil, err
		}
		ok = true
		return p.outBuf[outStart:len(p.outBuf):len(p.outBuf)], nil
	}
	if v.limit != nil {
		return nil, v.limit
	}
	if v.ctx.Err() != nil && ctx.Err() == nil {
		return nil, context.Cause(v.ctx)
	}
	msg := err.Error()
	var ae *glua.ApiError
	if errors.As(err, &ae) && ae.Object != nil {
		msg = ae.Object.String()
	}
	if strings.Contains(msg, "stack overflow") || strings.Contains(msg, "registry overflow") {
		return nil, fmt.Errorf("%w: %s (max_call_depth %d, max_stack_slots %d)", ErrLimit, msg, v.p.opts.MaxCallDepth, v.p.opts.MaxStackSlots)
	}
	return nil, fmt.Errorf("%w: %s", ErrScript, msg)
}

// newEventTable makes the event table with its lazy fields.
func (v *vm) newEventTable() {
	L := v.L
	v.event = L.CreateTable(0, 2)
	v.eventMT = L.CreateTable(0, 2)
	v.eventMT.RawSetString("__index", L.NewFunction(v.eventIndex))
	v.eventMT.RawSetString("__newindex", L.NewFunction(v.eventNewIndex))
	L.SetMetatable(v.event, v.eventMT)
}

// resetEvent empties the event table for the next event. A script that
// added fields of its own to it, or changed its metatable, gets a new
// table, so nothing leaks into the next event.
func (v *vm) resetEvent() {
	v.event.RawSetString("data", glua.LNil)
	v.event.RawSetString("meta", glua.LNil)
	v.dataSet, v.metaSet = false, false
	if k, _ := v.event.Next(glua.LNil); k != glua.LNil || v.event.Metatable != v.eventMT {
		v.newEventTable()
	}
}

// eventIndex builds event.data or event.meta on first access.
func (v *vm) eventIndex(L *glua.LState) int {
	t := L.CheckTable(1)
	key, _ := L.Get(2).(glua.LString)
	var raw []byte
	switch {
	case key == "data" && !v.dataSet:
		v.dataSet, raw = true, v.ev.DataJSON()
	case key == "meta" && !v.metaSet:
		v.metaSet, raw = true, v.ev.Meta
	default:
		L.Push(glua.LNil)
		return 1
	}
	var lv glua.LValue = L.CreateTable(0, 0) // empty meta
	if len(raw) > 0 {
		var err error
		if lv, err = v.fromJSON(raw); err != nil {
			L.RaiseError("event.%s: %s", string(key), err.Error())
		}
		if lv == v.null {
			lv = glua.LNil
		}
	}
	t.RawSetString(string(key), lv)
	L.Push(lv)
	return 1
}

// eventNewIndex records an assignment to event.data or event.meta before
// their first read, so that they are not built from the event afterwards.
func (v *vm) eventNewIndex(L *glua.LState) int {
	t := L.CheckTable(1)
	switch L.Get(2) {
	case glua.LString("data"):
		v.dataSet = true
	case glua.LString("meta"):
		v.metaSet = true
	}
	t.RawSet(L.CheckAny(2), L.Get(3))
	return 0
}

// emit implements emit(port [, data [, meta]]): data and meta default to
// event.data and event.meta as the script left them.
func (v *vm) emit(L *glua.LState) int {
	port := L.CheckString(1)
	if !v.p.ports[port] {
		L.RaiseError("emit: unknown port %q (ports: %s; declare it in the flow with `ports: [%s]`)", port, strings.Join(v.p.Ports(), ", "), port)
	}
	data, meta := L.Get(2), L.Get(3)
	// Without data or meta, the event's own: its original bytes when the
	// script never touched them, or what it left in event.
	var d, m []byte
	passData, passMeta := false, false
	event, _ := L.GetGlobal("event").(*glua.LTable)
	if data == glua.LNil && event != nil {
		data = event.RawGetString("data")
		passData = data == glua.LNil && event == v.event && !v.dataSet
	}
	if meta == glua.LNil && event != nil {
		meta = event.RawGetString("meta")
		passMeta = meta == glua.LNil && event == v.event && !v.metaSet
	}
	if passData {
		d = v.ev.DataJSON()
	} else {
		start := len(v.p.arena)
		buf, err := v.toJSON(v.p.arena, data)
		if err != nil {
			L.RaiseError("emit: data: %s", err.Error())
		}
		v.p.arena = buf
		d = buf[start:len(buf):len(buf)]
	}
	if passMeta {
		m = v.ev.Meta
	} else if meta != glua.LNil {
		if _, ok := meta.(*glua.LTable); !ok {
			L.RaiseError("emit: meta must be a table, got %s", meta.Type())
		}
		start := len(v.p.arena)
		buf, err := v.toJSON(v.p.arena, meta)
		if err != nil {
			L.RaiseError("emit: meta: %s", err.Error())
		}
		if string(buf[start:]) == "[]" {
			buf = append(buf[:start], "{}"...)
		}
		v.p.arena = buf
		m = buf[start:len(buf):len(buf)]
	}
	v.bytes += len(d) + len(m)
	if v.bytes > v.p.opts.MaxStringBytes {
		v.limit = fmt.Errorf("%w: the event's outputs total %d bytes, limit is %d", ErrLimit, v.bytes, v.p.opts.MaxStringBytes)
		L.RaiseError("%s", v.limit.Error())
	}
	v.p.outBuf = append(v.p.outBuf, output{port: port, ev: v.ev.Derive(d, m)})
	return 0
}

// logLine is a log.* call held until the run that made it is known to
// count (see Processor.Process).
type logLine struct {
	level slog.Level
	msg   string
}

// logFn returns log.<level>. Lines are buffered for the run and written
// once its event is done: a run discarded and made again (optimistic
// execution, see kv.Connector.Run) leaves no lines behind. A run keeps at
// most MaxStringBytes of them; further lines are counted and reported as
// dropped.
func (v *vm) logFn(level slog.Level) glua.LGFunction {
	return func(L *glua.LState) int {
		parts := make([]string, L.GetTop())
		for i := range parts {
			parts[i] = L.ToStringMeta(L.Get(i + 1)).String()
		}
		msg := strings.Join(parts, " ")
		if v.logBytes+len(msg) > v.p.opts.MaxStringBytes {
			v.logDropped++
			return 0
		}
		v.logBytes += len(msg)
		v.logs = append(v.logs, logLine{level: level, msg: msg})
		return 0
	}
}

// session returns the current kv session or raises.
func (v *vm) session(L *glua.LState) *kv.Session {
	if v.sess == nil {
		L.RaiseError("kv: this lua node has no store (set dir)")
	}
	return v.sess
}

// fail returns nil, err to the script.
func fail(L *glua.LState, err error) int {
	L.Push(glua.LNil)
	L.Push(glua.LString(err.Error()))
	return 2
}

func (v *vm) kvTable() *glua.LTable {
	L := v.L
	t := L.NewTable()
	fns := map[string]glua.LGFunction{
		"get": func(L *glua.LState) int {
			s := v.session(L)
			raw, found, err := s.Get(L.CheckString(1), nil)
			if err != nil {
				return fail(L, err)
			}
			if !found {
				L.Push(L.Get(2))
				return 1
			}
			lv, err := v.fromJSON(raw)
			if err != nil {
				return fail(L, err)
			}
			L.Push(lv)
			return 1
		},
		"set": func(L *glua.LState) int {
			s := v.session(L)
			key := L.CheckString(1)
			raw, err := v.toJSON(v.tmp[:0], L.CheckAny(2))
			v.tmp = raw
			if err != nil {
				return fail(L, fmt.Errorf("set %q: %w", key, err))
			}
			ttl := time.Duration(float64(L.OptNumber(3, 0)) * float64(time.Second))
			if L.Get(3) != glua.LNil && ttl <= 0 {
				return fail(L, fmt.Errorf("set %q: ttl must be a positive number of seconds: %w", key, kv.ErrInvalidCommand))
			}
			if err := s.Set(key, raw, ttl); err != nil {
				return fail(L, err)
			}
			L.Push(glua.LTrue)
			return 1
		},
		"delete": func(L *glua.LState) int {
			if _, err := v.session(L).Delete(L.CheckString(1)); err != nil {
				return fail(L, err)
			}
			L.Push(glua.LTrue)
			return 1
		},
		"exists": func(L *glua.LState) int {
			ok, err := v.session(L).Exists(L.CheckString(1))
			if err != nil {
				return fail(L, err)
			}
			L.Push(glua.LBool(ok))
			return 1
		},
		"keys": func(L *glua.LState) int {
			keys, err := v.session(L).Keys(L.OptString(1, ""))
			if err != nil {
				return fail(L, err)
			}
			out := L.CreateTable(len(keys), 0)
			for _, k := range keys {
				out.Append(glua.LString(k))
			}
			L.Push(out)
			return 1
		},
		"get_all": func(L *glua.LState) int {
			raw, err := v.session(L).GetAll(L.OptString(1, ""))
			if err != nil {
				return fail(L, err)
			}
			lv, err := v.fromJSON(raw)
			if err != nil {
				return fail(L, err)
			}
			L.Push(lv)
			return 1
		},
		"clear": func(L *glua.LState) int {
			n, err := v.session(L).Clear(L.OptString(1, ""))
			if err != nil {
				return fail(L, err)
			}
			L.Push(glua.LNumber(n))
			return 1
		},
		"count": func(L *glua.LState) int {
			n, err := v.session(L).Count(L.OptString(1, ""))
			if err != nil {
				return fail(L, err)
			}
			L.Push(glua.LNumber(n))
			return 1
		},
		"increment": func(L *glua.LState) int {
			s := v.session(L)
			key, delta := L.CheckString(1), float64(L.OptNumber(2, 1))
			var (
				raw []byte
				err error
			)
			if L.Get(3) == glua.LNil {
				raw, err = s.Increment(key, delta)
			} else {
				ttl := time.Duration(float64(L.CheckNumber(3)) * float64(time.Second))
				raw, err = s.IncrementTTL(key, delta, ttl, L.OptBool(4, false))
			}
			if err != nil {
				return fail(L, err)
			}
			f, err := strconv.ParseFloat(bytesString(raw), 64)
			if err != nil {
				return fail(L, fmt.Errorf("increment: result %q: %w", raw, err))
			}
			L.Push(glua.LNumber(f))
			return 1
		},
		"ttl": func(L *glua.LState) int {
			s := v.session(L)
			at, found, err := s.Expiry(L.CheckString(1))
			switch {
			case err != nil:
				return fail(L, err)
			case !found:
				L.Push(glua.LNil)
			case at == 0:
				L.Push(glua.LFalse)
			default:
				L.Push(glua.LNumber(float64(at-s.Now()) / 1000))
			}
			return 1
		},
		"touch": func(L *glua.LState) int {
			s := v.session(L)
			key := L.CheckString(1)
			ttl := time.Duration(float64(L.CheckNumber(2)) * float64(time.Second))
			found, err := s.Touch(key, ttl)
			if err != nil {
				return fail(L, err)
			}
			L.Push(glua.LBool(found))
			return 1
		},
		"cas": func(L *glua.LState) int {
			s := v.session(L)
			key := L.CheckString(1)
			var old []byte
			if o := L.Get(2); o != glua.LNil && o != v.null {
				var err error
				if old, err = v.toJSON(nil, o); err != nil {
					return fail(L, fmt.Errorf("cas %q: old: %w", key, err))
				}
			}
			raw, err := v.toJSON(v.tmp[:0], L.CheckAny(3))
			v.tmp = raw
			if err != nil {
				return fail(L, fmt.Errorf("cas %q: %w", key, err))
			}
			if err := s.CAS(key, old, raw); err != nil {
				return fail(L, err)
			}
			L.Push(glua.LTrue)
			return 1
		},
	}
	for name, fn := range fns {
		t.RawSetString(name, L.NewFunction(fn))
	}
	return t
}
