package expr

import (
	"bytes"
	"errors"
	"hash/fnv"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

var fixedNow = time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC)

func fixedOptions() Options {
	return Options{
		Now:  func() time.Time { return fixedNow },
		Rand: bytes.NewReader(make([]byte, 1024)),
	}
}

func evalWith(t *testing.T, src string, opts Options, ev pipeline.Event) (Value, error) {
	t.Helper()
	e, err := ParseWith(src, opts)
	if err != nil {
		t.Fatalf("Parse(%q): %v", src, err)
	}
	return e.Eval(ev)
}

var funcEvent = pipeline.Event{
	Data: []byte(`{"s":"  Hello, World  ","csv":"a,b,c","tags":["x","y",3,true],"objs":[{"a":1}],"obj":{"b":1,"a":2,"b":3},` +
		`"n":42,"f":2.5,"neg":-1,"ts":1767323045678,"nil":null,"ok":true,"re":"^a","uni":"héllo😀"}`),
	Meta: []byte(`{"kv":{"put":"k"},"tmp":1}`),
}

func TestFunctions(t *testing.T) {
	tests := []struct {
		src  string
		want string // JSON of the result
	}{
		// values
		{`exists(data.nil)`, `true`},
		{`exists(data.nope)`, `false`},
		{`default(data.nope, 1)`, `1`},
		{`default(data.n, 1 / 0)`, `42`}, // fallback not evaluated
		{`coalesce(data.nope, data.nil, data.n, 1 / 0)`, `42`},
		{`coalesce(data.nope, data.nil)`, `null`},
		{`if(data.ok, "y", 1 / 0)`, `"y"`},
		{`if(!data.ok, 1 / 0, "n")`, `"n"`},
		{`data.ok ? "y" : 1 / 0`, `"y"`},
		{`data.n > 50 ? "big" : data.n > 10 ? "mid" : "small"`, `"mid"`},
		{`false || true ? 1 : 2`, `1`}, // ?: binds below ||
		{`{"k": data.ok ? 1 : 2}`, `{"k":1}`},
		{`[true ? 1 : 2, (false ? 3 : 4)]`, `[1,4]`},
		{`type(data.nope)`, `"missing"`},
		{`type(data.nil)`, `"null"`},
		{`type(data.ok)`, `"boolean"`},
		{`type(data.n)`, `"number"`},
		{`type(data.s)`, `"string"`},
		{`type(data.tags)`, `"array"`},
		{`type(data.obj)`, `"object"`},
		{`len(data.uni)`, `6`},
		{`len(data.tags)`, `4`},
		{`len(data.obj)`, `2`},
		{`keys(data.obj)`, `["b","a"]`},
		{`keys({})`, `[]`},
		{`to_string(data.n)`, `"42"`},
		{`to_string(data.tags)`, `"[\"x\",\"y\",3,true]"`},
		{`to_string("s")`, `"s"`},
		{`to_int(data.f)`, `2`},
		{`to_int(-2.9)`, `-2`},
		{`to_int("12")`, `12`},
		{`to_int("-0.5")`, `0`},
		{`to_int(9007199254740993)`, `9007199254740993`},
		{`number("1.5")`, `1.5`},
		{`len(uuid())`, `36`},
		{`uuid()`, `"00000000-0000-4000-8000-000000000000"`},
		// strings
		{`lower("ÀBC")`, `"àbc"`},
		{`upper(data.uni)`, `"HÉLLO😀"`},
		{`trim(data.s)`, `"Hello, World"`},
		{`trim("xxaxx", "x")`, `"a"`},
		{`concat("a", 1, true, 2.5)`, `"a1true2.5"`},
		{`concat("only")`, `"only"`},
		{`split(data.csv, ",")`, `["a","b","c"]`},
		{`split("", ",")`, `[""]`},
		{`split("hé", "")`, `["h","é"]`},
		{`split("a\"b", "x")`, `["a\"b"]`},
		{`join(data.tags, "-")`, `"x-y-3-true"`},
		{`join([], "-")`, `""`},
		{`replace("a.b.c", ".", "::")`, `"a::b::c"`},
		{`replace("abc", "z", "y")`, `"abc"`},
		{`contains("abc", "b")`, `true`},
		{`contains(data.tags, 3)`, `true`},
		{`contains(data.objs, {"a": 1.0})`, `true`},
		{`starts_with(data.csv, "a,")`, `true`},
		{`ends_with(data.csv, "b")`, `false`},
		{`has_prefix("ab", "a")`, `true`},
		{`has_suffix("ab", "b")`, `true`},
		{`substr(data.uni, 1, 3)`, `"éll"`},
		{`substr(data.uni, 4)`, `"o😀"`},
		{`substr(data.uni, -2)`, `"o😀"`},
		{`substr(data.uni, -100, 2)`, `"hé"`},
		{`substr(data.uni, 10)`, `""`},
		{`substr(data.uni, 2, 0)`, `""`},
		{`substr("abc", 1, 100)`, `"bc"`},
		{`matches("id-42", "^id-[0-9]+$")`, `true`},
		{`matches("id-4x", "^id-[0-9]+$")`, `false`},
		{`matches(data.uni, "😀")`, `true`},
		// time
		{`now()`, `1767323045678`},
		{`now_s()`, `1767323045`},
		{`format_time(data.ts, "RFC3339")`, `"2026-01-02T03:04:05Z"`},
		{`format_time(data.ts, "RFC3339Milli")`, `"2026-01-02T03:04:05.678Z"`},
		{`format_time(0, "DateTime")`, `"1970-01-01 00:00:00"`},
		{`format_time(-1, "2006-01-02T15:04:05.000")`, `"1969-12-31T23:59:59.999"`},
		{`format_time(now(), "2006-01")`, `"2026-01"`},
		{`parse_time("2026-01-02T03:04:05.678Z", "RFC3339")`, `1767323045678`},
		{`parse_time("2026-01-02T04:04:05+01:00", "RFC3339")`, `1767323045000`},
		{`parse_time("2026-01-02", "DateOnly")`, `1767312000000`},
		{`parse_time(format_time(data.ts, "RFC3339Milli"), "RFC3339Milli") == data.ts`, `true`},
		{`window(data.ts, 60000)`, `1767323040000`},
		{`window(1000, 1000)`, `1000`},
		{`window(999, 1000)`, `0`},
		{`window(0, 1000)`, `0`},
		{`window(-1, 1000)`, `-1000`},
		{`window(-1000, 1000)`, `-1000`},
		{`window(-1001, 1000)`, `-2000`},
		{`window(7, 1)`, `7`},
		{`window(now(), 1000) + 1000 > now()`, `true`},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			v, err := evalWith(t, tt.src, fixedOptions(), funcEvent)
			if err != nil {
				t.Fatal(err)
			}
			if got := v.String(); got != tt.want {
				t.Errorf("= %s, want %s", got, tt.want)
			}
		})
	}
}

