package lua

import (
	"context"
	"fmt"
	"strings"
	"unsafe"

	glua "github.com/yuin/gopher-lua"

	"github.com/flowrun/flowrun/operators/lua/internal/luapattern"
)

// Bounded library functions.
//
// gopher-lua checks the run's context only between VM instructions, so a
// Go library function runs unchecked to its end: a backtracking pattern
// for minutes, a string.gsub or table.concat until the process is killed
// for memory. The functions below replace those of gopher-lua whose time
// or output is not bounded by their arguments' size: pattern matching
// (find, match, gmatch, gsub) runs on luapattern, which checks the run's
// context every 1024 steps; every function building a string refuses a
// result over MaxStringBytes before building it and counts what it built
// for the memory limit (see memory.go); functions pushing values (unpack,
// string.byte) push at most maxResults, as Lua 5.1 does. The others are
// bounded by their arguments (string.len, upper, table.insert, ...) or
// call back into Lua (table.sort), whose instructions are checked.

// maxResults is the most values unpack and string.byte return: Lua 5.1's
// C stack limit (LUAI_MAXCSTACK). gopher-lua grows its stack a slot at a
// time, so pushing 100000 values took seconds inside one call.
const maxResults = 8000

// maxFormatWidth is the widest width or precision of a string.format
// conversion: two digits, as in Lua 5.1.
const maxFormatWidth = 99

// cloneBelow: a substring of a string longer than this that is shorter
// than half of it is copied, so that keeping it (in a global, say) does
// not keep the whole string alive unaccounted.
const cloneBelow = 1 << 10

// check returns the cause of the run's end when its context is done
// (timeout, shutdown): library loops call it every so often.
func (v *vm) check() error {
	if v.ctx == nil {
		return nil
	}
	select {
	case <-v.ctx.Done():
		return context.Cause(v.ctx)
	default:
		return nil
	}
}

// stopIfDone raises the cause of the run's end, if it has ended.
func (v *vm) stopIfDone(L *glua.LState) {
	if err := v.check(); err != nil {
		L.RaiseError("%s", err.Error())
	}
}

// raiseLimit records err as the run's limit error and raises it.
func (v *vm) raiseLimit(L *glua.LState, err error) {
	v.limit = err
	L.RaiseError("%s", err.Error())
}

// produce accounts for a string of n bytes that the library function fn
// is about to build: over MaxStringBytes it raises instead.
func (v *vm) produce(L *glua.LState, fn string, n int) {
	if n > v.p.opts.MaxStringBytes {
		v.raiseLimit(L, fmt.Errorf("%w: %s result over %d bytes, limit is %s (max_string_bytes)",
			ErrLimit, fn, v.p.opts.MaxStringBytes, sizeString(uint64(v.p.opts.MaxStringBytes))))
	}
	v.mem.produced += int64(n)
}

// substr returns s[i:j], copied when it would otherwise keep a much
// larger string alive (see cloneBelow).
func substr(s string, i, j int) glua.LString {
	if len(s) > cloneBelow && j-i < len(s)/2 {
		return glua.LString(strings.Clone(s[i:j]))
	}
	return glua.LString(s[i:j])
}

// stringBytes returns the bytes of s without copying; they must not be
// modified.
func stringBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// bytesLString returns b as a string without copying; b must not be
// modified afterwards.
func bytesLString(b []byte) glua.LString { return glua.LString(bytesString(b)) }

