package operators

import (
	"context"
	"testing"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

var benchEvent = pipeline.Event{
	Data: []byte(`{"steam_id":"76561198000000001","count":4,"player":{"name":"Ann","level":12},"items":[1,2,3]}`),
	Meta: []byte(`{"correlation":"c-1","source":"game"}`),
}

func benchApply(b *testing.B, op Operator) {
	b.Helper()
	emit := func(string, pipeline.Event) {}
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if err := op.Apply(benchEvent, emit); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

func BenchmarkFilter(b *testing.B) {
	op, err := NewFilter(FilterOptions{If: `exists(data.steam_id) && data.count >= 3 && data.player.level > 10`})
	if err != nil {
		b.Fatal(err)
	}
	benchApply(b, op)
}

func BenchmarkSet(b *testing.B) {
	op, err := NewSet(SetOptions{Fields: []Assignment{
		{Target: `meta.kv`, Expr: `{"increment": "warnings_" + data.steam_id}`},
		{Target: `data.count`, Expr: `data.count + 1`},
	}})
	if err != nil {
		b.Fatal(err)
	}
	benchApply(b, op)
}

type discard struct{}

func (discard) Emit(string, pipeline.Event) {}

func BenchmarkPipeline(b *testing.B) {
	m := mustOp(b)
	p := NewPipeline([]Operator{
		m(NewFilter(FilterOptions{If: `exists(data.steam_id)`})),
		m(NewSet(SetOptions{Fields: []Assignment{{Target: `meta.kv`, Expr: `{"increment": "warnings_" + data.steam_id}`}}})),
		m(NewRoute(RouteOptions{Routes: []Route{{Port: "bans", If: `data.count >= 3`}}})),
	})
	events := make([]pipeline.Event, 128)
	for i := range events {
		events[i] = benchEvent
	}
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		_ = p.Process(context.Background(), events, discard{})
	}
	b.ReportMetric(float64(b.N*len(events))/time.Since(start).Seconds(), "ops/s")
}
