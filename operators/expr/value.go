package expr

import (
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Kind is the type of a Value.
type Kind uint8

// Kinds of values. Missing is the value of a path that does not exist in the
// event; it is distinct from Null but compares equal to it.
const (
	Missing Kind = iota
	Null
	Bool
	Number
	String
	Array
	Object
)

// String returns the lower-case name of the kind ("missing", "null",
// "boolean", "number", "string", "array", "object").
func (k Kind) String() string {
	switch k {
	case Missing:
		return "missing"
	case Null:
		return "null"
	case Bool:
		return "boolean"
	case Number:
		return "number"
	case String:
		return "string"
	case Array:
		return "array"
	case Object:
		return "object"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// article returns the kind with an indefinite article, for error messages.
func (k Kind) article() string {
	switch k {
	case Missing, Null:
		return k.String()
	case Array, Object:
		return "an " + k.String()
	}
	return "a " + k.String()
}

// Value is the result of evaluating an expression: a JSON value or Missing.
// The zero Value is Missing. Values are immutable.
type Value struct {
	kind  Kind
	b     bool
	isInt bool    // number held exactly in i
	i     int64   // integer value when isInt
	f     float64 // numeric value (also set, approximately, when isInt)
	// s is the string of a String, the raw JSON text of an Array or
	// Object, and for a Number read from an event its original text
	// (empty for computed numbers).
	s string
}

// Constructors used by the evaluator and tests.

func nullValue() Value           { return Value{kind: Null} }
func boolValue(b bool) Value     { return Value{kind: Bool, b: b} }
func stringValue(s string) Value { return Value{kind: String, s: s} }
func intValue(i int64) Value     { return Value{kind: Number, isInt: true, i: i, f: float64(i)} }
func floatValue(f float64) Value {
	return Value{kind: Number, f: f}
}

// Kind returns the type of v.
func (v Value) Kind() Kind { return v.kind }

// Bool returns the boolean held by v; ok is false when v is not a boolean.
func (v Value) Bool() (b, ok bool) { return v.b, v.kind == Bool }

// Str returns the string held by v; ok is false when v is not a string.
func (v Value) Str() (s string, ok bool) {
	if v.kind != String {
		return "", false
	}
	return v.s, true
}

// Int returns the number held by v as an int64; ok is false when v is not a
// number or not an integer representable exactly in an int64.
func (v Value) Int() (i int64, ok bool) {
	if v.kind != Number {
		return 0, false
	}
	if v.isInt {
		return v.i, true
	}
	if i, ok := floatToInt(v.f); ok {
		return i, true
	}
	return 0, false
}

// Float returns the number held by v as a float64 (possibly rounded); ok is
// false when v is not a number.
func (v Value) Float() (f float64, ok bool) { return v.f, v.kind == Number }

// AppendJSON appends the JSON encoding of v to dst and returns the extended
// slice. Missing is encoded as null. Arrays and objects read from an event
// are appended as their original text (compacted when it spans lines), and
// numbers read from an event keep their original text.
func (v Value) AppendJSON(dst []byte) []byte {
	switch v.kind {
	case Missing, Null:
		return append(dst, "null"...)
	case Bool:
		if v.b {
			return append(dst, "true"...)
		}
		return append(dst, "false"...)
	case Number:
		return v.appendNumber(dst)
	case String:
		return appendString(dst, v.s)
	default:
		return appendCompact(dst, v.s)
	}
}

// String returns the JSON encoding of v, or "missing" for Missing.
func (v Value) String() string {
	if v.kind == Missing {
		return "missing"
	}
	return string(v.AppendJSON(nil))
}

// appendText appends v as text for string concatenation and string(): the
// string itself for strings, the JSON encoding for anything else.
func (v Value) appendText(dst []byte) []byte {
	if v.kind == String {
		return append(dst, v.s...)
	}
	return v.AppendJSON(dst)
}

func (v Value) appendNumber(dst []byte) []byte {
	if v.s != "" {
		return append(dst, v.s...)
	}
	if v.isInt {
		return strconv.AppendInt(dst, v.i, 10)
	}
	return appendFloat(dst, v.f)
}

// appendFloat formats f the way encoding/json does: shortest representation,
// exponent form only for very large or very small magnitudes. Non-finite
// numbers cannot be produced by the evaluator (arithmetic rejects them) and
// are written as null to keep the output valid JSON.
func appendFloat(dst []byte, f float64) []byte {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return append(dst, "null"...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	start := len(dst)
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		n := len(dst) - start
		if n >= 4 && dst[len(dst)-4] == 'e' && dst[len(dst)-3] == '-' && dst[len(dst)-2] == '0' {
			dst[len(dst)-2] = dst[len(dst)-1]
			dst = dst[:len(dst)-1]
		}
	}
	return dst
}

// floatToInt converts f to an int64 when it is integral and in range.
func floatToInt(f float64) (int64, bool) {
	if f != math.Trunc(f) || f < -9223372036854775808 || f >= 9223372036854775808 {
		return 0, false
	}
	return int64(f), true
}

// appendCompact appends raw JSON text, compacting it when it spans lines so
// that one event stays one line of JSON-lines output.
func appendCompact(dst []byte, raw string) []byte {
	for i := 0; i < len(raw); i++ {
		if raw[i] == '\n' || raw[i] == '\r' {
			return append(dst, gjson.Get(raw, "@ugly").Raw...)
		}
	}
	return append(dst, raw...)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 is replaced by
// U+FFFD so that the output is always valid JSON.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// fromResult converts a gjson result to a Value. Numbers keep their raw
// text; integers that fit an int64 are held exactly.
func fromResult(r gjson.Result) Value {
	switch r.Type {
	case gjson.Null:
		if !r.Exists() {
			return Value{}
		}
		return nullValue()
	case gjson.False:
		return boolValue(false)
	case gjson.True:
		return boolValue(true)
	case gjson.Number:
		v := numberFromText(r.Raw)
		v.s = r.Raw
		return v
	case gjson.String:
		return stringValue(r.Str)
	case gjson.JSON:
		if len(r.Raw) > 0 && r.Raw[0] == '[' {
			return Value{kind: Array, s: r.Raw}
		}
		return Value{kind: Object, s: r.Raw}
	}
	return Value{}
}

// numberFromText parses a JSON number, exactly when it is an integer that
// fits an int64. Out-of-range floats become ±Inf; arithmetic on them fails.
func numberFromText(text string) Value {
	if isIntText(text) {
		if i, err := strconv.ParseInt(text, 10, 64); err == nil {
			return intValue(i)
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil && f == 0 {
		// Not a number at all (lenient gjson input): keep NaN out of the
		// value space by treating it as zero-valued text.
		return Value{kind: Number, s: text}
	}
	return floatValue(f)
}

func isIntText(s string) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// equal reports canonical equality of two values: Missing equals Null,
// numbers compare numerically, objects compare member-wise regardless of
// key order and whitespace, arrays element-wise.
func equal(a, b Value) bool {
	ak, bk := a.kind, b.kind
	if ak == Missing {
		ak = Null
	}
	if bk == Missing {
		bk = Null
	}
	if ak != bk {
		return false
	}
	switch ak {
	case Null:
		return true
	case Bool:
		return a.b == b.b
	case Number:
		return compareNumbers(a, b) == 0
	case String:
		return a.s == b.s
	case Array:
		ea, eb := gjson.Parse(a.s).Array(), gjson.Parse(b.s).Array()
		if len(ea) != len(eb) {
			return false
		}
		for i := range ea {
			if !equal(fromResult(ea[i]), fromResult(eb[i])) {
				return false
			}
		}
		return true
	case Object:
		ma, na := objectMembers(a.s)
		mb, nb := objectMembers(b.s)
		if na != nb || len(ma) != len(mb) {
			return false
		}
		for k, va := range ma {
			vb, ok := mb[k]
			if !ok || !equal(fromResult(va), fromResult(vb)) {
				return false
			}
		}
		return true
	}
	return false
}

// objectMembers returns the members of a raw object (the first of duplicate
// keys wins, as with gjson paths) and the number of distinct keys.
func objectMembers(raw string) (map[string]gjson.Result, int) {
	m := map[string]gjson.Result{}
	gjson.Parse(raw).ForEach(func(k, v gjson.Result) bool {
		if _, dup := m[k.Str]; !dup {
			m[k.Str] = v
		}
		return true
	})
	return m, len(m)
}

// compareNumbers returns -1, 0 or 1. Integers compare exactly, also with
// integral floats in range.
func compareNumbers(a, b Value) int {
	if a.isInt && b.isInt {
		return cmpInt(a.i, b.i)
	}
	if a.isInt {
		if bi, ok := floatToInt(b.f); ok {
			return cmpInt(a.i, bi)
		}
	}
	if b.isInt {
		if ai, ok := floatToInt(a.f); ok {
			return cmpInt(ai, b.i)
		}
	}
	switch {
	case a.f < b.f:
		return -1
	case a.f > b.f:
		return 1
	}
	return 0
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
