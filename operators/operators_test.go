package operators

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
	"github.com/tidwall/gjson"
)

// emitted is one event an operator or pipeline emitted.
type emitted struct {
	port string
	data string
	meta string
	seq  uint64
}

func (e emitted) String() string { return fmt.Sprintf("%s:%s:%s#%d", e.port, e.data, e.meta, e.seq) }

// recorder collects emitted events; it implements pipeline.Emitter.
type recorder struct{ got []emitted }

func (r *recorder) Emit(port string, ev pipeline.Event) {
	r.got = append(r.got, emitted{port, string(ev.DataJSON()), string(ev.MetaJSON()), uint64(ev.Origin().Index())})
}

// testTracker gives test events an origin whose index the recorder shows
// after '#', so a test sees which input an output derives from.
var testTracker = pipeline.NewTracker(1<<12, nil, nil)

func ev(data, meta string, seq uint64) pipeline.Event {
	e := testTracker.Track(int(seq), pipeline.Event{Data: []byte(data)})
	if meta != "" {
		e.Meta = []byte(meta)
	}
	return e
}

// applyChecked applies op to in and fails the test if the input bytes
// changed.
func applyChecked(t *testing.T, op Operator, in pipeline.Event) ([]emitted, error) {
	t.Helper()
	data := append([]byte(nil), in.Data...)
	meta := append([]byte(nil), in.Meta...)
	var r recorder
	err := op.Apply(in, r.Emit)
	if !bytes.Equal(data, in.Data) || !bytes.Equal(meta, in.Meta) {
		t.Fatalf("Apply modified its input: data %s -> %s, meta %s -> %s", data, in.Data, meta, in.Meta)
	}
	return r.got, err
}

func TestFilter(t *testing.T) {
	op, err := NewFilter(FilterOptions{If: `exists(data.steam_id) && data.count >= 3`})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		data    string
		keep    bool
		wantErr error
	}{
		{`{"steam_id":"1","count":3}`, true, nil},
		{`{"steam_id":"1","count":2}`, false, nil},
		{`{"count":5}`, false, nil},
		{`{"steam_id":"1","count":"x"}`, false, expr.ErrType},
	}
	for _, tt := range tests {
		got, err := applyChecked(t, op, ev(tt.data, `{"m":1}`, 9))
		if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
			t.Errorf("%s: error = %v, want %v", tt.data, err, tt.wantErr)
		}
		if tt.keep {
			want := []emitted{{"out", tt.data, `{"m":1}`, 9}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s: got %v, want %v", tt.data, got, want)
			}
		} else if len(got) != 0 {
			t.Errorf("%s: kept %v", tt.data, got)
		}
	}
	if op.Ports() != nil {
		t.Errorf("Ports = %v", op.Ports())
	}
}

