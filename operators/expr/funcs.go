package expr

import (
	"hash/fnv"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/flowrun/flowrun/pipeline"
	"github.com/google/uuid"
	"github.com/tidwall/gjson"
)

// This file is the one table of the built-in functions: each entry gives
// the name, the parameters with the kinds they accept, a one-line doc, an
// example with its result, and the implementation. Parsing checks the
// arity against it, evaluation checks the argument kinds against it, and
// the reference in docs/operators.md is generated from it (docs_test.go),
// which also evaluates every example.

// kinds is a set of Kinds a parameter accepts.
type kinds uint8

func kindSet(ks ...Kind) kinds {
	var s kinds
	for _, k := range ks {
		s |= 1 << k
	}
	return s
}

var (
	kString  = kindSet(String)
	kNumber  = kindSet(Number)
	kBool    = kindSet(Bool)
	kArray   = kindSet(Array)
	kObject  = kindSet(Object)
	kText    = kindSet(String, Number, Bool)
	kValue   = kindSet(Null, Bool, Number, String, Array, Object)
	kMissing = kValue | kindSet(Missing)
	// kInteger accepts numbers that are integers within int64.
	kInteger = kNumber | integerBit
)

// integerBit marks a set of kinds whose numbers must be integers.
const integerBit kinds = 1 << 7

func (s kinds) has(k Kind) bool { return s&(1<<k) != 0 }

// accepts reports whether v belongs to s.
func (s kinds) accepts(v Value) bool {
	if !s.has(v.kind) {
		return false
	}
	if s&integerBit != 0 && v.kind == Number {
		_, ok := v.Int()
		return ok
	}
	return true
}

// names lists the kinds of s for messages ("a string or a number") or,
// with sep "|", for the reference ("string|number").
func (s kinds) names(sep string, article bool) string {
	switch s {
	case kMissing:
		return "any, even missing"
	case kValue:
		if article {
			return "a value"
		}
		return "any but missing"
	case kInteger:
		if article {
			return "an integer"
		}
		return "integer"
	}
	var parts []string
	for k := Null; k <= Object; k++ {
		if s.has(k) {
			if article {
				parts = append(parts, k.article())
			} else {
				parts = append(parts, k.String())
			}
		}
	}
	if article && len(parts) > 1 {
		return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
	}
	return strings.Join(parts, sep)
}

// argv holds the evaluated arguments of an eager function.
type argv [3]Value

// param is one parameter of a built-in function.
type param struct {
	name  string
	kinds kinds
}

// funcDef is one entry of the table of built-in functions.
type funcDef struct {
	name string
	// params are the parameters; the first min are required, and the last
	// repeats when variadic.
	params   []param
	min      int
	variadic bool
	result   string // kind of the result, for the reference
	group    string // section of the reference
	doc      string // one line, Markdown
	example  string // an expression, evaluated by the docs test
	want     string // the example's result as JSON
	// call receives the arguments, evaluated and checked against params,
	// in an array passed by value so that a call does not allocate; a
	// function taking more than len(argv{}) arguments, or a variable
	// number, is lazy and checks its arguments with evalArg.
	call func(n *callNode, args argv) (Value, error)
	// lazy, instead of call, receives the unevaluated arguments (if,
	// default, coalesce evaluate only what they need).
	lazy func(n *callNode, ev pipeline.Event) (Value, error)
	// prepare, when set, runs at parse time (matches compiles its pattern).
	prepare func(p *parser, n *callNode) error
}

func (f *funcDef) max() int {
	if f.variadic {
		return -1
	}
	return len(f.params)
}

// paramAt returns the parameter argument i binds to.
func (f *funcDef) paramAt(i int) param {
	if i >= len(f.params) {
		return f.params[len(f.params)-1]
	}
	return f.params[i]
}

// signature renders the call form, such as substr(s, start[, length]) or
// concat(x, ...).
func (f *funcDef) signature() string {
	var b strings.Builder
	b.WriteString(f.name + "(")
	for i, p := range f.params {
		if i >= f.min {
			b.WriteString("[")
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.name)
	}
	if f.variadic {
		b.WriteString(", ...")
	}
	b.WriteString(strings.Repeat("]", max(0, len(f.params)-f.min)))
	b.WriteString(")")
	return b.String()
}

