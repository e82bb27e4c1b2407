package ijson

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name, in string
		err      error
		path     string // of the error, or of Report.BadString
		bad      error  // Report.BadString's Err
	}{
		{name: "object", in: `{"data":{"amount":5},"meta":{"kv":{"put":"k"}}}`},
		{name: "scalars", in: ` [1, -0.5e+3, "x", true, false, null, {}, []] `},
		{name: "pair", in: `{"a":"\ud83d\ude00"}`},
		{name: "escaped names differ", in: `{"a":1,"\u0062":2,"a\\":3,"a\"":4}`},
		{name: "same name in other objects", in: `{"a":{"a":1},"b":{"a":2},"c":[{"a":1},{"a":2}]}`},
		{name: "duplicate", in: `{"data":{"amount":5,"amount":1000000}}`, err: ErrDuplicateKey, path: "data.amount"},
		{name: "duplicate after a nested object", in: `{"a":{"x":1,"y":{"x":2}},"a":1}`, err: ErrDuplicateKey, path: "a"},
		{name: "duplicate escaped", in: `{"meta":{"kv":{"put":"a","p\u0075t":"b"}}}`, err: ErrDuplicateKey, path: "meta.kv.put"},
		{name: "duplicate deep", in: `{"a":[0,{"b":[[{"c":1,"c":2}]]}]}`, err: ErrDuplicateKey, path: "a[1].b[0][0].c"},
		{name: "duplicate in a big object", in: bigObject(100, true), err: ErrDuplicateKey, path: "k00"},
		{name: "big object", in: bigObject(100, false)},
		{name: "duplicate escaped in a big object", in: escapedObject(100, `"\u006b7"`), err: ErrDuplicateKey, path: "k7"},
		{name: "duplicate plain of an escaped name in a big object", in: escapedObject(100, `"k99"`), err: ErrDuplicateKey, path: "k99"},
		{name: "big object of escaped names", in: escapedObject(100, "")},
		{name: "escaped names in the path", in: `{"\u0061":{"b\u0020c":[{"x":1,"\u0078":2}]}}`, err: ErrDuplicateKey, path: `a["b c"][0].x`},
		{name: "odd names in the path", in: `{"a b":{"":{"x":1,"x":2}}}`, err: ErrDuplicateKey, path: `["a b"][""].x`},
		{name: "lone high surrogate in a name", in: `{"\ud800":1}`, err: ErrLoneSurrogate, path: "[\"\uFFFD\"]"},
		{name: "lone low surrogate in a name", in: `{"a":{"x\udfff":1}}`, err: ErrLoneSurrogate},
		{name: "reversed pair in a name", in: `{"\udc00\ud800":1}`, err: ErrLoneSurrogate},
		{name: "invalid UTF-8 in a name", in: "{\"a\xff\":1}", err: ErrInvalidUTF8},
		{name: "encoded surrogate in a name", in: "{\"\xed\xa0\x80\":1}", err: ErrInvalidUTF8},
		{name: "lone surrogate in a value", in: `{"a":["x","\ud800"]}`, bad: ErrLoneSurrogate, path: "a[1]"},
		{name: "high surrogate then a non-surrogate", in: `{"a":"\ud800\u0041"}`, bad: ErrLoneSurrogate, path: "a"},
		{name: "invalid UTF-8 in a value", in: "{\"a\":{\"b\":\"x\xffy\"}}", bad: ErrInvalidUTF8, path: "a.b"},
		{name: "truncated", in: `{"a":1`, err: ErrSyntax},
		{name: "trailing comma", in: `{"a":1,}`, err: ErrSyntax},
		{name: "two values", in: `{} {}`, err: ErrSyntax},
		{name: "bad escape", in: `"\x"`, err: ErrSyntax},
		{name: "control character", in: "\"a\tb\"", err: ErrSyntax},
		{name: "leading zero", in: `01`, err: ErrSyntax},
		{name: "empty", in: ``, err: ErrSyntax},
		{name: "too deep", in: strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1), err: ErrTooDeep},
		{name: "deepest", in: strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth)},
	}
	var c Checker
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := c.Check([]byte(tt.in), "")
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("Check(%q) = %v, want %v", tt.in, err, tt.err)
			}
			var e *Error
			if err != nil {
				errors.As(err, &e)
			} else if rep.BadString != nil {
				e = rep.BadString
			}
			if (rep.BadString == nil) != (tt.bad == nil) || tt.bad != nil && !errors.Is(rep.BadString, tt.bad) {
				t.Fatalf("Check(%q) BadString = %v, want %v", tt.in, rep.BadString, tt.bad)
			}
			if tt.path != "" && (e == nil || e.Path != tt.path) {
				t.Errorf("Check(%q): path of %v, want %q", tt.in, e, tt.path)
			}
			if err != nil && (!utf8.ValidString(err.Error()) || strings.Contains(err.Error(), "\n") || len(err.Error()) > 400) {
				t.Errorf("message %.500q is not one short valid line", err)
			}
		})
	}
}

