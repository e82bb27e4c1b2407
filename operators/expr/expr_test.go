package expr

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/pipeline"
)

var testEvent = pipeline.Event{
	Data: []byte(`{"steam_id":"765","n":9007199254740993,"count":3,"name":"Ann","items":[1,"a",{"b":2}],` +
		`"odd key":5,"f":1.50,"big":12345678901234567890,"nil":null,"ok":true,"obj":{"x":1,"y":[1,2]},` +
		`"a.b":"dot","uni":"héllo","neg":-4,"zero":0,"s7":"7","esc":"q\"\n"}`),
	Meta: []byte(`{"kv":{"op":"get"},"source":"test"}`),
}

func evalString(t *testing.T, src string, ev pipeline.Event) (Value, error) {
	t.Helper()
	e, err := Parse(src)
	if err != nil {
		t.Fatalf("Parse(%q): %v", src, err)
	}
	return e.Eval(ev)
}

func TestEval(t *testing.T) {
	tests := []struct {
		src  string
		want string // JSON of the result
		kind Kind
	}{
		// literals
		{`1`, `1`, Number},
		{`-1.5e3`, `-1500`, Number},
		{`"a\tb\u00e9\ud83d\ude00"`, `"a\tbé😀"`, String},
		{`'it\'s "ok"'`, `"it's \"ok\""`, String},
		{`true`, `true`, Bool},
		{`null`, `null`, Null},
		{`{}`, `{}`, Object},
		{`[]`, `[]`, Array},
		{`{"a": 1, b: [true, null, "x"]}`, `{"a":1,"b":[true,null,"x"]}`, Object},
		{`{"increment": "warnings_" + data.steam_id}`, `{"increment":"warnings_765"}`, Object},
		{`{"k": data.missing, "v": 1}`, `{"v":1}`, Object},
		{`[data.missing, 1]`, `[null,1]`, Array},
		// paths
		{`data.steam_id`, `"765"`, String},
		{`payload.steam_id`, `"765"`, String},
		{`data.items.0`, `1`, Number},
		{`data.items[2].b`, `2`, Number},
		{`data.items.2["b"]`, `2`, Number},
		{`data["odd key"]`, `5`, Number},
		{`data['a.b']`, `"dot"`, String},
		{`data.obj`, `{"x":1,"y":[1,2]}`, Object},
		{`meta.kv.op`, `"get"`, String},
		{`meta`, `{"kv":{"op":"get"},"source":"test"}`, Object},
		{`data.nil`, `null`, Null},
		{`data.missing`, `null`, Missing},
		{`data.items.9`, `null`, Missing},
		{`data.esc`, `"q\"\n"`, String},
		// numbers keep their text and exact integers
		{`data.f`, `1.50`, Number},
		{`data.big`, `12345678901234567890`, Number},
		{`data.n + 1`, `9007199254740994`, Number},
		{`data.n - 1`, `9007199254740992`, Number},
		{`data.n * 1`, `9007199254740993`, Number},
		{`9223372036854775807 + 1`, `9223372036854776000`, Number}, // overflow falls back to float64
		{`-9223372036854775808`, `-9223372036854775808`, Number},
		{`-(-9223372036854775808)`, `9223372036854776000`, Number},
		{`7 / 2`, `3.5`, Number},
		{`6 / 2`, `3`, Number},
		{`7 % 3`, `1`, Number},
		{`-7 % 3`, `-1`, Number},
		{`7.5 % 2`, `1.5`, Number},
		{`0.1 + 0.2`, `0.30000000000000004`, Number},
		{`1e21 * 10`, `1e+22`, Number},
		{`1 + 2 * 3 - 4 / 2`, `5`, Number},
		{`(1 + 2) * 3`, `9`, Number},
		{`-data.neg`, `4`, Number},
		// concatenation
		{`"a" + "b"`, `"ab"`, String},
		{`"n=" + 1.5`, `"n=1.5"`, String},
		{`"n=" + data.f`, `"n=1.50"`, String},
		{`data.n + ""`, `"9007199254740993"`, String},
		{`true + "!"`, `"true!"`, String},
		{`"x" + 1 + 2`, `"x12"`, String},
		{`1 + 2 + "x"`, `"3x"`, String},
		// comparisons
		{`data.count >= 3`, `true`, Bool},
		{`data.count > 3`, `false`, Bool},
		{`data.n > 9007199254740992`, `true`, Bool},
		{`1 == 1.0`, `true`, Bool},
		{`3 < 3.5`, `true`, Bool},
		{`"abc" < "abd"`, `true`, Bool},
		{`"B" < "a"`, `true`, Bool},
		{`data.name == "Ann"`, `true`, Bool},
		{`data.name != "Ann"`, `false`, Bool},
		{`data.missing == null`, `true`, Bool},
		{`data.nil == data.missing`, `true`, Bool},
		{`data.missing != null`, `false`, Bool},
		{`data.obj == {"y": [1, 2.0], "x": 1}`, `true`, Bool},
		{`data.obj == {"x": 1}`, `false`, Bool},
		{`data.items == [1, "a", {"b": 2}]`, `true`, Bool},
		{`data.items == [1, "a"]`, `false`, Bool},
		{`1 == "1"`, `false`, Bool},
		{`data.s7 == 7`, `false`, Bool},
		// logic and short circuit (the right side would fail)
		{`true && false`, `false`, Bool},
		{`false || true`, `true`, Bool},
		{`!data.ok`, `false`, Bool},
		{`false && data.name > 1`, `false`, Bool},
		{`true || data.name > 1`, `true`, Bool},
		{`exists(data.count) && data.count >= 3`, `true`, Bool},
		{`exists(data.missing) && data.missing >= 3`, `false`, Bool},
		{`1 < 2 && 2 < 3 || false`, `true`, Bool},
		// functions
		{`exists(data.nil)`, `true`, Bool},
		{`exists(data.missing)`, `false`, Bool},
		{`exists(meta.kv)`, `true`, Bool},
		{`string(1.5)`, `"1.5"`, String},
		{`string(data.obj)`, `"{\"x\":1,\"y\":[1,2]}"`, String},
		{`string(null)`, `"null"`, String},
		{`number("42") + 1`, `43`, Number},
		{`number("-1.5e2")`, `-150`, Number},
		{`number(data.count)`, `3`, Number},
		{`len("héllo")`, `5`, Number},
		{`len(data.items)`, `3`, Number},
		{`len(data.obj)`, `2`, Number},
		{`lower("AbC")`, `"abc"`, String},
		{`upper(data.name)`, `"ANN"`, String},
		{`contains("warnings", "warn")`, `true`, Bool},
		{`contains(data.items, "a")`, `true`, Bool},
		{`contains(data.items, {"b": 2.0})`, `true`, Bool},
		{`contains(data.items, 9)`, `false`, Bool},
		{`has_prefix(data.steam_id, "76")`, `true`, Bool},
		{`has_suffix(data.steam_id, "76")`, `false`, Bool},
		{`default(data.missing, "x")`, `"x"`, String},
		{`default(data.nil, 0)`, `0`, Number},
		{`default(data.count, 1 / 0)`, `3`, Number},
		// whitespace and newlines
		{"  data.count\n  >= 3 ", `true`, Bool},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			v, err := evalString(t, tt.src, testEvent)
			if err != nil {
				t.Fatalf("Eval: %v", err)
			}
			if v.Kind() != tt.kind {
				t.Errorf("kind = %v, want %v", v.Kind(), tt.kind)
			}
			got := string(v.AppendJSON(nil))
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Errorf("AppendJSON produced invalid JSON %s", got)
			}
		})
	}
}