func TestSet(t *testing.T) {
	tests := []struct {
		name   string
		fields []Assignment
		data   string
		meta   string
		want   emitted // port "out" and seq implied
	}{
		{
			name:   "kv command from payload",
			fields: []Assignment{{`meta.kv`, `{"increment": "warnings_" + payload.steam_id}`}},
			data:   `{"steam_id":"765"}`, meta: `{"correlation":"c1"}`,
			want: emitted{data: `{"steam_id":"765"}`, meta: `{"correlation":"c1","kv":{"increment":"warnings_765"}}`},
		},
		{
			name:   "nil meta becomes an object",
			fields: []Assignment{{`meta.kv`, `{"get": "k"}`}},
			data:   `1`,
			want:   emitted{data: `1`, meta: `{"kv":{"get":"k"}}`},
		},
		{
			name:   "exact integer and nested creation",
			fields: []Assignment{{`data.total`, `data.n + 1`}, {`data.a.b.c`, `true`}},
			data:   `{"n":9007199254740993}`,
			want:   emitted{data: `{"n":9007199254740993,"total":9007199254740994,"a":{"b":{"c":true}}}`, meta: `{}`},
		},
		{
			name:   "later fields see earlier ones",
			fields: []Assignment{{`data.x`, `2`}, {`data.y`, `data.x * 10`}, {`meta.y`, `data.y`}},
			data:   `{}`,
			want:   emitted{data: `{"x":2,"y":20}`, meta: `{"y":20}`},
		},
		{
			name:   "replace whole payload and meta",
			fields: []Assignment{{`data`, `{"wrapped": data}`}, {`meta`, `{"a": 1}`}},
			data:   `[1,2]`, meta: `{"old":true}`,
			want: emitted{data: `{"wrapped":[1,2]}`, meta: `{"a":1}`},
		},
		{
			name:   "whole payload to a scalar",
			fields: []Assignment{{`payload`, `"x"`}},
			data:   `{"a":1}`,
			want:   emitted{data: `"x"`, meta: `{}`},
		},
		{
			name:   "overwrite, array index and odd keys",
			fields: []Assignment{{`data.a`, `"new"`}, {`data.items.1`, `9`}, {`data["odd.key*"]`, `1`}, {`data["0"]`, `0`}},
			data:   `{"a":"old","items":[1,2,3]}`,
			want:   emitted{data: `{"a":"new","items":[1,9,3],"odd.key*":1,"0":0}`, meta: `{}`},
		},
		{
			name:   "null payload grows into an object",
			fields: []Assignment{{`data.a`, `1`}},
			data:   `null`,
			want:   emitted{data: `{"a":1}`, meta: `{}`},
		},
		{
			name:   "null parent grows into an object",
			fields: []Assignment{{`data.a.b`, `1`}},
			data:   `{"a":null}`,
			want:   emitted{data: `{"a":{"b":1}}`, meta: `{}`},
		},
		{
			name:   "default for a missing value",
			fields: []Assignment{{`data.name`, `default(data.nick, "anonymous")`}},
			data:   `{}`,
			want:   emitted{data: `{"name":"anonymous"}`, meta: `{}`},
		},
		{
			name:   "delete a field and the kv command",
			fields: []Assignment{{`data.b`, `meta.tmp + 1`}, {`meta.tmp`, `delete()`}, {`meta.kv`, ` delete() `}, {`data.a.x`, `delete()`}},
			data:   `{"a":{"x":1,"y":2}}`, meta: `{"kv":{"get":"k"},"tmp":1,"correlation":"c"}`,
			want: emitted{data: `{"a":{"y":2},"b":2}`, meta: `{"correlation":"c"}`},
		},
		{
			name:   "delete what is absent changes nothing",
			fields: []Assignment{{`meta.tmp`, `delete()`}, {`data.a.b.c`, `delete()`}, {`data.s.x`, `delete()`}},
			data:   `{"s":"str"}`,
			want:   emitted{data: `{"s":"str"}`, meta: `{}`},
		},
		{
			name:   "delete an array element and odd keys",
			fields: []Assignment{{`data.items.0`, `delete()`}, {`data["a.b"]`, `delete()`}, {`data["0"]`, `delete()`}},
			data:   `{"items":[1,2],"a.b":1,"0":2,"a":{"b":3}}`,
			want:   emitted{data: `{"items":[2],"a":{"b":3}}`, meta: `{}`},
		},
		{
			name:   "strings are escaped",
			fields: []Assignment{{`data.s`, `"q\"\n" + data.v`}},
			data:   `{"v":"é"}`,
			want:   emitted{data: `{"v":"é","s":"q\"\né"}`, meta: `{}`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op, err := NewSet(SetOptions{Fields: tt.fields})
			if err != nil {
				t.Fatal(err)
			}
			got, err := applyChecked(t, op, ev(tt.data, tt.meta, 42))
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			want.port, want.seq = "out", 42
			if len(got) != 1 || got[0] != want {
				t.Fatalf("got %v\nwant %v", got, want)
			}
			if !gjson.Valid(got[0].data) || !gjson.Valid(got[0].meta) {
				t.Errorf("invalid JSON emitted: %v", got[0])
			}
		})
	}
}