func bigObject(n int, dup bool) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"k` + strings.Repeat("x", i%3) + string(rune('0'+i%10)) + itoa(i) + `":1`)
	}
	if dup {
		b.WriteString(`,"k00":2`)
	}
	b.WriteString("}")
	return b.String()
}

// escapedObject returns an object of n members "k0" to "k<n-1>", each
// name written with an escape, then a member named dup when not empty.
func escapedObject(n int, dup string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"\u006b` + itoa(i) + `":1`)
	}
	if dup != "" {
		b.WriteString("," + dup + ":2")
	}
	b.WriteString("}")
	return b.String()
}

// TestCheckDropsClosedObjectsSets checks an array of many big objects
// (each past linearKeys members, so each gets a set of names) and nested
// big objects: the set of an object is dropped when it closes, so a text
// never holds more sets at once than it nests big objects.
func TestCheckDropsClosedObjectsSets(t *testing.T) {
	big := bigObject(2*linearKeys, false)
	var b strings.Builder
	b.WriteString("[")
	for i := range 1000 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(big)
	}
	b.WriteString(`,` + big[:len(big)-1] + `,"in":` + big[:len(big)-1] + `,"k00":3}}]`)
	var c Checker
	_, err := c.Check([]byte(b.String()), "")
	if !errors.Is(err, ErrDuplicateKey) {
		t.Fatalf("Check = %v, want the duplicate k00 in the innermost object", err)
	}
	if cap(c.sets) > 4 {
		t.Errorf("Check held up to %d sets of names at once, want at most 2", cap(c.sets))
	}
}