func TestFunctionErrors(t *testing.T) {
	small := fixedOptions()
	small.MaxStringBytes = 16
	tests := []struct {
		src      string
		opts     Options
		sentinel error
		msg      string
	}{
		{src: `if(data.n, 1, 2)`, sentinel: ErrNotBoolean, msg: `if: argument 1, data.n, is a number, expected true or false`},
		{src: `if(data.nope, 1, 2)`, sentinel: ErrNotBoolean, msg: `is missing`},
		{src: `data.n ? 1 : 2`, sentinel: ErrNotBoolean, msg: `condition of '?' must be true or false`},
		{src: `keys(data.tags)`, sentinel: ErrType, msg: `keys: argument 1, data.tags, is an array, expected an object`},
		{src: `keys(data.nope)`, sentinel: ErrMissing, msg: `keys: argument 1, data.nope, is missing`},
		{src: `to_int(data.ok)`, sentinel: ErrType, msg: `to_int: argument 1, data.ok, is a boolean, expected a number or a string`},
		{src: `to_int("x")`, sentinel: ErrType, msg: `to_int: "x" is not a JSON number`},
		{src: `to_int(1e300)`, sentinel: ErrArithmetic, msg: `out of the int64 range`},
		{src: `to_string(data.nope)`, sentinel: ErrMissing, msg: `to_string: argument 1`},
		{src: `hash(data.nope)`, sentinel: ErrMissing, msg: `hash: argument 1, data.nope, is missing`},
		{src: `uuid()`, opts: Options{Rand: bytes.NewReader(nil)}, msg: `uuid: reading randomness`},
		{src: `trim(data.n)`, sentinel: ErrType, msg: `trim: argument 1, data.n, is a number, expected a string`},
		{src: `trim(data.s, data.nil)`, sentinel: ErrType, msg: `trim: argument 2, data.nil, is null`},
		{src: `concat("a", data.nil)`, sentinel: ErrType, msg: `concat: argument 2, data.nil, is null, expected a boolean, a number or a string`},
		{src: `concat("a", "b", data.nope)`, sentinel: ErrMissing, msg: `concat: argument 3, data.nope, is missing`},
		{src: `concat("a", data.tags)`, sentinel: ErrType, msg: `is an array`},
		{src: `split(data.n, ",")`, sentinel: ErrType, msg: `split: argument 1`},
		{src: `join(data.objs, ",")`, sentinel: ErrType, msg: `join: argument 1, data.objs, element 0 is an object`},
		{src: `join(data.csv, ",")`, sentinel: ErrType, msg: `join: argument 1, data.csv, is a string, expected an array`},
		{src: `replace("a", "a")`, msg: `unreachable`}, // arity: parse error, see TestFunctionParseErrors
		{src: `substr(data.s, 1.5)`, sentinel: ErrType, msg: `substr: argument 2, 1.5, is 1.5, expected an integer`},
		{src: `substr(data.s, 0, -1)`, sentinel: ErrType, msg: `substr: argument 3, -1, is -1, expected 0 or more`},
		{src: `substr(data.n, 0)`, sentinel: ErrType, msg: `substr: argument 1`},
		{src: `matches(data.n, "a")`, sentinel: ErrType, msg: `matches: argument 1`},
		{src: `starts_with(data.nope, "a")`, sentinel: ErrMissing, msg: `starts_with: argument 1, data.nope, is missing`},
		{src: `ends_with("a", 1)`, sentinel: ErrType, msg: `ends_with: argument 2`},
		{src: `lower(data.nil)`, sentinel: ErrType, msg: `lower: argument 1, data.nil, is null`},
		// too long
		{src: `concat(data.s, data.s)`, opts: small, sentinel: ErrTooLarge, msg: `concat: result would be 32 bytes, limit is 16 (Options.MaxStringBytes)`},
		{src: `replace(data.csv, ",", "-------")`, opts: small, sentinel: ErrTooLarge, msg: `replace: result would be 17 bytes, limit is 16`},
		{src: `join(data.tags, "-----")`, opts: small, sentinel: ErrTooLarge, msg: `join: result would be`},
		{src: `split(data.s, "")`, opts: small, sentinel: ErrTooLarge, msg: `split: result would be`},
		{src: `upper(data.s + "x")`, opts: small, sentinel: ErrTooLarge, msg: `upper: result would be 17 bytes`},
		{src: `to_string({"k": data.tags})`, opts: small, sentinel: ErrTooLarge, msg: `to_string: result would be`},
		{src: `format_time(0, data.s + "2006-01-02")`, opts: small, sentinel: ErrTooLarge, msg: `format_time: result would be 26 bytes`},
		// time
		{src: `format_time(data.s, "RFC3339")`, sentinel: ErrType, msg: `format_time: argument 1, data.s, is a string, expected an integer`},
		{src: `format_time(1.5, "RFC3339")`, sentinel: ErrType, msg: `format_time: argument 1, 1.5, is 1.5, expected an integer`},
		{src: `format_time(0, data.csv)`, sentinel: ErrType, msg: `format_time: argument 2, data.csv, layout "a,b,c" has no date or time element`},
		{src: `format_time(0, data.nope)`, sentinel: ErrMissing, msg: `format_time: argument 2, data.nope, is missing`},
		{src: `parse_time("2026-13-01", "DateOnly")`, sentinel: ErrType, msg: `parse_time: argument 1, "2026-13-01", is not a time in layout "DateOnly"`},
		{src: `parse_time(data.n, "DateOnly")`, sentinel: ErrType, msg: `parse_time: argument 1, data.n, is a number`},
		{src: `parse_time("x", data.csv)`, sentinel: ErrType, msg: `layout "a,b,c" has no date or time element`},
		{src: `window(data.ts, 0)`, sentinel: ErrArithmetic, msg: `window: argument 2, 0, is 0, expected a window size above 0`},
		{src: `window(data.ts, -60000)`, sentinel: ErrArithmetic, msg: `expected a window size above 0`},
		{src: `window(data.f, 10)`, sentinel: ErrType, msg: `window: argument 1, data.f, is 2.5, expected an integer`},
		{src: `window(1e300, 10)`, sentinel: ErrType, msg: `window: argument 1, 1e300, is 1e+300, expected an integer`},
		{src: `substr("abc", 9223372036854775808)`, sentinel: ErrType, msg: `expected an integer`},
		{src: `window(data.nope, 10)`, sentinel: ErrMissing, msg: `window: argument 1, data.nope, is missing`},
		{src: `window(-9223372036854775807, 1000)`, sentinel: ErrArithmetic, msg: `out of the int64 range`},
		{src: `delete()`, sentinel: ErrType, msg: `delete() is only valid as the whole value of a set target`},
	}
	for _, tt := range tests {
		if tt.msg == "unreachable" {
			continue
		}
		t.Run(tt.src, func(t *testing.T) {
			opts := tt.opts
			if opts.Now == nil && opts.Rand == nil {
				opts = fixedOptions()
			}
			_, err := evalWith(t, tt.src, opts, funcEvent)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrEval) || (tt.sentinel != nil && !errors.Is(err, tt.sentinel)) {
				t.Errorf("error %v does not wrap ErrEval and %v", err, tt.sentinel)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
		})
	}
}