func TestSetErrors(t *testing.T) {
	tests := []struct {
		target, expr, data, meta string
		want                     error
		msg                      string
	}{
		{`data.x`, `data.missing`, `{}`, ``, ErrTarget, `the value of data.missing is missing`},
		{`meta.kv`, `{"increment": "w_" + data.id}`, `{}`, ``, expr.ErrMissing, `data.id: it is missing`},
		{`meta`, `[1]`, `{}`, ``, ErrTarget, `meta must be an object, the value is an array`},
		{`data.x`, `1`, `5`, ``, ErrTarget, `data is a number, not an object or array`},
		{`data.a.b`, `1`, `{"a":"s"}`, ``, ErrTarget, `data.a is a string`},
		{`data.a.b.c`, `1`, `{"a":{"b":true}}`, ``, ErrTarget, `data.a.b is a boolean`},
		{`data.a.x`, `1`, `{"a":[1]}`, ``, ErrTarget, `non-numeric key`},
		{`meta.x`, `1`, `{}`, `"str"`, ErrTarget, `meta is a string`},
		{`data.x`, `1 / 0`, `{}`, ``, expr.ErrArithmetic, `division by zero`},
	}
	for _, tt := range tests {
		op, err := NewSet(SetOptions{Fields: []Assignment{{tt.target, tt.expr}}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := applyChecked(t, op, ev(tt.data, tt.meta, 1))
		if !errors.Is(err, tt.want) {
			t.Errorf("%s = %s on %s: error %v, want %v", tt.target, tt.expr, tt.data, err, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.msg) || !strings.HasPrefix(err.Error(), "set "+tt.target+": ") {
			t.Errorf("error %q does not name the target and contain %q", err, tt.msg)
		}
		if len(got) != 0 {
			t.Errorf("emitted %v despite the error", got)
		}
	}
}

func TestRoute(t *testing.T) {
	op, err := NewRoute(RouteOptions{Routes: []Route{
		{Port: "bans", If: `data.count >= 3`},
		{Port: "warn", If: `data.count >= 1`},
		{Port: "bans", If: `data.vip == false && data.count < 0`},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := op.Ports(), []string{"bans", "warn"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Ports = %v, want %v", got, want)
	}
	for data, port := range map[string]string{
		`{"count":5}`:              "bans",
		`{"count":3}`:              "bans",
		`{"count":1}`:              "warn",
		`{"count":0}`:              "out",
		`{"count":-1,"vip":false}`: "bans",
	} {
		got, err := applyChecked(t, op, ev(data, "", 3))
		if err != nil {
			t.Fatal(err)
		}
		want := []emitted{{port, data, `{}`, 3}}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %v, want %v", data, got, want)
		}
	}
	_, err = applyChecked(t, op, ev(`{"count":"x"}`, "", 3))
	if !errors.Is(err, expr.ErrType) || !strings.Contains(err.Error(), `route "bans"`) {
		t.Errorf("error = %v, want ErrType naming the route", err)
	}

	withDefault, err := NewRoute(RouteOptions{Routes: []Route{{Port: "out", If: `data.ok == true`}}, Default: "rejected"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := withDefault.Ports(), []string{"rejected"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Ports = %v, want %v", got, want)
	}
	got, _ := applyChecked(t, withDefault, ev(`{"ok":false}`, "", 0))
	if len(got) != 1 || got[0].port != "rejected" {
		t.Errorf("default route: got %v", got)
	}
}

func TestRouteOptionsEnsureDefaults(t *testing.T) {
	var o RouteOptions
	o.EnsureDefaults()
	if o.Default != "out" {
		t.Errorf("Default = %q", o.Default)
	}
	o = RouteOptions{Default: "x"}
	o.EnsureDefaults()
	if o.Default != "x" {
		t.Errorf("Default overwritten: %q", o.Default)
	}
}

func TestDrop(t *testing.T) {
	all, err := NewDrop(DropOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := applyChecked(t, all, ev(`{"a":1}`, "", 1)); err != nil || len(got) != 0 {
		t.Errorf("drop all: %v, %v", got, err)
	}
	some, err := NewDrop(DropOptions{If: `data.a == 1`})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := applyChecked(t, some, ev(`{"a":1}`, "", 1)); err != nil || len(got) != 0 {
		t.Errorf("matching event kept: %v, %v", got, err)
	}
	got, err := applyChecked(t, some, ev(`{"a":2}`, "", 1))
	if want := []emitted{{"out", `{"a":2}`, `{}`, 1}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("non-matching event: %v, %v", got, err)
	}
	if _, err := applyChecked(t, some, ev(`{"a":2}`, "", 1)); err != nil {
		t.Fatal(err)
	}
	notBool, _ := NewDrop(DropOptions{If: `data.a`})
	if _, err := applyChecked(t, notBool, ev(`{"a":2}`, "", 1)); !errors.Is(err, expr.ErrNotBoolean) {
		t.Errorf("error = %v, want ErrNotBoolean", err)
	}
}

func TestConstructorErrors(t *testing.T) {
	tests := []struct {
		name string
		make func() (Operator, error)
		want error
		msg  string
	}{
		{"filter empty", func() (Operator, error) { return NewFilter(FilterOptions{}) }, ErrInvalidOption, "filter: option if"},
		{"filter syntax", func() (Operator, error) { return NewFilter(FilterOptions{If: `data.x == (1`}) }, ErrInvalidExpression, "filter: option if: invalid expression: expected ')' at column 13"},
		{"drop syntax", func() (Operator, error) { return NewDrop(DropOptions{If: `1 +`}) }, ErrInvalidExpression, "drop: option if"},
		{"set no fields", func() (Operator, error) { return NewSet(SetOptions{}) }, ErrInvalidOption, "at least one field"},
		{"set bad target", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"total", "1"}}})
		}, ErrInvalidOption, `set: target "total"`},
		{"set target expression", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"data.a + 1", "1"}}})
		}, ErrInvalidOption, `expected '.', '[' or the end of the path`},
		{"set empty expr", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"data.a", ""}}})
		}, ErrInvalidOption, "an expression is required"},
		{"set bad expr", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"data.a", "'x"}}})
		}, ErrInvalidExpression, `set: target "data.a": invalid expression: unterminated string at column 1`},
		{"set delete data", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"data", "delete()"}}})
		}, ErrInvalidOption, `set: target "data": invalid option: data itself cannot be deleted; delete its fields, or set it to null`},
		{"set delete meta", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"meta", "delete()"}}})
		}, ErrInvalidOption, `set it to {}`},
		{"set delete inside", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"data.a", "default(data.b, delete())"}}})
		}, ErrInvalidExpression, `delete() must be the whole expression`},
		{"filter delete", func() (Operator, error) { return NewFilter(FilterOptions{If: `delete()`}) }, ErrInvalidExpression, "a condition must be true or false"},
		{"set bad regexp", func() (Operator, error) {
			return NewSet(SetOptions{Fields: []Assignment{{"data.a", `matches(data.s, "(")`}}})
		}, ErrInvalidExpression, `invalid regular expression`},
		{"route none", func() (Operator, error) { return NewRoute(RouteOptions{}) }, ErrInvalidOption, "at least one route"},
		{"route err port", func() (Operator, error) {
			return NewRoute(RouteOptions{Routes: []Route{{Port: "err", If: "true"}}})
		}, ErrInvalidOption, `port "err" is reserved`},
		{"route bad port", func() (Operator, error) {
			return NewRoute(RouteOptions{Routes: []Route{{Port: "a b", If: "true"}}})
		}, ErrInvalidOption, `route 1: invalid option: port "a b"`},
		{"route empty cond", func() (Operator, error) {
			return NewRoute(RouteOptions{Routes: []Route{{Port: "a", If: ""}}})
		}, ErrInvalidOption, `option route "a"`},
		{"route bad cond", func() (Operator, error) {
			return NewRoute(RouteOptions{Routes: []Route{{Port: "a", If: "data.x = 1"}}})
		}, ErrInvalidExpression, `use '==' to compare at column 8`},
		{"route bad default", func() (Operator, error) {
			return NewRoute(RouteOptions{Routes: []Route{{Port: "a", If: "true"}}, Default: "in"})
		}, ErrInvalidOption, `option default`},
	}
	for _, tt := range tests {
		op, err := tt.make()
		if op != nil || !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, %v; want %v", tt.name, op, err, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s: error %q does not contain %q", tt.name, err, tt.msg)
		}
		if tt.want == ErrInvalidExpression && !errors.Is(err, expr.ErrSyntax) {
			t.Errorf("%s: error does not wrap expr.ErrSyntax", tt.name)
		}
	}
}