// checkArity returns the message for a call with n arguments, or "".
func (f *funcDef) checkArity(n int) string {
	if n >= f.min && (f.variadic || n <= len(f.params)) {
		return ""
	}
	count := func(k int) string {
		if k == 1 {
			return "1 argument"
		}
		return strconv.Itoa(k) + " arguments"
	}
	var want string
	switch {
	case f.variadic:
		want = "at least " + count(f.min)
	case f.min == len(f.params):
		want = count(f.min)
	default:
		want = strconv.Itoa(f.min) + " to " + count(len(f.params))
	}
	return f.name + " takes " + want + ", got " + strconv.Itoa(n) + ": " + f.signature()
}

// funcTable is the table of built-in functions, in reference order.
var funcTable = []funcDef{
	// values
	{name: "exists", params: []param{{"x", kMissing}}, min: 1, result: "boolean", group: "values",
		doc: "`true` unless `x` is missing (`null` exists).", example: `exists(data.nick)`, want: `false`,
		call: func(_ *callNode, a argv) (Value, error) { return boolValue(a[0].kind != Missing), nil }},
	{name: "default", params: []param{{"x", kMissing}, {"fallback", kMissing}}, min: 2, result: "any", group: "values",
		doc: "`x`, or `fallback` when `x` is missing or null (evaluated only then).", example: `default(data.nick, "anonymous")`, want: `"anonymous"`,
		lazy: fnDefault},
	{name: "coalesce", params: []param{{"x", kMissing}}, min: 2, variadic: true, result: "any", group: "values",
		doc:     "The first argument that is neither missing nor null, else the last; later arguments are not evaluated.",
		example: `coalesce(data.nick, data.user.name, "?")`, want: `" Ann "`, lazy: fnCoalesce},
	{name: "if", params: []param{{"cond", kBool}, {"a", kMissing}, {"b", kMissing}}, min: 3, result: "any", group: "values",
		doc:     "`a` when `cond` is true, `b` when false; only the chosen one is evaluated. Same as `cond ? a : b`.",
		example: `if(data.count > 2, "many", "few")`, want: `"many"`, lazy: fnIf},
	{name: "type", params: []param{{"x", kMissing}}, min: 1, result: "string", group: "values",
		doc:     "The kind of `x`: `\"missing\"`, `\"null\"`, `\"boolean\"`, `\"number\"`, `\"string\"`, `\"array\"` or `\"object\"`.",
		example: `type(data.tags)`, want: `"array"`, call: fnType},
	{name: "len", params: []param{{"x", kindSet(String, Array, Object)}}, min: 1, result: "number", group: "values",
		doc: "Characters (code points) of a string, elements of an array, keys of an object.", example: `len("héllo")`, want: `5`, call: fnLen},
	{name: "keys", params: []param{{"obj", kObject}}, min: 1, result: "array", group: "values",
		doc: "The keys of an object, in document order.", example: `keys(data.user)`, want: `["name","id"]`, call: fnKeys},
	{name: "string", params: []param{{"x", kValue}}, min: 1, result: "string", group: "values",
		doc: "Strings unchanged; other values as JSON text.", example: `string(data.user)`, want: `"{\"name\":\" Ann \",\"id\":42}"`, call: fnString},
	{name: "to_string", params: []param{{"x", kValue}}, min: 1, result: "string", group: "values",
		doc: "Same as `string(x)`.", example: `to_string(1.5)`, want: `"1.5"`, call: fnString},
	{name: "number", params: []param{{"x", kindSet(Number, String)}}, min: 1, result: "number", group: "values",
		doc: "Numbers unchanged; a string holding exactly a JSON number is parsed.", example: `number("4.5")`, want: `4.5`, call: fnNumber},
	{name: "to_int", params: []param{{"x", kindSet(Number, String)}}, min: 1, result: "number", group: "values",
		doc:     "An integer: numbers (and strings holding a JSON number) truncated toward zero; out of the int64 range is an error.",
		example: `to_int("-7.9")`, want: `-7`, call: fnToInt},
	{name: "hash", params: []param{{"x", kValue}}, min: 1, result: "number", group: "values",
		doc:     "A stable hash for partition keys: FNV-1a 64 of `x`'s canonical JSON (sorted keys, no spaces, numbers in shortest form), low 53 bits, so values equal by `==` hash alike.",
		example: `hash("player-1")`, want: `6353280198902512`, call: fnHash},
	{name: "uuid", min: 0, result: "string", group: "values",
		doc: "A random (version 4) UUID from crypto/rand.", example: `len(uuid())`, want: `36`, call: fnUUID},
	{name: "delete", min: 0, result: "—", group: "values",
		doc: "Only as the whole value of a `set` target (`meta.tmp: delete()`): removes the target.", call: fnDelete},

	// strings
	{name: "lower", params: []param{{"s", kString}}, min: 1, result: "string", group: "strings",
		doc: "`s` in lower case.", example: `lower("ÀB")`, want: `"àb"`, call: fnCase(strings.ToLower)},
	{name: "upper", params: []param{{"s", kString}}, min: 1, result: "string", group: "strings",
		doc: "`s` in upper case.", example: `upper("àb")`, want: `"ÀB"`, call: fnCase(strings.ToUpper)},
	{name: "trim", params: []param{{"s", kString}, {"chars", kString}}, min: 1, result: "string", group: "strings",
		doc:     "`s` without leading and trailing white space, or without the characters of `chars`.",
		example: `trim(data.user.name)`, want: `"Ann"`, call: fnTrim},
	{name: "concat", params: []param{{"x", kText}}, min: 1, variadic: true, result: "string", group: "strings",
		doc: "Joins strings, numbers and booleans (as JSON text) into one string.", example: `concat("user_", data.user.id, "_", true)`, want: `"user_42_true"`, lazy: fnConcat},
	{name: "split", params: []param{{"s", kString}, {"sep", kString}}, min: 2, result: "array", group: "strings",
		doc:     "The substrings of `s` between the occurrences of `sep` (characters when `sep` is empty).",
		example: `split("a,b,,c", ",")`, want: `["a","b","","c"]`, call: fnSplit},
	{name: "join", params: []param{{"arr", kArray}, {"sep", kString}}, min: 2, result: "string", group: "strings",
		doc: "The elements of `arr` (strings, numbers, booleans) joined with `sep`.", example: `join(data.tags, "+")`, want: `"red+blue"`, call: fnJoin},
	{name: "replace", params: []param{{"s", kString}, {"old", kString}, {"new", kString}}, min: 3, result: "string", group: "strings",
		doc: "`s` with every occurrence of `old` replaced by `new`.", example: `replace("a-b-c", "-", "/")`, want: `"a/b/c"`, call: fnReplace},
	{name: "contains", params: []param{{"h", kindSet(String, Array)}, {"n", kValue}}, min: 2, result: "boolean", group: "strings",
		doc:     "Substring test when `h` is a string (`n` must be a string); element test, by `==`, when `h` is an array.",
		example: `contains(data.tags, "blue")`, want: `true`, call: fnContains},
	{name: "starts_with", params: []param{{"s", kString}, {"prefix", kString}}, min: 2, result: "boolean", group: "strings",
		doc: "Whether `s` begins with `prefix`.", example: `starts_with("warn_7", "warn_")`, want: `true`, call: fnAffix(strings.HasPrefix)},
	{name: "ends_with", params: []param{{"s", kString}, {"suffix", kString}}, min: 2, result: "boolean", group: "strings",
		doc: "Whether `s` ends with `suffix`.", example: `ends_with("a.json", ".json")`, want: `true`, call: fnAffix(strings.HasSuffix)},
	{name: "has_prefix", params: []param{{"s", kString}, {"prefix", kString}}, min: 2, result: "boolean", group: "strings",
		doc: "Same as `starts_with`.", example: `has_prefix("warn_7", "warn_")`, want: `true`, call: fnAffix(strings.HasPrefix)},
	{name: "has_suffix", params: []param{{"s", kString}, {"suffix", kString}}, min: 2, result: "boolean", group: "strings",
		doc: "Same as `ends_with`.", example: `has_suffix("a.json", ".json")`, want: `true`, call: fnAffix(strings.HasSuffix)},
	{name: "substr", params: []param{{"s", kString}, {"start", kInteger}, {"length", kInteger}}, min: 2, result: "string", group: "strings",
		doc:     "The characters of `s` from `start` (from 0; negative counts from the end), `length` of them or up to the end.",
		example: `substr("héllo", 1, 3)`, want: `"éll"`, call: fnSubstr},
	{name: "matches", params: []param{{"s", kString}, {"re", kString}}, min: 2, result: "boolean", group: "strings",
		doc:     "Whether `s` contains a match of the RE2 regular expression `re`, which must be a string literal (compiled once, checked when the flow loads).",
		example: `matches("id-042", "^id-[0-9]+$")`, want: `true`, call: fnMatches, prepare: prepareMatches},

	// time
	{name: "now", min: 0, result: "number", group: "time",
		doc: "The current time in Unix milliseconds, from the flow's clock.", example: `now()`, want: `1767323045678`,
		call: func(n *callNode, _ argv) (Value, error) { return intValue(n.opts.Now().UnixMilli()), nil }},
	{name: "now_s", min: 0, result: "number", group: "time",
		doc: "The current time in Unix seconds.", example: `now_s()`, want: `1767323045`,
		call: func(n *callNode, _ argv) (Value, error) { return intValue(n.opts.Now().Unix()), nil }},
	{name: "format_time", params: []param{{"ms", kInteger}, {"layout", kString}}, min: 2, result: "string", group: "time",
		doc:     "Unix milliseconds `ms` as text in UTC, by a Go layout (`\"2006-01-02 15:04\"`) or a name: " + layoutNames + ".",
		example: `format_time(data.ts, "RFC3339Milli")`, want: `"2026-01-02T03:04:05.678Z"`, call: fnFormatTime, prepare: prepareLayout},
	{name: "parse_time", params: []param{{"s", kString}, {"layout", kString}}, min: 2, result: "number", group: "time",
		doc:     "The Unix milliseconds of `s` read with a layout as for `format_time` (UTC unless `s` has a zone).",
		example: `parse_time("2026-01-02 03:04", "2006-01-02 15:04")`, want: `1767323040000`, call: fnParseTime, prepare: prepareLayout},
	{name: "window", params: []param{{"ms", kInteger}, {"size_ms", kInteger}}, min: 2, result: "number", group: "time",
		doc:     "The start of the tumbling window of `size_ms` (> 0) containing `ms`: `ms` rounded down to a multiple of `size_ms`.",
		example: `window(data.ts, 60000)`, want: `1767323040000`, call: fnWindow},
}