func TestFunctionParseErrors(t *testing.T) {
	tests := []struct {
		src string
		msg string
		col int
	}{
		{`nwo()`, `unknown function 'nwo' (did you mean "now"?); functions: coalesce, concat, contains,`, 1},
		{`foo(1)`, `unknown function 'foo'; functions: coalesce, concat, contains, default, delete, ends_with, exists, format_time,`, 1},
		{`replace("a", "a")`, `replace takes 3 arguments, got 2: replace(s, old, new)`, 1},
		{`trim()`, `trim takes 1 to 2 arguments, got 0: trim(s[, chars])`, 1},
		{`substr("a", 1, 2, 3)`, `substr takes 2 to 3 arguments, got 4: substr(s, start[, length])`, 1},
		{`concat()`, `concat takes at least 1 argument, got 0: concat(x, ...)`, 1},
		{`coalesce(1)`, `coalesce takes at least 2 arguments, got 1`, 1},
		{`now(1)`, `now takes 0 arguments, got 1: now()`, 1},
		{`1 + if(true, 1)`, `if takes 3 arguments, got 2`, 5},
		{`matches(data.s, "a(")`, `matches: invalid regular expression: error parsing regexp: missing closing ): ` + "`a(`", 17},
		{`matches(data.s, "[z-a]")`, `invalid regular expression`, 17},
		{`matches(data.s, data.re)`, `matches: the pattern must be a string literal`, 17},
		{`matches(data.s, "a" + "b")`, `the pattern must be a string literal`, 21},
		{`format_time(0, "YYYY-MM-DD")`, `format_time: layout "YYYY-MM-DD" has no date or time element`, 16},
		{`parse_time("x",  "bad")`, `parse_time: layout "bad" has no date or time element`, 18},
		{`data.a == 1 and data.b == 2`, `(write '&&' instead of 'and')`, 13},
		{`data.a == 1 or data.b == 2`, `(write '||' instead of 'or')`, 13},
		{`data.a == 1 AND data.b == 2`, `(write '&&' instead of 'AND')`, 13},
		{`not data.a`, `unknown name 'not' (write '!' instead of 'not')`, 1},
		{`not(data.a)`, `unknown function 'not' (write '!' instead of 'not')`, 1},
		{`exists(data.a and data.b)`, `expected ',' or ')', found 'a' (write '&&' instead of 'and')`, 15},
		{`data.a ? 1`, `expected ':' of the conditional`, 11},
		{`data.a ? : 2`, `expected a value`, 10},
		{`1 + delete()`, `delete() must be the whole expression`, 5},
		{`{"a": delete()}`, `delete() must be the whole expression`, 7},
		{strings.Repeat("true ? ", 300) + "1 : 2", `nested too deeply`, 0},
	}
	for _, tt := range tests {
		name := tt.src
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			e, err := Parse(tt.src)
			if err == nil {
				t.Fatalf("Parse succeeded: %v", e)
			}
			var se *SyntaxError
			if !errors.As(err, &se) || !errors.Is(err, ErrSyntax) {
				t.Fatalf("error %v is not a *SyntaxError", err)
			}
			if !strings.Contains(se.Msg, tt.msg) {
				t.Errorf("message %q does not contain %q", se.Msg, tt.msg)
			}
			if tt.col != 0 && se.Column != tt.col {
				t.Errorf("column = %d, want %d\n%s", se.Column, tt.col, se.Caret())
			}
		})
	}
}