// mustOp returns a function unwrapping a constructor's result, failing t
// on error.
func mustOp(t testing.TB) func(Operator, error) Operator {
	return func(op Operator, err error) Operator {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return op
	}
}

func TestPipeline(t *testing.T) {
	m := mustOp(t)
	ops := []Operator{
		m(NewFilter(FilterOptions{If: `exists(data.steam_id)`})),
		m(NewSet(SetOptions{Fields: []Assignment{
			{`meta.kv`, `{"increment": "warnings_" + data.steam_id}`},
			{`data.count`, `data.count + 1`},
		}})),
		m(NewRoute(RouteOptions{Routes: []Route{{Port: "bans", If: `data.count >= 3`}}})),
		m(NewDrop(DropOptions{If: `data.count == 1`})),
	}
	p := NewPipeline(ops)
	if got, want := p.Ports(), []string{"out", "err", "bans"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Ports = %v, want %v", got, want)
	}
	events := []pipeline.Event{
		ev(`{"steam_id":"a","count":0}`, `{"c":1}`, 10), // count 1: dropped
		ev(`{"steam_id":"b","count":1}`, `{"c":2}`, 11), // count 2: out
		ev(`{"other":1}`, `{"c":3}`, 12),                // filtered
		ev(`{"steam_id":"c","count":2}`, `{"c":4}`, 13), // count 3: bans
		ev(`{"steam_id":"d","count":"x"}`, `{"c":5}`, 14),
		ev(`{"steam_id":"e","count":5}`, ``, 15), // bans
		ev(`{"steam_id":"f","count":1}`, `{"c":7}`, 16),
	}
	var copies []pipeline.Event
	for _, e := range events {
		copies = append(copies, e.Derive(append([]byte(nil), e.Data...), append([]byte(nil), e.Meta...)))
	}
	var r recorder
	if err := p.Process(context.Background(), events, &r); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		if !bytes.Equal(events[i].Data, copies[i].Data) || !bytes.Equal(events[i].Meta, copies[i].Meta) {
			t.Fatalf("event %d modified", i)
		}
	}
	// "x" + 1 concatenates, so the failure comes from the route.
	errMeta := `{"c":5,"error":"operator 3 (route): route \"bans\": cannot compare data.count (a string) with 3 (a number) using >= (only two numbers or two strings are ordered) at column 12"}`
	want := []emitted{
		{"out", `{"steam_id":"b","count":2}`, `{"c":2,"kv":{"increment":"warnings_b"}}`, 11},
		{"bans", `{"steam_id":"c","count":3}`, `{"c":4,"kv":{"increment":"warnings_c"}}`, 13},
		{"err", `{"steam_id":"d","count":"x"}`, errMeta, 14},
		{"bans", `{"steam_id":"e","count":6}`, `{"kv":{"increment":"warnings_e"}}`, 15},
		{"out", `{"steam_id":"f","count":2}`, `{"c":7,"kv":{"increment":"warnings_f"}}`, 16},
	}
	if !reflect.DeepEqual(r.got, want) {
		t.Errorf("got\n%v\nwant\n%v", strings.Join(strs(r.got), "\n"), strings.Join(strs(want), "\n"))
	}
}