// TestPlainWords compares PlainWords with a byte at a time, for every
// byte value at every position of a 40-byte text.
func TestPlainWords(t *testing.T) {
	plainByte := func(c byte) bool { return c >= 0x20 && c < 0x80 && c != '"' && c != '\\' }
	for c := range 256 {
		for pos := range 40 {
			b := []byte(strings.Repeat("a~ 0Z!", 7)[:40])
			b[pos] = byte(c)
			want := 0
			for want+8 <= len(b) && plainByte(b[want]) && plainByte(b[want+1]) && plainByte(b[want+2]) && plainByte(b[want+3]) &&
				plainByte(b[want+4]) && plainByte(b[want+5]) && plainByte(b[want+6]) && plainByte(b[want+7]) {
				want += 8
			}
			if got := PlainWords(b); got != want {
				t.Fatalf("PlainWords with byte 0x%02x at %d = %d, want %d", c, pos, got, want)
			}
		}
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

func TestErrorMessage(t *testing.T) {
	var c Checker
	_, err := c.Check([]byte(`{"data":{"amount":5,"amount":1000000}}`), "")
	want := `duplicate object key "amount" at data.amount (byte 20)`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	_, err = c.Check([]byte(`{"\ud800":1}`), "meta")
	if err == nil || !strings.Contains(err.Error(), "lone surrogate escape in an object key at meta[\"\uFFFD\"]") {
		t.Errorf("got %v", err)
	}
}

func TestRepair(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"a":"x"}`, `{"a":"x"}`},
		{"{\"a\":\"x\xffy\xfe\"}", "{\"a\":\"x\uFFFDy\uFFFD\"}"},
		{`["\ud800","\ud83d\ude00","\udfff\ud800x","\\ud800","\"\ud800"]`, `["\ufffd","\ud83d\ude00","\ufffd\ufffdx","\\ud800","\"\ufffd"]`},
		{"[\"\xed\xa0\x80\"]", "[\"\uFFFD\uFFFD\uFFFD\"]"},
	}
	var c Checker
	for _, tt := range tests {
		if _, err := c.Check([]byte(tt.in), ""); err != nil {
			t.Fatalf("Check(%q): %v", tt.in, err)
		}
		got := Repair(nil, []byte(tt.in))
		if string(got) != tt.want {
			t.Errorf("Repair(%q) = %q, want %q", tt.in, got, tt.want)
		}
		rep, err := c.Check(got, "")
		if err != nil || rep.BadString != nil || !utf8.Valid(got) {
			t.Errorf("Repair(%q) = %q: not clean: %v %v", tt.in, got, err, rep.BadString)
		}
	}
}

// FuzzCheck compares Check with encoding/json: what Check accepts is valid
// JSON, and valid UTF-8 JSON without escapes or duplicate names is
// accepted; Repair always yields clean text; AppendValid always yields
// valid UTF-8 JSON.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{`{"a":1,"a":2}`, `{"a":[1,{"b":"\ud800"}]}`, "\"\xff\"", `[1e5,-0,"x"]`, `{"":{"":1}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Checker
		_ = Repair(nil, b) // never panics, whatever b is
		if out, _ := AppendValid(&c, nil, b); !utf8.Valid(out) || !json.Valid(out) {
			t.Fatalf("AppendValid(%q) = %q: not valid UTF-8 JSON", b, out)
		}
		rep, err := c.Check(b, "root")
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if json.Valid(b) && utf8.Valid(b) && !strings.Contains(string(b), `\u`) && !hasDuplicate(b) && !errors.Is(err, ErrTooDeep) {
				t.Fatalf("Check(%q) = %v, but it is valid I-JSON", b, err)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("Check accepted %q, which is not JSON", b)
		}
		if hasDuplicate(b) && !strings.Contains(string(b), `\u`) {
			t.Fatalf("Check accepted %q, which has a duplicate name", b)
		}
		fixed := Repair(nil, b)
		if rep.BadString == nil && string(fixed) != string(b) {
			t.Fatalf("Repair changed clean %q to %q", b, fixed)
		}
		rep2, err := c.Check(fixed, "")
		if err != nil || rep2.BadString != nil || !utf8.Valid(fixed) || !json.Valid(fixed) {
			t.Fatalf("Repair(%q) = %q: %v %v", b, fixed, err, rep2.BadString)
		}
	})
}

// hasDuplicate reports, with encoding/json's tokenizer, whether valid JSON
// b has an object with a repeated name.
func hasDuplicate(b []byte) bool {
	d := json.NewDecoder(strings.NewReader(string(b)))
	type obj struct {
		names map[string]bool
		key   bool // the next string is a name
	}
	var stack []*obj
	for {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		if len(stack) > 0 {
			top := stack[len(stack)-1]
			if top != nil && top.key {
				if s, ok := tok.(string); ok {
					if top.names[s] {
						return true
					}
					top.names[s] = true
					top.key = false
					continue
				}
			}
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &obj{names: map[string]bool{}, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, nil)
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1] != nil {
			stack[len(stack)-1].key = true
		}
	}
}

func TestMember(t *testing.T) {
	var c Checker
	in := []byte(` {"data" : {"a":[1,{"b":2}]} , "meta":{"kv":{"put":"k"}},"x":"s","d\u0061ta2":null} `)
	if _, err := c.Check(in, ""); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"data": `{"a":[1,{"b":2}]}`, "meta": `{"kv":{"put":"k"}}`, "x": `"s"`, "data2": `null`} {
		s, e, ok := c.Member(in, name)
		if !ok || string(in[s:e]) != want {
			t.Errorf("Member(%q) = %q, %v; want %q", name, in[s:e], ok, want)
		}
	}
	in2 := []byte(`{"\u0061":1,"b":2,"\u0063\u0064":3}`)
	if _, err := c.Check(in2, ""); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a": "1", "b": "2", "cd": "3"} {
		if s, e, ok := c.Member(in2, name); !ok || string(in2[s:e]) != want {
			t.Errorf("Member(%q) of %s = %q, %v; want %q", name, in2, in2[s:e], ok, want)
		}
	}
	if _, _, ok := c.Member(in, "kv"); ok {
		t.Error("Member found a nested name")
	}
	if _, err := c.Check([]byte(`[{"data":1}]`), ""); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := c.Member([]byte(`[{"data":1}]`), "data"); ok {
		t.Error("Member found a name in an array")
	}
}

