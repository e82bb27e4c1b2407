package lua

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/pipeline"
)

// countEmitter counts events by port.
type countEmitter struct {
	out, err int
	first    []byte // meta of the first err event
}

func (c *countEmitter) Emit(port string, ev pipeline.Event) {
	if port == pipeline.PortErr {
		if c.err == 0 {
			c.first = ev.Meta
		}
		c.err++
		return
	}
	c.out++
}

// Kinds of benchIncrement: what handles events.
const (
	viaLua     = iota // the lua processor, script reading event.data.key
	viaCommand        // the kv connector, events carrying the increment command
	viaSet            // a set operator building the command from data.key, then the kv connector
)

// benchConnector returns a kv connector on a synced pebblestore in a
// temporary directory, closed when the benchmark ends, and a quiet logger.
func benchConnector(b *testing.B, optimistic bool) (*kv.Connector, *slog.Logger) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	conn, err := kv.New(store, kv.Options{Logger: quiet, ReclaimInterval: -1, Optimistic: optimistic})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn, quiet
}

// benchIncrement pushes b.N events, in slices of 1000 over 1000 keys,
// through the lua processor or the kv connector on a synced pebblestore,
// and reports ops/s.
func benchIncrement(b *testing.B, kind int, optimistic bool) {
	conn, quiet := benchConnector(b, optimistic)
	ctx := context.Background()
	var proc pipeline.Processor = conn
	switch kind {
	case viaSet:
		set, err := operators.NewSet(operators.SetOptions{Fields: []operators.Assignment{{Target: "meta.kv", Expr: `{"increment": data.key}`}}})
		if err != nil {
			b.Fatal(err)
		}
		proc = &chain{first: operators.NewPipeline([]operators.Operator{set}), then: conn}
	case viaLua:
		p, err := New(Options{Script: `emit("out", {n = kv.increment(event.data.key)})`, Store: conn, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close(ctx)
		proc = p
	}
	const batchSize, keys = 1000, 1000
	em := &countEmitter{}
	events := make([]pipeline.Event, 0, batchSize)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		events = events[:0]
		for ; i < b.N && len(events) < batchSize; i++ {
			k := fmt.Sprintf("k%04d", i%keys)
			if kind != viaCommand {
				events = append(events, pipeline.Event{Data: []byte(`{"key":"` + k + `"}`)})
			} else {
				events = append(events, pipeline.Event{Meta: []byte(`{"kv":{"increment":"` + k + `"}}`)})
			}
		}
		if err := proc.Process(ctx, events, em); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if em.err != 0 || em.out != b.N {
		b.Fatalf("%d out, %d err for %d events; first error: %s", em.out, em.err, b.N, em.first)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// chain runs first on a slice, then then on what first emitted on "out"
// (anything else goes straight to emit): two nodes of a flow, linked.
type chain struct {
	first, then pipeline.Processor
	buf         []pipeline.Event
}

func (c *chain) Emit(port string, ev pipeline.Event) {
	if port == pipeline.PortOut {
		c.buf = append(c.buf, ev)
	}
}

func (c *chain) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	c.buf = c.buf[:0]
	if err := c.first.Process(ctx, events, c); err != nil {
		return err
	}
	return c.then.Process(ctx, c.buf, emit)
}

// BenchmarkIncrementLua is a trivial script incrementing a counter per
// event, the key read from event.data.key.
func BenchmarkIncrementLua(b *testing.B) { benchIncrement(b, viaLua, false) }

// BenchmarkIncrementLuaOptimistic is BenchmarkIncrementLua with the
// connector's optimistic execution on.
func BenchmarkIncrementLuaOptimistic(b *testing.B) { benchIncrement(b, viaLua, true) }

// BenchmarkIncrementCommand is the same work as the kv increment command,
// carried ready-made by each event.
func BenchmarkIncrementCommand(b *testing.B) { benchIncrement(b, viaCommand, false) }

// BenchmarkIncrementSetCommand is the equivalent command flow of
// BenchmarkIncrementLua: events carry only {"key": ...}; a set operator
// builds meta.kv.increment from data.key and the kv connector applies it.
func BenchmarkIncrementSetCommand(b *testing.B) { benchIncrement(b, viaSet, false) }

// BenchmarkIncrementLuaParallel runs the script of BenchmarkIncrementLua
// in two lua processors at once on one store (two flows sharing it), each
// on its own keys, and reports their combined ops/s.
func BenchmarkIncrementLuaParallel(b *testing.B) { benchParallel(b, false) }

// BenchmarkIncrementLuaParallelOptimistic is BenchmarkIncrementLuaParallel
// with the connector's optimistic execution on.
func BenchmarkIncrementLuaParallelOptimistic(b *testing.B) { benchParallel(b, true) }

func benchParallel(b *testing.B, optimistic bool) {
	conn, quiet := benchConnector(b, optimistic)
	ctx := context.Background()
	const procs, batchSize, keys = 2, 1000, 1000
	var ps [procs]*Processor
	for j := range ps {
		var err error
		if ps[j], err = New(Options{Script: `emit("out", {n = kv.increment(event.data.key)})`, Store: conn, Logger: quiet}); err != nil {
			b.Fatal(err)
		}
		defer ps[j].Close(ctx)
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	ems := make([]*countEmitter, procs)
	for j, p := range ps {
		ems[j] = &countEmitter{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := b.N / procs
			events := make([]pipeline.Event, 0, batchSize)
			for i := 0; i < n; {
				events = events[:0]
				for ; i < n && len(events) < batchSize; i++ {
					events = append(events, pipeline.Event{Data: []byte(fmt.Sprintf(`{"key":"p%dk%04d"}`, j, i%keys))})
				}
				if err := p.Process(ctx, events, ems[j]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	for _, em := range ems {
		if em.err != 0 || em.out != b.N/procs {
			b.Fatalf("%d out, %d err; first error: %s", em.out, em.err, em.first)
		}
	}
	b.ReportMetric(float64(b.N/procs*procs)/time.Since(start).Seconds(), "ops/s")
}
