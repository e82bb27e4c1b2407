package lua

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"
	glua "github.com/yuin/gopher-lua"

	"github.com/flowrun/flowrun/connectors/kv"
)

// maxSafeInt is 2^53: every integer up to it in magnitude is exact in a
// float64, the only number type of Lua 5.1.
const maxSafeInt = 1 << 53

var errConvert = errors.New("cannot convert to JSON")

// fromJSON converts JSON to a Lua value: objects and arrays to tables
// (arrays as sequences from 1), null to json.null, numbers to float64.
func (v *vm) fromJSON(raw []byte) (glua.LValue, error) {
	if !gjson.ValidBytes(raw) {
		return glua.LNil, fmt.Errorf("%w: malformed JSON", kv.ErrInvalidJSON)
	}
	// raw is never modified (event bytes are immutable, kv results belong
	// to the caller), so strings parsed from it may share its memory,
	// except short strings of a long raw, copied so that keeping them
	// does not keep raw alive (see cloneBelow). The bytes count as
	// produced for the memory limit (see memory.go).
	v.mem.produced += int64(len(raw))
	v.rawLen = len(raw)
	return v.fromResult(gjson.Parse(bytesString(raw)), 0)
}

func (v *vm) fromResult(r gjson.Result, depth int) (glua.LValue, error) {
	if depth > kv.MaxDepth {
		return glua.LNil, fmt.Errorf("%w: nested deeper than %d", kv.ErrInvalidJSON, kv.MaxDepth)
	}
	switch r.Type {
	case gjson.Null:
		return v.null, nil
	case gjson.False:
		return glua.LFalse, nil
	case gjson.True:
		return glua.LTrue, nil
	case gjson.Number:
		return glua.LNumber(r.Num), nil
	case gjson.String:
		if v.rawLen > cloneBelow && len(r.Str) < v.rawLen/2 {
			return glua.LString(strings.Clone(r.Str)), nil
		}
		return glua.LString(r.Str), nil
	}
	// One pass collects the members on the VM's result stack (nested
	// values push theirs above), so the table is created at its size:
	// NewTable would preallocate 32 slots and a 32-entry map, which
	// dominates the cost of converting small events.
	start := len(v.results)
	defer func() { v.results = v.results[:start] }()
	r.ForEach(func(k, e gjson.Result) bool {
		v.results = append(v.results, k, e)
		return true
	})
	items := v.results[start:]
	n := len(items) / 2
	var t *glua.LTable
	if r.IsArray() {
		t = v.L.CreateTable(n, 0)
	} else {
		t = v.L.CreateTable(0, n)
	}
	for i := 0; i < n; i++ {
		lv, err := v.fromResult(items[2*i+1], depth+1)
		if err != nil {
			return t, err
		}
		if r.IsArray() {
			t.Append(lv)
		} else {
			t.RawSetString(items[2*i].Str, lv)
		}
	}
	return t, nil
}

// toJSON appends the JSON encoding of lv to dst. A number is written as an
// integer when it is integral and within ±2^53, otherwise as a float; nil
// and json.null are null; a table whose keys are exactly 1..n (n > 0) is
// an array, any other table an object (an empty table is {}), with number
// keys written as strings. Functions, userdata other than json.null,
// NaN, infinities and cycles are errors.
func (v *vm) toJSON(dst []byte, lv glua.LValue) ([]byte, error) {
	v.jsonBase = len(dst)
	return v.appendJSON(dst, lv, 0)
}

func (v *vm) appendJSON(dst []byte, lv glua.LValue, depth int) ([]byte, error) {
	if depth > kv.MaxDepth {
		return dst, fmt.Errorf("%w: nested deeper than %d (a table containing itself?)", errConvert, kv.MaxDepth)
	}
	if len(dst)-v.jsonBase > v.p.opts.MaxStringBytes {
		v.limit = fmt.Errorf("%w: a value converted to JSON is over %d bytes", ErrLimit, v.p.opts.MaxStringBytes)
		return dst, v.limit
	}
	switch x := lv.(type) {
	case *glua.LNilType:
		return append(dst, "null"...), nil
	case glua.LBool:
		return strconv.AppendBool(dst, bool(x)), nil
	case glua.LNumber:
		return appendNumber(dst, float64(x))
	case glua.LString:
		return appendString(dst, string(x)), nil
	case *glua.LUserData:
		if x == v.null {
			return append(dst, "null"...), nil
		}
	case *glua.LTable:
		return v.appendTable(dst, x, depth)
	}
	return dst, fmt.Errorf("%w: a %s value", errConvert, lv.Type())
}

func appendNumber(dst []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return dst, fmt.Errorf("%w: %v is not a finite number", errConvert, f)
	}
	if f == math.Trunc(f) && math.Abs(f) <= maxSafeInt {
		return strconv.AppendInt(dst, int64(f), 10), nil
	}
	return strconv.AppendFloat(dst, f, 'g', -1, 64), nil
}

func (v *vm) appendTable(dst []byte, t *glua.LTable, depth int) ([]byte, error) {
	n := t.MaxN()
	count := 0
	for k, _ := t.Next(glua.LNil); k != glua.LNil; k, _ = t.Next(k) {
		count++
	}
	var err error
	if n > 0 && n == count {
		dst = append(dst, '[')
		for i := 1; i <= n; i++ {
			if i > 1 {
				dst = append(dst, ',')
			}
			if dst, err = v.appendJSON(dst, t.RawGetInt(i), depth+1); err != nil {
				return dst, err
			}
		}
		return append(dst, ']'), nil
	}
	// The entries go to the VM's scratch stack (nested tables push theirs
	// above), so encoding a table allocates nothing once the stack has
	// grown.
	start := len(v.scratch)
	defer func() { v.scratch = v.scratch[:start] }()
	for k, val := t.Next(glua.LNil); k != glua.LNil; k, val = t.Next(k) {
		switch kk := k.(type) {
		case glua.LString:
			v.scratch = append(v.scratch, entry{string(kk), val})
		case glua.LNumber:
			b, e := appendNumber(nil, float64(kk))
			if e != nil {
				return dst, e
			}
			v.scratch = append(v.scratch, entry{string(b), val})
		default:
			return dst, fmt.Errorf("%w: a table key of type %s", errConvert, k.Type())
		}
	}
	entries := v.scratch[start:]
	// Sorted keys make the encoding deterministic (Lua's table order is not).
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.k, b.k) })
	dst = append(dst, '{')
	for i, e := range entries {
		// Keys must stay distinct in JSON (I-JSON): 1 and "1" would both
		// be written "1", and invalid UTF-8 would become U+FFFD.
		if i > 0 && entries[i-1].k == e.k {
			return dst, fmt.Errorf("%w: a table has both the number key %s and the string key %q", errConvert, e.k, e.k)
		}
		if !utf8.ValidString(e.k) {
			return dst, fmt.Errorf("%w: a table key %q is not valid UTF-8", errConvert, e.k)
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, e.k)
		dst = append(dst, ':')
		if dst, err = v.appendJSON(dst, e.v, depth+1); err != nil {
			return dst, err
		}
	}
	return append(dst, '}'), nil
}

// entry is a table member being encoded.
type entry struct {
	k string
	v glua.LValue
}

// appendString appends s as a JSON string, escaped as encoding/json does
// (including <, > and & as \u003c...). Plain ASCII, the common case, is
// copied as it is.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // never fails for a string; invalid UTF-8 becomes U+FFFD
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// bytesString returns b as a string without copying; b must not change
// afterwards.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
