package lua

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
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

// benchIncrement pushes b.N events, in batches of 1000 over 1000 keys,
// through proc (the lua processor or the kv connector itself) on a synced
// pebblestore, and reports ops/s.
func benchIncrement(b *testing.B, lua bool) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	conn, err := kv.New(store, kv.Options{Logger: quiet, ReclaimInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	defer conn.Close(ctx)
	var proc pipeline.Processor = conn
	if lua {
		p, err := New(Options{Script: `emit("out", {n = kv.increment(event.data.key)})`, Store: conn, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close(ctx)
		proc = p
	}
	const batchSize, keys = 1000, 1000
	em := &countEmitter{}
	batch := make([]pipeline.Event, 0, batchSize)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		batch = batch[:0]
		for ; i < b.N && len(batch) < batchSize; i++ {
			k := fmt.Sprintf("k%04d", i%keys)
			if lua {
				batch = append(batch, pipeline.Event{Data: []byte(`{"key":"` + k + `"}`), Seq: uint64(i)})
			} else {
				batch = append(batch, pipeline.Event{Meta: []byte(`{"kv":{"increment":"` + k + `"}}`), Seq: uint64(i)})
			}
		}
		if err := proc.Process(ctx, batch, em); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if em.err != 0 || em.out != b.N {
		b.Fatalf("%d out, %d err for %d events; first error: %s", em.out, em.err, b.N, em.first)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkIncrementLua is a trivial script incrementing a counter per event.
func BenchmarkIncrementLua(b *testing.B) { benchIncrement(b, true) }

// BenchmarkIncrementCommand is the same work as the kv increment command.
func BenchmarkIncrementCommand(b *testing.B) { benchIncrement(b, false) }