// funcIndex maps names to entries of funcTable; funcNames lists the names
// sorted, for messages.
var (
	funcIndex = func() map[string]*funcDef {
		m := make(map[string]*funcDef, len(funcTable))
		for i := range funcTable {
			m[funcTable[i].name] = &funcTable[i]
		}
		return m
	}()
	funcNames = func() []string {
		names := make([]string, 0, len(funcTable))
		for _, f := range funcTable {
			names = append(names, f.name)
		}
		sort.Strings(names)
		return names
	}()
)

// lookupFunc returns the built-in function called name.
func lookupFunc(name string) (*funcDef, bool) {
	f, ok := funcIndex[name]
	return f, ok
}

type callNode struct {
	span
	fn   *funcDef
	args []node
	opts *Options
	re   *regexp.Regexp // matches: the compiled literal pattern
}

func (n *callNode) eval(ev pipeline.Event) (Value, error) {
	if n.fn.lazy != nil {
		return n.fn.lazy(n, ev)
	}
	var args argv
	for i := range n.args {
		v, err := n.evalArg(ev, i)
		if err != nil {
			return Value{}, err
		}
		args[i] = v
	}
	return n.fn.call(n, args)
}

// evalArg evaluates argument i and checks its kind against its parameter.
func (n *callNode) evalArg(ev pipeline.Event, i int) (Value, error) {
	v, err := n.args[i].eval(ev)
	if err != nil {
		return Value{}, err
	}
	if k := n.fn.paramAt(i).kinds; !k.accepts(v) {
		if v.kind == Number && k.has(Number) { // not an integer
			return Value{}, n.valueErr(i, "is "+v.String()+", expected "+k.names("", true))
		}
		return Value{}, n.argErr(i, v, k.names("", true))
	}
	return v, nil
}