// TestHashGolden pins hash values: a change of algorithm or of the
// canonical form breaks partitioning across versions and must fail here.
func TestHashGolden(t *testing.T) {
	tests := []struct {
		src  string
		want int64
	}{
		{`hash("player-1")`, 6353280198902512},
		{`hash("")`, 3507475187015205},
		{`hash(42)`, 4079221235356195},
		{`hash(null)`, 7816128898336996},
		{`hash(true)`, 8049452976553893},
		{`hash({"b": [1, "x"], "a": null})`, 4761305063207484},
		{`hash(data.obj)`, 8823000119041027}, // {"a":2,"b":1}: the first of duplicate keys
		{`hash({"a": 2, "b": 1})`, 8823000119041027},
	}
	for _, tt := range tests {
		v, err := evalWith(t, tt.src, Options{}, funcEvent)
		if err != nil {
			t.Fatalf("%s: %v", tt.src, err)
		}
		if got, _ := v.Int(); got != tt.want {
			t.Errorf("%s = %d, want %d", tt.src, got, tt.want)
		}
	}
}

// TestHashCanonical checks that values equal by == hash alike, and that
// the hash is FNV-1a 64 of the canonical JSON, low 53 bits.
func TestHashCanonical(t *testing.T) {
	ev := pipeline.Event{Data: []byte(`{"a":{"y": [1.0, 2e0], "x": "s"},"b":{"x":"s","y":[1,2]},"c":1.50,"d":1.5,"e":12345678901234567890}`)}
	for _, pair := range [][2]string{{`data.a`, `data.b`}, {`data.c`, `data.d`}, {`1`, `1.0`}, {`data.e`, `12345678901234567890`}} {
		src := `hash(` + pair[0] + `) == hash(` + pair[1] + `) && ` + pair[0] + ` == ` + pair[1]
		v, err := evalWith(t, src, Options{}, ev)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := v.Bool(); !b {
			t.Errorf("%s is false", src)
		}
	}
	v, err := evalWith(t, `hash(data.a)`, Options{}, ev)
	if err != nil {
		t.Fatal(err)
	}
	h := fnv.New64a()
	h.Write([]byte(`{"x":"s","y":[1,2]}`))
	if got, _ := v.Int(); got != int64(h.Sum64()&(1<<53-1)) {
		t.Errorf("hash(data.a) = %d, want FNV-1a 64 of the canonical JSON masked to 53 bits, %d", got, h.Sum64()&(1<<53-1))
	}
	if got, _ := v.Int(); got < 0 || got > math.MaxInt64>>10 {
		t.Errorf("hash out of [0, 2^53): %d", got)
	}
}