// sandboxLibs replaces the unbounded library functions.
func (v *vm) sandboxLibs() {
	L := v.L
	v.matcher.Check = v.check
	str := L.GetGlobal("string").(*glua.LTable)
	format, byteFn := str.RawGetString("format"), str.RawGetString("byte")
	for name, fn := range map[string]glua.LGFunction{
		"rep":     v.strRep,
		"find":    v.strFind,
		"match":   v.strMatch,
		"gmatch":  v.strGmatch,
		"gfind":   v.strGmatch,
		"gsub":    v.strGsub,
		"sub":     v.strSub,
		"upper":   v.strMap("string.upper", strings.ToUpper),
		"lower":   v.strMap("string.lower", strings.ToLower),
		"reverse": v.strMap("string.reverse", reverse),
		"format":  v.strFormat(format),
		"byte":    v.strByte(byteFn),
	} {
		str.RawSetString(name, L.NewFunction(fn))
	}
	L.GetGlobal("table").(*glua.LTable).RawSetString("concat", L.NewFunction(v.tableConcat))
	L.SetGlobal("unpack", L.NewFunction(v.unpack))
}

func reverse(s string) string {
	b := make([]byte, len(s))
	for i := range len(s) {
		b[len(s)-1-i] = s[i]
	}
	return bytesString(b)
}

// strRep is string.rep, its result capped.
func (v *vm) strRep(L *glua.LState) int {
	s := L.CheckString(1)
	n := L.CheckInt(2)
	if n <= 0 || len(s) == 0 {
		L.Push(glua.LString(""))
		return 1
	}
	if n > v.p.opts.MaxStringBytes/len(s) {
		v.raiseLimit(L, fmt.Errorf("%w: string.rep result of %d × %d bytes, over %d bytes, limit is %s (max_string_bytes)",
			ErrLimit, n, len(s), v.p.opts.MaxStringBytes, sizeString(uint64(v.p.opts.MaxStringBytes))))
	}
	v.produce(L, "string.rep", len(s)*n)
	L.Push(glua.LString(strings.Repeat(s, n)))
	return 1
}

// strMap is a string function whose result is as long as its argument.
func (v *vm) strMap(name string, f func(string) string) glua.LGFunction {
	return func(L *glua.LState) int {
		s := L.CheckString(1)
		v.produce(L, name, len(s))
		L.Push(glua.LString(f(s)))
		return 1
	}
}

// strSub is string.sub; see substr.
func (v *vm) strSub(L *glua.LState) int {
	s := L.CheckString(1)
	start := strIndex(s, L.CheckInt(2), true)
	end := strIndex(s, L.OptInt(3, -1), false)
	if start >= len(s) || end <= start {
		L.Push(glua.LString(""))
		return 1
	}
	L.Push(substr(s, start, end))
	return 1
}

// strIndex converts a Lua string index to a Go one, like gopher-lua.
func strIndex(s string, i int, start bool) int {
	if start && i != 0 {
		i--
	}
	if i < 0 {
		i = len(s) + i + 1
	}
	i = max(0, i)
	if !start && i > len(s) {
		i = len(s)
	}
	return i
}

// strByte is string.byte returning at most maxResults values.
func (v *vm) strByte(orig glua.LValue) glua.LGFunction {
	return func(L *glua.LState) int {
		s := L.CheckString(1)
		start, end := L.OptInt(2, 1)-1, L.OptInt(3, -1)
		if start < 0 {
			start = len(s) + start + 1
		}
		if end < 0 {
			end = len(s) + end + 1
		}
		if min(end, len(s))-max(start, 0) > maxResults {
			L.RaiseError("string slice too long: more than %d values", maxResults)
		}
		return callOrig(L, orig)
	}
}

// callOrig calls the original library function orig with the current
// arguments and returns its results.
func callOrig(L *glua.LState, orig glua.LValue) int {
	n := L.GetTop()
	L.Insert(orig, 1)
	L.Call(n, glua.MultRet)
	return L.GetTop()
}

// unpack is unpack returning at most maxResults values.
func (v *vm) unpack(L *glua.LState) int {
	t := L.CheckTable(1)
	start := L.OptInt(2, 1)
	end := L.OptInt(3, t.Len())
	if start > end {
		return 0
	}
	n := end - start + 1
	if n > maxResults || n <= 0 {
		L.RaiseError("too many results to unpack: %d, at most %d", end-start+1, maxResults)
	}
	for i := start; i <= end; i++ {
		L.Push(t.RawGetInt(i))
	}
	return n
}