// arg evaluates argument i.
func (n *callNode) arg(ev pipeline.Event, i int) (Value, error) { return n.args[i].eval(ev) }

// argErr reports argument i of the wrong kind.
func (n *callNode) argErr(i int, v Value, want string) error {
	msg := n.argName(i) + ", "
	if v.kind == Missing {
		return evalErr(n.off, ErrMissing, msg+"is missing")
	}
	return evalErr(n.off, ErrType, msg+"is "+v.kind.article()+", expected "+want)
}

// argName names argument i for messages: "substr: argument 2, data.from".
func (n *callNode) argName(i int) string {
	return n.fn.name + ": argument " + strconv.Itoa(i+1) + ", " + n.args[i].source()
}

// valueErr reports argument i with a value of the right kind that is not
// valid, such as an unparsable time.
func (n *callNode) valueErr(i int, msg string) error {
	return evalErr(n.off, ErrType, n.argName(i)+", "+msg)
}

// integer returns argument i, checked against kInteger, as an int64.
func (n *callNode) integer(args argv, i int) (int64, error) {
	x, _ := args[i].Int()
	return x, nil
}

// limit checks that a result of size bytes is within Options.MaxStringBytes.
func (n *callNode) limit(size int) error {
	if size > n.opts.MaxStringBytes {
		return evalErr(n.off, ErrTooLarge, n.fn.name+": result would be "+strconv.Itoa(size)+
			" bytes, limit is "+strconv.Itoa(n.opts.MaxStringBytes)+" (Options.MaxStringBytes)")
	}
	return nil
}