// TestNowUsesInjectedClock checks that now() reads Options.Now at every
// evaluation and never the real time.
func TestNowUsesInjectedClock(t *testing.T) {
	at := time.UnixMilli(1000).UTC()
	e, err := ParseWith(`[now(), now_s(), window(now(), 60000)]`, Options{Now: func() time.Time { return at }})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`[1000,1,0]`, `[61500,61,60000]`} {
		v, err := e.Eval(pipeline.Event{})
		if err != nil {
			t.Fatal(err)
		}
		if got := v.String(); got != want {
			t.Errorf("= %s, want %s", got, want)
		}
		at = time.UnixMilli(61500)
	}
	// The default clock is the real one.
	v, err := evalWith(t, `now()`, Options{}, pipeline.Event{})
	if err != nil {
		t.Fatal(err)
	}
	if ms, _ := v.Int(); time.Since(time.UnixMilli(ms)).Abs() > time.Hour {
		t.Errorf("now() with the default clock = %d, far from the real time", ms)
	}
}

func TestOptionsValidate(t *testing.T) {
	_, err := ParseWith(`1`, Options{MaxStringBytes: -1})
	if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), "MaxStringBytes is -1") {
		t.Errorf("negative MaxStringBytes: %v", err)
	}
}

// TestMatchesCompiledOnce checks that the pattern is compiled at parse
// time and shared by every evaluation.
func TestMatchesCompiledOnce(t *testing.T) {
	e, err := Parse(`matches(data.s, "^a+$")`)
	if err != nil {
		t.Fatal(err)
	}
	call := e.root.(*callNode)
	if call.re == nil {
		t.Fatal("pattern not compiled at parse time")
	}
	re := call.re
	for _, s := range []string{`"aaa"`, `"ab"`} {
		if _, err := e.Eval(pipeline.Event{Data: []byte(`{"s":` + s + `}`)}); err != nil {
			t.Fatal(err)
		}
	}
	if call.re != re {
		t.Error("pattern recompiled")
	}
}

func TestIsDelete(t *testing.T) {
	for src, want := range map[string]bool{`delete()`: true, ` delete( ) `: true, `exists(data.a)`: false} {
		e, err := Parse(src)
		if err != nil {
			t.Fatal(err)
		}
		if e.IsDelete() != want {
			t.Errorf("%q: IsDelete = %v", src, !want)
		}
	}
}
