package expr

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

func TestParseValid(t *testing.T) {
	for _, src := range []string{
		`1`, `0`, `-0`, `0.5`, `1e10`, `1E-3`, `1.5e+2`,
		`""`, `''`, `"\"\\\/\b\f\n\r\t\u0041"`, `'\''`,
		`true`, `false`, `null`,
		`data`, `meta`, `payload`, `data.a.b.c`, `data.items.0.x`, `data["a b"]["c"]`, `data[ 0 ]`, `data.a_b9`,
		`{}`, `[]`, `{"a": {"b": [1, [2]]}}`, `{a: 1, 'b': 2}`,
		`((1))`, `!!true`, `- -1`, `1-1`, `data.x-1`, `1 - -1`,
		`exists(data.x)`, `len( "x" )`, `contains(data.a, 1)`, `default(data.a, {})`,
		`1 < 2 == true`, `(1 < 2) == (2 < 3)`,
		"data.a\n&&\tdata.b",
	} {
		e, err := Parse(src)
		if err != nil {
			t.Errorf("Parse(%q): %v", src, err)
			continue
		}
		if e.String() != src {
			t.Errorf("String() = %q, want %q", e.String(), src)
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		src  string
		msg  string
		line int
		col  int
	}{
		{``, `empty expression`, 1, 1},
		{`   `, `empty expression`, 1, 4},
		{`data.x == (1 + 2`, `expected ')'`, 1, 17},
		{`(1 + 2 3`, `expected ')', found '3'`, 1, 8},
		{`1 +`, `unexpected end of expression, expected a value`, 1, 4},
		{`1 2`, `expected an operator or the end of the expression`, 1, 3},
		{`data.`, `expected a key after '.'`, 1, 6},
		{`data..x`, `expected a key after '.'`, 1, 6},
		{`data[`, `expected an index or a quoted key`, 1, 6},
		{`data[x]`, `expected an index or a quoted key`, 1, 6},
		{`data["a"`, `expected ']'`, 1, 9},
		{`data[""]`, `empty key in path`, 1, 6},
		{`foo`, `unknown name 'foo'`, 1, 1},
		{`1 + bar.x`, `unknown name 'bar'`, 1, 5},
		{`foo(1)`, `unknown function 'foo'`, 1, 1},
		{`len()`, `len takes 1 argument, got 0`, 1, 1},
		{`contains("a")`, `contains takes 2 arguments, got 1`, 1, 1},
		{`len(1, 2`, `expected ',' or ')'`, 1, 9},
		{`"abc`, `unterminated string`, 1, 1},
		{`'abc"`, `unterminated string`, 1, 1},
		{`"a\`, `unterminated string`, 1, 1},
		{`"a\x"`, `invalid escape '\x'`, 1, 3},
		{`"\u12"`, `invalid \u escape`, 1, 2},
		{`"\u12g4"`, `invalid \u escape`, 1, 2},
		{"\"a\nb\"", `control character in string`, 1, 3},
		{`01`, `leading zeros`, 1, 2},
		{`1.`, `expected a digit after the decimal point`, 1, 3},
		{`1.e5`, `expected a digit after the decimal point`, 1, 3},
		{`1e`, `expected a digit in the exponent`, 1, 3},
		{`1e+`, `expected a digit in the exponent`, 1, 4},
		{`12abc`, `expected an operator after the number`, 1, 3},
		{`1.2.3`, `expected an operator after the number`, 1, 4},
		{`1e999`, `out of range`, 1, 1},
		{`.5`, `expected a value`, 1, 1},
		{`data.x = 1`, `use '==' to compare`, 1, 8},
		{`1 == 2 == 3`, `comparisons cannot be chained`, 1, 8},
		{`1 < 2 < 3`, `comparisons cannot be chained`, 1, 7},
		{`true & false`, `expected '&&'`, 1, 6},
		{`true | false`, `expected '||'`, 1, 6},
		{`{`, `expected a key`, 1, 2},
		{`{"a" 1}`, `expected ':'`, 1, 6},
		{`{"a": 1,}`, `expected a key`, 1, 9},
		{`{"a": 1 "b": 2}`, `expected ',' or '}'`, 1, 9},
		{`{"a": 1, a: 2}`, `duplicate key "a"`, 1, 10},
		{`{1: 2}`, `expected a key`, 1, 2},
		{`[1, 2`, `expected ',' or ']'`, 1, 6},
		{`[1,]`, `expected a value`, 1, 4},
		{`)`, `expected a value`, 1, 1},
		{`!`, `expected a value`, 1, 2},
		{`@`, `unexpected '@'`, 1, 1},
		{`"é" + é`, `unexpected 'é'`, 1, 7},
		{"data.a &&\n  data.b ==", `unexpected end of expression`, 2, 12},
		{strings.Repeat("(", 300) + "1" + strings.Repeat(")", 300), `nested too deeply`, 1, 201},
		{strings.Repeat("!", 300) + "true", `nested too deeply`, 1, 201},
		{strings.Repeat("[", 300), `nested too deeply`, 1, 201},
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
			if !errors.Is(err, ErrSyntax) {
				t.Errorf("error %v does not wrap ErrSyntax", err)
			}
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T is not a *SyntaxError", err)
			}
			if !strings.Contains(se.Msg, tt.msg) {
				t.Errorf("message %q does not contain %q", se.Msg, tt.msg)
			}
			if se.Line != tt.line || se.Column != tt.col {
				t.Errorf("position = %d:%d, want %d:%d\n%s", se.Line, se.Column, tt.line, tt.col, se.Caret())
			}
			if !strings.HasSuffix(err.Error(), "column "+strconv.Itoa(tt.col)) {
				t.Errorf("Error() = %q does not end with the column", err)
			}
		})
	}
}

func TestSyntaxErrorMessages(t *testing.T) {
	_, err := Parse(`data.x == (1 + 2`)
	if got, want := err.Error(), "expected ')' at column 17"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	var se *SyntaxError
	errors.As(err, &se)
	want := "data.x == (1 + 2\n                ^ expected ')'"
	if got := se.Caret(); got != want {
		t.Errorf("Caret() =\n%s\nwant\n%s", got, want)
	}
	_, err = Parse("data.a &&\n  @")
	if got, want := err.Error(), "unexpected '@', expected a value at line 2, column 3"; got != want {
		t.Errorf("multi-line Error() = %q, want %q", got, want)
	}
	errors.As(err, &se)
	if got, want := se.Caret(), "  @\n  ^ unexpected '@', expected a value"; got != want {
		t.Errorf("multi-line Caret() = %q, want %q", got, want)
	}
}

func TestParsePath(t *testing.T) {
	tests := []struct {
		src       string
		root      Root
		canonical string
		gjson     string
	}{
		{`data`, RootData, `data`, ``},
		{`payload.a`, RootData, `data.a`, `a`},
		{`meta.kv`, RootMeta, `meta.kv`, `kv`},
		{`data.items.0`, RootData, `data.items.0`, `items.0`},
		{`data.items[0]`, RootData, `data.items.0`, `items.0`},
		{`data["odd key"].x`, RootData, `data["odd key"].x`, `odd\ key.x`},
		{`data["a.b*c?d|e#f@g\\h"]`, RootData, `data["a.b*c?d|e#f@g\\h"]`, `a\.b\*c\?d\|e\#f\@g\\h`},
		{`data["0"]`, RootData, `data["0"]`, `0`},
		{` meta.x `, RootMeta, `meta.x`, `x`},
	}
	for _, tt := range tests {
		p, err := ParsePath(tt.src)
		if err != nil {
			t.Errorf("ParsePath(%q): %v", tt.src, err)
			continue
		}
		if p.Root != tt.root || p.String() != tt.canonical || p.GJSON() != tt.gjson {
			t.Errorf("ParsePath(%q) = %v %q %q, want %v %q %q", tt.src, p.Root, p.String(), p.GJSON(), tt.root, tt.canonical, tt.gjson)
		}
	}
	for _, bad := range []string{``, `x.a`, `data.`, `data.a + 1`, `data.a b`, `1`, `data["a"`, `"data"`} {
		if _, err := ParsePath(bad); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParsePath(%q) error = %v, want ErrSyntax", bad, err)
		}
	}
}

// TestGJSONEscaping checks that keys with gjson's special characters are
// read literally.
func TestGJSONEscaping(t *testing.T) {
	keys := []string{"a.b", "a*", "a?", "a|b", "#", "@this", "a\\b", "!x", "a=b", "a:b", "x y", "é", "[0]", "a,b", "(x)"}
	for _, k := range keys {
		doc := `{` + string(appendString(nil, k)) + `: 42, "other": 1}`
		p := Path{Root: RootData, Segments: []Segment{{Key: k, Quoted: true}}}
		if got := gjson.Get(doc, p.GJSON()); got.Raw != "42" {
			t.Errorf("key %q via %q read %q", k, p.GJSON(), got.Raw)
		}
	}
}

// FuzzParse checks that no input panics the parser or the evaluator, that
// errors carry a position inside the source, and that what evaluates
// renders valid JSON.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`exists(data.steam_id) && data.count >= 3`,
		`{"increment": "warnings_" + data.steam_id}`,
		`data["odd key"].items[0] + 1`,
		`'a' + "b\u00e9" + string(meta.kv)`,
		`len(data.items) % 2 == 0 || !contains(lower(data.name), "x")`,
		`-9223372036854775808 / -1`,
		`[1, {a: [null, true]}, -1.5e-7]`,
		`data.ok ? substr(data.name, -2, 1) : join(split(data.steam_id, ""), "-")`,
		`window(data.n, 7) + hash(data.obj) % 3 + to_int(data.f) + len(keys(data.obj))`,
		`matches(data.name, "^A.+") && starts_with(trim(upper(data.name)), "A") || coalesce(data.x, 1) == 1`,
		`format_time(parse_time("2026-01-02", "DateOnly"), "RFC3339") + concat(type(data.items), now_s() > 0) + replace(data.esc, "q", "")`,
		`if(contains(data.items, 1), uuid(), to_string(data.big))`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		e, err := Parse(src)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("error %T is not a *SyntaxError", err)
			}
			if se.Offset < 0 || se.Offset > len(src) || se.Column < 1 || se.Line < 1 {
				t.Fatalf("bad position %d (%d:%d) for %q", se.Offset, se.Line, se.Column, src)
			}
			_ = se.Caret()
			return
		}
		v, err := e.Eval(testEvent)
		if err != nil {
			if !errors.Is(err, ErrEval) {
				t.Fatalf("eval error %v does not wrap ErrEval", err)
			}
			return
		}
		out := v.AppendJSON(nil)
		if !gjson.ValidBytes(out) || !utf8.Valid(out) {
			t.Fatalf("%q rendered invalid JSON %q", src, out)
		}
		_, _ = e.EvalBool(testEvent)
	})
}