// str returns s as a value once its size is checked.
func (n *callNode) str(s string) (Value, error) {
	if err := n.limit(len(s)); err != nil {
		return Value{}, err
	}
	return stringValue(s), nil
}

// fnDefault returns its first argument unless it is missing or null, and
// only then evaluates the fallback.
func fnDefault(n *callNode, ev pipeline.Event) (Value, error) {
	v, err := n.arg(ev, 0)
	if err != nil {
		return Value{}, err
	}
	if v.kind != Missing && v.kind != Null {
		return v, nil
	}
	return n.arg(ev, 1)
}

func fnCoalesce(n *callNode, ev pipeline.Event) (Value, error) {
	var v Value
	for i := range n.args {
		var err error
		if v, err = n.arg(ev, i); err != nil {
			return Value{}, err
		}
		if v.kind != Missing && v.kind != Null {
			return v, nil
		}
	}
	return v, nil
}

func fnIf(n *callNode, ev pipeline.Event) (Value, error) {
	c, err := n.arg(ev, 0)
	if err != nil {
		return Value{}, err
	}
	if c.kind != Bool {
		if c.kind == Missing {
			return Value{}, evalErr(n.off, ErrNotBoolean, n.argName(0)+", is missing, expected true or false")
		}
		return Value{}, evalErr(n.off, ErrNotBoolean, n.argName(0)+", is "+c.kind.article()+", expected true or false")
	}
	if c.b {
		return n.arg(ev, 1)
	}
	return n.arg(ev, 2)
}

func fnType(_ *callNode, a argv) (Value, error) { return stringValue(a[0].kind.String()), nil }