func strs(es []emitted) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.String())
	}
	return out
}

// TestPipelineErrorKeepsOriginal checks that a failure after a change sends
// the event as it entered the pipeline, and that meta.error replaces an
// existing error while invalid meta still yields an object.
func TestPipelineErrorKeepsOriginal(t *testing.T) {
	m := mustOp(t)
	fail := OperatorFunc(func(pipeline.Event, func(string, pipeline.Event)) error { return errors.New("boom") })
	p := NewPipeline([]Operator{
		m(NewSet(SetOptions{Fields: []Assignment{{`data.changed`, `true`}}})),
		fail,
	})
	var r recorder
	events := []pipeline.Event{
		ev(`{"a":1}`, `{"error":"old","keep":1}`, 1),
		ev(`{"a":2}`, `[1]`, 2),
	}
	if err := p.Process(context.Background(), events, &r); err != nil {
		t.Fatal(err)
	}
	want := []emitted{
		{"err", `{"a":1}`, `{"error":"operator 2 (operators.OperatorFunc): boom","keep":1}`, 1},
		{"err", `{"a":2}`, `{"error":"operator 2 (operators.OperatorFunc): boom"}`, 2},
	}
	if !reflect.DeepEqual(r.got, want) {
		t.Errorf("got %v\nwant %v", r.got, want)
	}
}