func TestEvalNilEvent(t *testing.T) {
	ev := pipeline.Event{}
	for src, want := range map[string]string{
		`data`:           `null`,
		`meta`:           `{}`,
		`exists(data)`:   `true`,
		`data.x == null`: `true`,
		`meta.kv`:        `null`,
	} {
		v, err := evalString(t, src, ev)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got := string(v.AppendJSON(nil)); got != want {
			t.Errorf("%s = %s, want %s", src, got, want)
		}
	}
}

func TestEvalErrors(t *testing.T) {
	tests := []struct {
		src      string
		sentinel error
		msg      string // substring of the message
		col      int
	}{
		{`data.name > 1`, ErrType, `cannot compare data.name (a string) with 1 (a number) using >`, 11},
		{`data.missing >= 3`, ErrMissing, `data.missing (missing)`, 14},
		{`data.nil < 1`, ErrType, `(null)`, 10},
		{`data.obj + 1`, ErrType, `cannot add data.obj (an object) and 1 (a number)`, 10},
		{`true + 1`, ErrType, `cannot add`, 6},
		{`"a" + data.missing`, ErrMissing, `cannot concatenate data.missing: it is missing`, 5},
		{`"a" + data.items`, ErrType, `cannot concatenate data.items (an array)`, 5},
		{`"a" + null`, ErrType, `null`, 5},
		{`data.name - 1`, ErrType, `'-' needs two numbers`, 11},
		{`1 / 0`, ErrArithmetic, `division by zero`, 3},
		{`1 % 0`, ErrArithmetic, `division by zero`, 3},
		{`1.5 / 0`, ErrArithmetic, `division by zero`, 5},
		{`1e300 * 1e300`, ErrArithmetic, `not a finite number`, 7},
		{`-data.name`, ErrType, `cannot negate data.name`, 1},
		{`!data.count`, ErrNotBoolean, `operand of '!' must be true or false`, 1},
		{`data.count && true`, ErrNotBoolean, `operand of '&&'`, 12},
		{`false || data.missing`, ErrNotBoolean, `data.missing is missing`, 7},
		{`lower(data.count)`, ErrType, `lower: argument 1, data.count, is a number, expected a string`, 1},
		{`lower(data.missing)`, ErrMissing, `is missing`, 1},
		{`len(3)`, ErrType, `len: argument 1`, 1},
		{`number("abc")`, ErrType, `"abc" is not a JSON number`, 1},
		{`number(" 1")`, ErrType, `not a JSON number`, 1},
		{`number("0x10")`, ErrType, `not a JSON number`, 1},
		{`number(true)`, ErrType, `number: argument 1`, 1},
		{`number("1e999")`, ErrArithmetic, `out of range`, 1},
		{`string(data.missing)`, ErrMissing, `string: argument 1`, 1},
		{`contains(1, 1)`, ErrType, `contains: argument 1`, 1},
		{`contains("a", 1)`, ErrType, `contains: argument 2`, 1},
		{`has_prefix(1, "a")`, ErrType, `has_prefix: argument 1`, 1},
		{`{"a": 1 / 0}`, ErrArithmetic, `division by zero`, 9},
		{"1 <\n data.name", ErrType, `cannot compare`, 3},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			_, err := evalString(t, tt.src, testEvent)
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrEval) || !errors.Is(err, tt.sentinel) {
				t.Errorf("error %v does not wrap ErrEval and %v", err, tt.sentinel)
			}
			var ee *EvalError
			if !errors.As(err, &ee) {
				t.Fatalf("error %T is not an *EvalError", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
			if ee.Column != tt.col {
				t.Errorf("column = %d, want %d (%s)", ee.Column, tt.col, ee.Caret())
			}
		})
	}
}