// TestBadStringInAndRepaired: a source refuses an invalid string in meta
// at its offset in the whole text and repairs one anywhere else, after
// which Member reads the repaired copy.
func TestBadStringInAndRepaired(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		badAt    int    // offset of the string refused in meta, -1 for none
		data     string // the repaired copy's data member
	}{
		{name: "in meta", in: `{"data":1,"meta":{"k":"\ud800"}}`, badAt: 22},
		{name: "deep in meta", in: `{"meta":{"a":{"b":["x","\udc00"]}}}`, badAt: 23},
		{name: "in data", in: `{"data":"\ud800","meta":{"k":"v"}}`, badAt: -1, data: `"\ufffd"`},
		{name: "meta not an object", in: `{"data":1,"meta":"\ud800"}`, badAt: -1, data: "1"},
		{name: "invalid UTF-8 in data", in: "{\"data\":\"a\xffb\"}", badAt: -1, data: "\"a\uFFFDb\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Checker
			in := []byte(tc.in)
			rep, err := c.Check(in, "")
			if err != nil || rep.BadString == nil {
				t.Fatalf("Check = %v, %v; want a BadString", rep, err)
			}
			bad := c.BadStringIn(in, "meta")
			if tc.badAt >= 0 {
				if bad == nil || bad.Offset != tc.badAt || !errors.Is(bad, ErrLoneSurrogate) {
					t.Fatalf("BadStringIn = %v, want a lone surrogate at byte %d", bad, tc.badAt)
				}
				return
			}
			if bad != nil {
				t.Fatalf("BadStringIn = %v, want nil", bad)
			}
			out, err := c.Repaired(in)
			if err != nil {
				t.Fatal(err)
			}
			if s, e, ok := c.Member(out, "data"); !ok || string(out[s:e]) != tc.data {
				t.Errorf("data of the repaired copy %q = %q, want %q", out, out[s:e], tc.data)
			}
		})
	}
}

func TestAppendValid(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{`{"a":1}`, `{"a":1}`, true},
		{"{\"correlation\":\"c\xff\"}", "{\"correlation\":\"c\uFFFD\"}", true},
		{`["\ud800"]`, `["\ufffd"]`, true},
		{`{"a":1,"a":2}`, `{"a":1,"a":2}`, true},
		{"{\"a\xff\":1}", "\"{\\\"a\uFFFD\\\":1}\"", false},
		{`{"a":`, `"{\"a\":"`, false},
		{"\x01\"", `"\u0001\""`, false},
		{``, `""`, false},
	}
	var c Checker
	for _, tt := range tests {
		got, ok := AppendValid(&c, nil, []byte(tt.in))
		if string(got) != tt.want || ok != tt.ok {
			t.Errorf("AppendValid(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
		if !utf8.Valid(got) || !json.Valid(got) {
			t.Errorf("AppendValid(%q) = %q: not valid UTF-8 JSON", tt.in, got)
		}
	}
}

func TestAppendEvent(t *testing.T) {
	var c Checker
	for in, want := range map[string]string{
		`{"a":"\ud800"}`:              `{"a":"\ud800"}`, // valid UTF-8: as it is
		"{\"correlation\":\"c\xff\"}": "{\"correlation\":\"c\uFFFD\"}",
		"{\"a\":\xff":                 "\"{\\\"a\\\":\uFFFD\"",
		"{\"k\xff\":1,\"k\xfe\":2}":   "\"{\\\"k\uFFFD\\\":1,\\\"k\uFFFD\\\":2}\"",
	} {
		if got := AppendEvent(&c, nil, []byte(in)); string(got) != want {
			t.Errorf("AppendEvent(%q) = %q, want %q", in, got, want)
		}
	}
}