// tableConcat is table.concat, its result capped and its loop checked.
func (v *vm) tableConcat(L *glua.LState) int {
	t := L.CheckTable(1)
	sep := L.OptString(2, "")
	n := t.Len()
	i := L.OptInt(3, 1)
	j := L.OptInt(4, n)
	if L.GetTop() == 3 && (i > n || i < 1) {
		L.Push(glua.LString(""))
		return 1
	}
	// gopher-lua's bounds: within 1..#t.
	i = max(min(i, n), 1)
	j = min(j, n)
	if i > j {
		L.Push(glua.LString(""))
		return 1
	}
	limit := v.p.opts.MaxStringBytes
	size := 0
	for k := i; k <= j; k++ {
		if (k-i)%1024 == 1023 {
			v.stopIfDone(L)
		}
		e := t.RawGetInt(k)
		if !glua.LVCanConvToString(e) {
			L.RaiseError("invalid value (%s) at index %d in table for concat", e.Type().String(), k)
		}
		size += len(glua.LVAsString(e))
		if k != j {
			size += len(sep)
		}
		if size > limit {
			v.produce(L, "table.concat", size)
		}
	}
	v.produce(L, "table.concat", size)
	buf := make([]byte, 0, size)
	for k := i; k <= j; k++ {
		buf = append(buf, glua.LVAsString(t.RawGetInt(k))...)
		if k != j {
			buf = append(buf, sep...)
		}
	}
	L.Push(bytesLString(buf))
	return 1
}

// compile compiles a pattern or raises its error.
func compile(L *glua.LState, p string) *luapattern.Pattern {
	pat, err := luapattern.Compile(p)
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	return pat
}

// next runs the matcher, raising its error: the run's end (timeout) or a
// malformed pattern.
func (v *vm) next(L *glua.LState, pat *luapattern.Pattern, s string, start int) (*luapattern.MatchData, int) {
	md, next, err := v.matcher.Next(pat, stringBytes(s), start)
	if err != nil {
		if cause := v.check(); cause != nil {
			err = cause
		}
		L.RaiseError("%s", err.Error())
	}
	return md, next
}

// pushCaptures pushes the captures of md from index from (0: the whole
// match) and returns how many.
func pushCaptures(L *glua.LState, s string, md *luapattern.MatchData, from int) int {
	n := 0
	for i := from; i < md.CaptureLength(); i += 2 {
		if md.IsPosCapture(i) {
			L.Push(glua.LNumber(md.Capture(i)))
		} else {
			L.Push(substr(s, md.Capture(i), md.Capture(i+1)))
		}
		n++
	}
	return n
}

// strFind is string.find on luapattern.
func (v *vm) strFind(L *glua.LState) int {
	s := L.CheckString(1)
	p := L.CheckString(2)
	if p == "" {
		L.Push(glua.LNumber(1))
		L.Push(glua.LNumber(0))
		return 2
	}
	init := min(strIndex(s, L.OptInt(3, 1), true), len(s))
	if L.GetTop() == 4 && glua.LVAsBool(L.Get(4)) {
		pos := strings.Index(s[init:], p)
		if pos < 0 {
			L.Push(glua.LNil)
			return 1
		}
		L.Push(glua.LNumber(init + pos + 1))
		L.Push(glua.LNumber(init + pos + len(p)))
		return 2
	}
	md, _ := v.next(L, compile(L, p), s, init)
	if md == nil {
		L.Push(glua.LNil)
		return 1
	}
	L.Push(glua.LNumber(md.Capture(0) + 1))
	L.Push(glua.LNumber(md.Capture(1)))
	return 2 + pushCaptures(L, s, md, 2)
}