func TestEvalBool(t *testing.T) {
	tests := []struct {
		src     string
		want    bool
		wantErr bool
	}{
		{`data.count >= 3`, true, false},
		{`data.ok`, true, false},
		{`data.nil == null`, true, false},
		{`data.count`, false, true},
		{`data.missing`, false, true},
		{`data.nil`, false, true},
		{`"true"`, false, true},
	}
	for _, tt := range tests {
		e, err := Parse(tt.src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.EvalBool(testEvent)
		if tt.wantErr {
			if !errors.Is(err, ErrNotBoolean) || !errors.Is(err, ErrEval) {
				t.Errorf("%s: error = %v, want ErrNotBoolean", tt.src, err)
			}
			if err != nil && !strings.Contains(err.Error(), "condition must be true or false") {
				t.Errorf("%s: unclear error %q", tt.src, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s = %v, %v; want %v", tt.src, got, err, tt.want)
		}
	}
}

func TestEvalDoesNotModifyEvent(t *testing.T) {
	data := append([]byte(nil), testEvent.Data...)
	meta := append([]byte(nil), testEvent.Meta...)
	for _, src := range []string{`{"a": data.obj, "b": data.items}`, `string(data)`, `lower(data.name)`, `data.obj == data.obj`} {
		if _, err := evalString(t, src, testEvent); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(data, testEvent.Data) || !bytes.Equal(meta, testEvent.Meta) {
		t.Fatal("evaluation modified the event")
	}
}

func TestAppendJSONStrings(t *testing.T) {
	for _, s := range []string{"", "plain", "q\"b\\", "\x00\x1f\n\r\t", "é😀", "bad\xffutf8", "\u2028"} {
		got := stringValue(s).AppendJSON(nil)
		if !json.Valid(got) {
			t.Errorf("%q encoded as invalid JSON %s", s, got)
			continue
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if want := strings.ToValidUTF8(s, "\uFFFD"); back != want {
			t.Errorf("%q round-tripped to %q", s, back)
		}
	}
}

func TestMultilineValueIsCompacted(t *testing.T) {
	ev := pipeline.Event{Data: []byte("{\"a\": [1,\n 2]}")}
	v, err := evalString(t, `data.a`, ev)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(v.AppendJSON(nil)); got != `[1,2]` {
		t.Errorf("got %q", got)
	}
}

func TestValueAccessors(t *testing.T) {
	v, err := evalString(t, `data.n`, testEvent)
	if err != nil {
		t.Fatal(err)
	}
	if i, ok := v.Int(); !ok || i != 9007199254740993 {
		t.Errorf("Int = %d, %v", i, ok)
	}
	if _, ok := v.Str(); ok {
		t.Error("Str ok on a number")
	}
	if f, ok := floatValue(2.0).Int(); !ok || f != 2 {
		t.Errorf("Int of 2.0 = %d, %v", f, ok)
	}
	if _, ok := floatValue(2.5).Int(); ok {
		t.Error("Int ok on 2.5")
	}
	if s := (Value{}).String(); s != "missing" {
		t.Errorf("missing String = %q", s)
	}
	if b, ok := boolValue(true).Bool(); !b || !ok {
		t.Error("Bool of true")
	}
}