func TestPipelineFanOutAndEmpty(t *testing.T) {
	m := mustOp(t)
	// An operator emitting twice on out feeds each copy through the rest
	// of the pipeline before the next input event.
	twice := OperatorFunc(func(e pipeline.Event, emit func(string, pipeline.Event)) error {
		emit("out", e.Derive([]byte(`"1st"`), nil))
		emit("side", e)
		emit("out", e.Derive([]byte(`"2nd"`), nil))
		return nil
	})
	tag := m(NewSet(SetOptions{Fields: []Assignment{{`meta.tag`, `data`}}}))
	p := NewPipeline([]Operator{twice, tag})
	var r recorder
	_ = p.Process(context.Background(), []pipeline.Event{ev(`0`, "", 1), ev(`1`, "", 2)}, &r)
	want := []emitted{
		{"out", `"1st"`, `{"tag":"1st"}`, 1}, {"side", `0`, `{}`, 1}, {"out", `"2nd"`, `{"tag":"2nd"}`, 1},
		{"out", `"1st"`, `{"tag":"1st"}`, 2}, {"side", `1`, `{}`, 2}, {"out", `"2nd"`, `{"tag":"2nd"}`, 2},
	}
	if !reflect.DeepEqual(r.got, want) {
		t.Errorf("got %v\nwant %v", r.got, want)
	}

	var r2 recorder
	empty := NewPipeline(nil)
	_ = empty.Process(context.Background(), []pipeline.Event{ev(`1`, "", 5)}, &r2)
	if want := []emitted{{"out", `1`, `{}`, 5}}; !reflect.DeepEqual(r2.got, want) {
		t.Errorf("empty pipeline: got %v", r2.got)
	}
	if got := empty.Ports(); !reflect.DeepEqual(got, []string{"out", "err"}) {
		t.Errorf("empty Ports = %v", got)
	}
}

// TestPipelineInGraph runs a pipeline as a node of a pipeline.Graph: order
// and origins are kept across slices and route ports can be linked.
func TestPipelineInGraph(t *testing.T) {
	m := mustOp(t)
	const n = 500
	p := NewPipeline([]Operator{
		m(NewSet(SetOptions{Fields: []Assignment{{`data`, `{"i": data, "even": data % 2 == 0}`}}})),
		m(NewRoute(RouteOptions{Routes: []Route{{Port: "odd", If: `data.even == false`}}})),
	})
	g := pipeline.New(pipeline.Options{QueueDepth: 2})
	src := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for i := 0; i < n; i++ {
			emit.Emit("out", testTracker.Track(i, pipeline.Event{Data: []byte(fmt.Sprint(i))}))
			if i%7 == 0 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	})
	sinks := map[string]*recorder{"out": {}, "odd": {}}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(g.AddSource("src", src, "out"))
	must(g.AddProcessor("pipe", p, p.Ports()...))
	for port, rec := range sinks {
		must(g.AddProcessor("sink-"+port, pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
			for _, e := range events {
				rec.Emit(port, e)
			}
			return nil
		})))
		must(g.Link("pipe", port, "sink-"+port))
	}
	must(g.Link("src", "out", "pipe"))
	must(g.Run(context.Background()))
	for port, rec := range sinks {
		if len(rec.got) != n/2 {
			t.Fatalf("%s received %d events, want %d", port, len(rec.got), n/2)
		}
		for j, e := range rec.got {
			i := 2 * j
			if port == "odd" {
				i++
			}
			want := fmt.Sprintf(`{"i":%d,"even":%v}`, i, i%2 == 0)
			if e.data != want || e.seq != uint64(i) {
				t.Fatalf("%s[%d] = %s #%d, want %s #%d", port, j, e.data, e.seq, want, i)
			}
		}
	}
}