func fnString(n *callNode, a argv) (Value, error) {
	if a[0].kind == String {
		return a[0], nil
	}
	return n.str(string(a[0].AppendJSON(nil)))
}

func fnNumber(n *callNode, a argv) (Value, error) {
	v := a[0]
	if v.kind == Number {
		return v, nil
	}
	if !isJSONNumber(v.s) {
		return Value{}, evalErr(n.off, ErrType, n.fn.name+": "+strconv.Quote(v.s)+" is not a JSON number")
	}
	num := numberFromText(v.s)
	if !num.isInt && (num.f > maxFinite || num.f < -maxFinite) {
		return Value{}, evalErr(n.off, ErrArithmetic, n.fn.name+": "+v.s+" is out of range")
	}
	return num, nil
}

func fnToInt(n *callNode, a argv) (Value, error) {
	v, err := fnNumber(n, a)
	if err != nil {
		return Value{}, err
	}
	if v.isInt {
		return intValue(v.i), nil
	}
	if i, ok := floatToInt(math.Trunc(v.f)); ok {
		return intValue(i), nil
	}
	return Value{}, evalErr(n.off, ErrArithmetic, "to_int: "+v.String()+" is out of the int64 range")
}

func fnLen(_ *callNode, a argv) (Value, error) {
	v := a[0]
	switch v.kind {
	case String:
		return intValue(int64(utf8.RuneCountInString(v.s))), nil
	case Array:
		return intValue(int64(len(gjson.Parse(v.s).Array()))), nil
	}
	_, count := objectMembers(v.s)
	return intValue(int64(count)), nil
}

func fnKeys(n *callNode, a argv) (Value, error) {
	b := []byte{'['}
	seen := map[string]bool{}
	gjson.Parse(a[0].s).ForEach(func(k, _ gjson.Result) bool {
		if !seen[k.Str] {
			if len(seen) > 0 {
				b = append(b, ',')
			}
			seen[k.Str] = true
			b = appendString(b, k.Str)
		}
		return true
	})
	b = append(b, ']')
	return Value{kind: Array, s: string(b)}, nil
}

// hashMask keeps 53 bits of the hash, so that it is exact in every JSON
// reader (JavaScript numbers) and never negative.
const hashMask = 1<<53 - 1

func fnHash(_ *callNode, a argv) (Value, error) {
	h := fnv.New64a()
	h.Write(appendCanonical(nil, a[0]))
	return intValue(int64(h.Sum64() & hashMask)), nil
}

// appendCanonical appends the canonical JSON of v: objects with sorted
// keys (the first of duplicate keys, as paths read), no spaces, numbers as
// == compares them (integral numbers as integers, others in shortest
// form), strings with JSON escapes. Values equal by == have one canonical
// form.
func appendCanonical(dst []byte, v Value) []byte {
	switch v.kind {
	case Number:
		if v.isInt {
			return strconv.AppendInt(dst, v.i, 10)
		}
		if i, ok := floatToInt(v.f); ok {
			return strconv.AppendInt(dst, i, 10)
		}
		return appendFloat(dst, v.f)
	case Array:
		dst = append(dst, '[')
		first := true
		gjson.Parse(v.s).ForEach(func(_, e gjson.Result) bool {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = appendCanonical(dst, fromResult(e))
			return true
		})
		return append(dst, ']')
	case Object:
		m, _ := objectMembers(v.s)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		dst = append(dst, '{')
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = appendCanonical(dst, fromResult(m[k]))
		}
		return append(dst, '}')
	}
	return v.AppendJSON(dst)
}

func fnUUID(n *callNode, _ argv) (Value, error) {
	u, err := uuid.NewRandomFromReader(n.opts.Rand)
	if err != nil {
		return Value{}, evalErr(n.off, nil, "uuid: reading randomness: "+err.Error())
	}
	return stringValue(u.String()), nil
}

func fnDelete(n *callNode, _ argv) (Value, error) {
	return Value{}, evalErr(n.off, ErrType, "delete() is only valid as the whole value of a set target")
}