// strMatch is string.match on luapattern.
func (v *vm) strMatch(L *glua.LState) int {
	s := L.CheckString(1)
	p := L.CheckString(2)
	offset := L.OptInt(3, 1)
	if offset < 0 {
		offset = len(s) + offset + 1
	}
	offset = max(offset-1, 0)
	md, _ := v.next(L, compile(L, p), s, offset)
	if md == nil {
		L.Push(glua.LNil)
		return 1
	}
	if md.CaptureLength() == 2 {
		L.Push(substr(s, md.Capture(0), md.Capture(1)))
		return 1
	}
	return pushCaptures(L, s, md, 2)
}

// strGmatch is string.gmatch on luapattern: its iterator finds one match
// per call, instead of all of them up front. The subject string is an
// upvalue of the iterator, so that stateSize sees it.
func (v *vm) strGmatch(L *glua.LState) int {
	s := L.CheckString(1)
	ud := L.NewUserData()
	ud.Value = &gmatchState{pat: compile(L, L.CheckString(2))}
	L.Push(L.NewClosure(v.gmatchIter, glua.LString(s), ud))
	return 1
}

// gmatchState is where a gmatch iterator is.
type gmatchState struct {
	pat *luapattern.Pattern
	pos int // -1 when done
}

func (v *vm) gmatchIter(L *glua.LState) int {
	s, _ := L.Get(glua.UpvalueIndex(1)).(glua.LString)
	ud, _ := L.Get(glua.UpvalueIndex(2)).(*glua.LUserData)
	st, ok := ud.Value.(*gmatchState)
	if !ok || st.pos < 0 {
		return 0
	}
	md, next := v.next(L, st.pat, string(s), st.pos)
	st.pos = next
	if md == nil {
		st.pos = -1
		return 0
	}
	if md.CaptureLength() == 2 {
		L.Push(substr(string(s), md.Capture(0), md.Capture(1)))
		return 1
	}
	return pushCaptures(L, string(s), md, 2)
}

// strGsub is string.gsub on luapattern, building its result as it goes
// (gopher-lua found every match first, then copied the whole string once
// per replacement), capped at MaxStringBytes.
func (v *vm) strGsub(L *glua.LState) int {
	s := L.CheckString(1)
	pat := compile(L, L.CheckString(2))
	L.CheckTypes(3, glua.LTString, glua.LTTable, glua.LTFunction)
	repl := L.CheckAny(3)
	limit := L.OptInt(4, -1)
	maxBytes := v.p.opts.MaxStringBytes
	var buf []byte
	count, last, replaced := 0, 0, false
	for pos := 0; pos >= 0 && (limit < 0 || count < limit); {
		md, next := v.next(L, pat, s, pos)
		if md == nil {
			break
		}
		pos = next
		count++
		start, end := md.Capture(0), md.Capture(1)
		var r string
		keep := true
		switch lv := repl.(type) {
		case glua.LString:
			r = v.expandRepl(L, s, string(lv), md)
		case *glua.LTable:
			idx := 0
			if md.CaptureLength() > 2 {
				idx = 2
			}
			var val glua.LValue
			if md.IsPosCapture(idx) {
				val = L.GetTable(lv, glua.LNumber(md.Capture(idx)))
			} else {
				val = L.GetField(lv, s[md.Capture(idx):md.Capture(idx+1)])
			}
			keep, r = !glua.LVIsFalse(val), glua.LVAsString(val)
		case *glua.LFunction:
			L.Push(lv)
			var nargs int
			if md.CaptureLength() > 2 {
				nargs = pushCaptures(L, s, md, 2)
			} else {
				L.Push(substr(s, start, end))
				nargs = 1
			}
			L.Call(nargs, 1)
			ret := L.Get(-1)
			L.Pop(1)
			keep, r = !glua.LVIsFalse(ret), glua.LVAsString(ret)
		}
		if !keep {
			continue
		}
		if len(buf)+(start-last)+len(r)+(len(s)-end) > maxBytes {
			v.produce(L, "string.gsub", len(buf)+(start-last)+len(r)+(len(s)-end))
		}
		buf = append(buf, s[last:start]...)
		buf = append(buf, r...)
		last, replaced = end, true
	}
	if !replaced {
		L.Push(glua.LString(s))
	} else {
		v.produce(L, "string.gsub", len(buf)+len(s)-last)
		buf = append(buf, s[last:]...)
		L.Push(bytesLString(buf))
	}
	L.Push(glua.LNumber(count))
	return 2
}

