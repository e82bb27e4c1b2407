package operators

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/operators/expr"
)

// TestOptionsClock checks that each operator's Expr.Now reaches its
// expressions.
func TestOptionsClock(t *testing.T) {
	at := expr.Options{Now: func() time.Time { return time.UnixMilli(5000) }}
	ops := map[string]Operator{
		"filter": mustOp(t)(NewFilter(FilterOptions{If: `now() == 5000`, Expr: at})),
		"drop":   mustOp(t)(NewDrop(DropOptions{If: `now() != 5000`, Expr: at})),
		"route":  mustOp(t)(NewRoute(RouteOptions{Routes: []Route{{Port: "out", If: `now_s() == 5`}}, Default: "late", Expr: at})),
		"set":    mustOp(t)(NewSet(SetOptions{Fields: []Assignment{{"data.t", "now()"}}, Expr: at})),
	}
	for name, op := range ops {
		got, err := applyChecked(t, op, ev(`{}`, ``, 1))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != 1 || got[0].port != "out" {
			t.Errorf("%s: the clock did not reach the expression: %v", name, got)
		}
		if name == "set" && got[0].data != `{"t":5000}` {
			t.Errorf("set now() = %s, want 5000", got[0].data)
		}
	}
}

// TestUseClock checks that a clock stored with component.UseClock reaches the
// operators a spec builds, and that without it they use the real time.
func TestUseClock(t *testing.T) {
	build := func(res *component.Resources) Operator {
		t.Helper()
		cfg := component.NewConfig("p", "set", nil, component.Entry{Key: "data.t", Value: "now()"})
		env := &component.Env{Flow: "f", Logger: slog.Default(), Resources: res}
		c, err := SetSpec().Build(context.Background(), env, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return c.Operator.(Operator)
	}
	res := component.NewResources()
	component.UseClock(res, func() time.Time { return time.UnixMilli(1234) })
	got, err := applyChecked(t, build(res), ev(`{}`, ``, 1))
	if err != nil || len(got) != 1 || got[0].data != `{"t":1234}` {
		t.Fatalf("with UseClock: %v, %v; want t 1234", got, err)
	}
	got, err = applyChecked(t, build(component.NewResources()), ev(`{}`, ``, 1))
	if err != nil || len(got) != 1 || got[0].data == `{"t":1234}` || len(got[0].data) < len(`{"t":1700000000000}`) {
		t.Fatalf("without UseClock: %v, %v; want the real time", got, err)
	}
}
