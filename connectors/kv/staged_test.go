package kv_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// orderSink records the kv connector's output in arrival order.
type orderSink struct {
	mu     sync.Mutex
	events []pipeline.Event
	ports  []string
}

func (s *orderSink) add(port string) pipeline.Processor {
	return pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, ev := range events {
			s.events = append(s.events, ev)
			s.ports = append(s.ports, port)
		}
		return nil
	})
}

// runThrough runs src through conn in a flow whose kv node has several
// slices in flight, and returns what reached its out and err ports.
func runThrough(t *testing.T, src pipeline.Source, conn *kv.Connector) *orderSink {
	t.Helper()
	sink := &orderSink{}
	g := pipeline.New(pipeline.Options{QueueDepth: 4, StageDepth: 4})
	for _, err := range []error{
		g.AddSource("src", src, pipeline.PortOut),
		g.AddProcessor("kv", conn, kv.Ports()...),
		g.AddProcessor("out", sink.add(pipeline.PortOut)),
		g.AddProcessor("err", sink.add(pipeline.PortErr)),
		g.Link("src", pipeline.PortOut, "kv"),
		g.Link("kv", pipeline.PortOut, "out"),
		g.Link("kv", pipeline.PortErr, "err"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return sink
}

// TestStagedBatchesApplyInInputOrder runs a flow whose kv node starts
// several slices before the first finishes: slices that write and
// slices that only read alternate on the same keys, so a read that ran
// past an earlier write, or before a later one landed, shows up as a
// wrong value.
func TestStagedBatchesApplyInInputOrder(t *testing.T) {
	backends := map[string]func(t *testing.T) kv.Backend{
		"pebble":   func(t *testing.T) kv.Backend { return openPebble(t, t.TempDir()) },
		"memstore": func(*testing.T) kv.Backend { return memstore.New() },
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			const rounds, keys = 1500, 3
			conn, err := kv.New(open(t), kv.Options{ReclaimInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			// Expected get results, by correlation.
			want := map[int]string{}
			src := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
				corr := 0
				for r := range rounds {
					k := r % keys
					// A writing slice: put k = r (and, every fifth round,
					// an increment on a counter), then flushed alone.
					emit.Emit(pipeline.PortOut, pipeline.Event{
						Meta: fmt.Appendf(nil, `{"kv":{"put":"k%d"},"correlation":%d}`, k, corr),
						Data: []byte(strconv.Itoa(r)),
					})
					corr++
					if err := emit.Flush(ctx); err != nil {
						return err
					}
					// A read-only slice: get k, which must see r.
					want[corr] = strconv.Itoa(r)
					emit.Emit(pipeline.PortOut, pipeline.Event{
						Meta: fmt.Appendf(nil, `{"kv":{"get":"k%d"},"correlation":%d}`, k, corr),
					})
					corr++
					if err := emit.Flush(ctx); err != nil {
						return err
					}
				}
				return nil
			})
			sink := runThrough(t, src, conn)
			if len(sink.events) != 2*rounds {
				t.Fatalf("%d results for %d commands", len(sink.events), 2*rounds)
			}
			for i, ev := range sink.events {
				corr := int(gjson.GetBytes(ev.Meta, "correlation").Int())
				if corr != i || sink.ports[i] != pipeline.PortOut {
					t.Fatalf("result %d: port %s, correlation %d: %s", i, sink.ports[i], corr, ev.Meta)
				}
				if w, ok := want[corr]; ok && string(ev.Data) != w {
					t.Fatalf("get with correlation %d read %s, want %s (the put just before it)", corr, ev.Data, w)
				}
			}
		})
	}
}