// expandRepl expands a gsub replacement string for md the way gopher-lua
// does: %0-%9 are captures, %% is %, any other %x stays as it is.
func (v *vm) expandRepl(L *glua.LState, s, repl string, md *luapattern.MatchData) string {
	if strings.IndexByte(repl, '%') < 0 {
		return repl
	}
	var b []byte
	for i := 0; i < len(repl); i++ {
		c := repl[i]
		if c != '%' || i == len(repl)-1 {
			b = append(b, c)
			continue
		}
		i++
		switch d := repl[i]; {
		case d == '%':
			b = append(b, '%')
		case d >= '0' && d <= '9':
			idx := 2 * int(d-'0')
			if idx > 2 && idx >= md.CaptureLength() {
				L.RaiseError("invalid capture index")
			}
			if idx >= md.CaptureLength() && idx == 2 {
				idx = 0
			}
			if md.IsPosCapture(idx) {
				b = fmt.Append(b, md.Capture(idx))
			} else {
				b = append(b, s[md.Capture(idx):md.Capture(idx+1)]...)
			}
		default:
			b = append(b, '%', d)
		}
		if len(b) > v.p.opts.MaxStringBytes {
			v.produce(L, "string.gsub", len(b))
		}
	}
	return bytesString(b)
}

// strFormat is string.format with Lua 5.1's limits on a conversion (at
// most 5 flags, two-digit width and precision, no '*'), so that its
// result's size is known from its arguments before it is built; then
// gopher-lua's formats it.
func (v *vm) strFormat(orig glua.LValue) glua.LGFunction {
	return func(L *glua.LState) int {
		f := L.CheckString(1)
		size, arg := len(f), 2
		for i := 0; i < len(f); i++ {
			if f[i] != '%' {
				continue
			}
			i++
			if i < len(f) && f[i] == '%' {
				continue
			}
			flags := 0
			for ; i < len(f) && strings.IndexByte("-+ #0", f[i]) >= 0; i++ {
				flags++
			}
			if flags > 5 {
				L.RaiseError("invalid format (repeated flags)")
			}
			digits := func() {
				for n := 0; i < len(f) && f[i] >= '0' && f[i] <= '9'; i++ {
					if n++; n > 2 {
						L.RaiseError("invalid format (width or precision too long)")
					}
				}
			}
			digits()
			if i < len(f) && f[i] == '.' {
				i++
				digits()
			}
			if i >= len(f) {
				break
			}
			verb := f[i]
			if !(verb >= 'a' && verb <= 'z' || verb >= 'A' && verb <= 'Z') {
				L.RaiseError("invalid option '%%%c' to 'format'", verb)
			}
			size += 2*maxFormatWidth + formatSize(verb, L.Get(arg))
			arg++
			if size > v.p.opts.MaxStringBytes {
				v.produce(L, "string.format", size)
			}
		}
		v.produce(L, "string.format", size)
		return callOrig(L, orig)
	}
}

// formatSize bounds the length of value formatted by verb, before width
// and precision: a string's length (four times it when escaped, as %q
// may), 400 bytes for anything else (a %f of 1e308 has 309 digits).
func formatSize(verb byte, value glua.LValue) int {
	if s, ok := value.(glua.LString); ok {
		if verb == 's' || verb == 'v' {
			return len(s)
		}
		return 4*len(s) + 2
	}
	return 400
}