func fnCase(f func(string) string) func(*callNode, argv) (Value, error) {
	return func(n *callNode, a argv) (Value, error) { return n.str(f(a[0].s)) }
}

func fnAffix(f func(s, affix string) bool) func(*callNode, argv) (Value, error) {
	return func(_ *callNode, a argv) (Value, error) { return boolValue(f(a[0].s, a[1].s)), nil }
}

func fnTrim(n *callNode, a argv) (Value, error) {
	if len(n.args) == 1 {
		return stringValue(strings.TrimSpace(a[0].s)), nil
	}
	return stringValue(strings.Trim(a[0].s, a[1].s)), nil
}

func fnConcat(n *callNode, ev pipeline.Event) (Value, error) {
	var b []byte
	for i := range n.args {
		v, err := n.evalArg(ev, i)
		if err != nil {
			return Value{}, err
		}
		b = v.appendText(b)
		if err := n.limit(len(b)); err != nil {
			return Value{}, err
		}
	}
	return stringValue(string(b)), nil
}

func fnSplit(n *callNode, a argv) (Value, error) {
	s, sep := a[0].s, a[1].s
	pieces := utf8.RuneCountInString(s)
	if sep != "" {
		pieces = strings.Count(s, sep) + 1
	}
	// Each piece costs at least its quotes and a comma.
	if err := n.limit(len(s) + 3*pieces); err != nil {
		return Value{}, err
	}
	b := []byte{'['}
	for i, p := range strings.Split(s, sep) {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, p)
	}
	b = append(b, ']')
	if err := n.limit(len(b)); err != nil {
		return Value{}, err
	}
	return Value{kind: Array, s: string(b)}, nil
}

func fnJoin(n *callNode, a argv) (Value, error) {
	var b []byte
	var err error
	i := 0
	gjson.Parse(a[0].s).ForEach(func(_, e gjson.Result) bool {
		v := fromResult(e)
		if !kText.has(v.kind) {
			err = evalErr(n.off, ErrType, n.argName(0)+", element "+strconv.Itoa(i)+" is "+v.kind.article()+
				", expected a string, a number or a boolean")
			return false
		}
		if i > 0 {
			b = append(b, a[1].s...)
		}
		b = v.appendText(b)
		i++
		if len(b) > n.opts.MaxStringBytes {
			err = n.limit(len(b))
			return false
		}
		return true
	})
	if err != nil {
		return Value{}, err
	}
	return stringValue(string(b)), nil
}

func fnReplace(n *callNode, a argv) (Value, error) {
	s, old, repl := a[0].s, a[1].s, a[2].s
	count := strings.Count(s, old)
	if err := n.limit(len(s) + count*(len(repl)-len(old))); err != nil {
		return Value{}, err
	}
	return stringValue(strings.ReplaceAll(s, old, repl)), nil
}

func fnContains(n *callNode, a argv) (Value, error) {
	h, needle := a[0], a[1]
	if h.kind == String {
		if needle.kind != String {
			return Value{}, n.argErr(1, needle, "a string (the first argument is a string)")
		}
		return boolValue(strings.Contains(h.s, needle.s)), nil
	}
	found := false
	gjson.Parse(h.s).ForEach(func(_, e gjson.Result) bool {
		found = equal(fromResult(e), needle)
		return !found
	})
	return boolValue(found), nil
}

func fnSubstr(n *callNode, a argv) (Value, error) {
	start, err := n.integer(a, 1)
	if err != nil {
		return Value{}, err
	}
	runes := int64(utf8.RuneCountInString(a[0].s))
	if start < 0 {
		start = max(0, runes+start)
	}
	end := runes
	if len(n.args) == 3 {
		length, err := n.integer(a, 2)
		if err != nil {
			return Value{}, err
		}
		if length < 0 {
			return Value{}, n.valueErr(2, "is "+strconv.FormatInt(length, 10)+", expected 0 or more")
		}
		if length < end-start {
			end = start + length
		}
	}
	if start >= end {
		return stringValue(""), nil
	}
	// Convert character offsets to byte offsets.
	s := a[0].s
	from, to, i := len(s), len(s), int64(0)
	for off := range s {
		if i == start {
			from = off
		}
		if i == end {
			to = off
			break
		}
		i++
	}
	return stringValue(s[from:to]), nil
}

func prepareMatches(p *parser, n *callNode) error {
	lit, ok := n.args[1].(*literalNode)
	off := n.args[1].offset()
	if !ok || lit.v.kind != String {
		return p.errAt(off, "matches: the pattern must be a string literal, so that it is compiled once")
	}
	re, err := regexp.Compile(lit.v.s)
	if err != nil {
		return p.errAt(off, "matches: invalid regular expression: "+err.Error())
	}
	n.re = re
	return nil
}

func fnMatches(n *callNode, a argv) (Value, error) {
	return boolValue(n.re.MatchString(a[0].s)), nil
}

// layouts are the named layouts of format_time and parse_time.
var layouts = map[string]string{
	"RFC3339":      time.RFC3339,
	"RFC3339Milli": "2006-01-02T15:04:05.000Z07:00",
	"RFC3339Nano":  time.RFC3339Nano,
	"RFC1123":      time.RFC1123,
	"DateTime":     time.DateTime,
	"DateOnly":     time.DateOnly,
	"TimeOnly":     time.TimeOnly,
}

const layoutNames = "`RFC3339`, `RFC3339Milli`, `RFC3339Nano`, `RFC1123`, `DateTime`, `DateOnly`, `TimeOnly`"

// layoutOf resolves a layout name; it returns "" for a layout with no
// date or time element, which Go would copy as literal text.
func layoutOf(s string) string {
	if l, ok := layouts[s]; ok {
		return l
	}
	if time.Unix(0, 0).UTC().Format(s) == s {
		return ""
	}
	return s
}

func badLayout(layout string) string {
	return "layout " + strconv.Quote(layout) + " has no date or time element (write Go's reference time, " +
		"\"2006-01-02T15:04:05Z07:00\", or a name: RFC3339, RFC3339Milli, DateTime, DateOnly, ...)"
}

// prepareLayout checks a literal layout at parse time.
func prepareLayout(p *parser, n *callNode) error {
	if lit, ok := n.args[1].(*literalNode); ok && lit.v.kind == String && layoutOf(lit.v.s) == "" {
		return p.errAt(lit.off, n.fn.name+": "+badLayout(lit.v.s))
	}
	return nil
}

func fnFormatTime(n *callNode, a argv) (Value, error) {
	ms, err := n.integer(a, 0)
	if err != nil {
		return Value{}, err
	}
	layout := layoutOf(a[1].s)
	if layout == "" {
		return Value{}, n.valueErr(1, badLayout(a[1].s))
	}
	return n.str(time.UnixMilli(ms).UTC().Format(layout))
}

func fnParseTime(n *callNode, a argv) (Value, error) {
	layout := layoutOf(a[1].s)
	if layout == "" {
		return Value{}, n.valueErr(1, badLayout(a[1].s))
	}
	t, err := time.Parse(layout, a[0].s)
	if err != nil {
		return Value{}, n.valueErr(0, "is not a time in layout "+strconv.Quote(a[1].s)+": "+err.Error())
	}
	return intValue(t.UnixMilli()), nil
}

func fnWindow(n *callNode, a argv) (Value, error) {
	ms, err := n.integer(a, 0)
	if err != nil {
		return Value{}, err
	}
	size, err := n.integer(a, 1)
	if err != nil {
		return Value{}, err
	}
	if size <= 0 {
		return Value{}, evalErr(n.off, ErrArithmetic, n.argName(1)+", is "+strconv.FormatInt(size, 10)+", expected a window size above 0")
	}
	r := ms % size
	if r < 0 {
		r += size
	}
	if ms < math.MinInt64+r {
		return Value{}, evalErr(n.off, ErrArithmetic, "window: the start of the window of "+strconv.FormatInt(ms, 10)+" is out of the int64 range")
	}
	return intValue(ms - r), nil
}
