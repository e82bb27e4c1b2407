package kv_test

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

// Connector benchmarks call Process directly, in slices of benchBatch
// events, on a synced pebblestore. b.N counts operations; each reports its
// throughput as ops/s. They measure the connector and store without the
// graph; `flowrun bench` measures the whole event path.
const (
	benchBatch = 1000
	benchKeys  = 10_000
)

// benchValue is a 100-byte JSON string.
var benchValue = []byte(`"` + fmt.Sprintf("%098d", 0)[:98] + `"`)

// countEmitter counts results and keeps the first error event.
type countEmitter struct {
	out, err int
	firstErr []byte
}

func (c *countEmitter) Emit(port string, ev pipeline.Event) {
	if port == pipeline.PortErr {
		if c.err == 0 {
			c.firstErr = ev.Meta
		}
		c.err++
		return
	}
	c.out++
}

// benchConnector runs b.N commands built by event (for operation i) through
// a Connector on a fresh synced store, after storing preload at every key
// when preload is not nil.
func benchConnector(b *testing.B, preload []byte, event func(i int) pipeline.Event) {
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
	em := &countEmitter{}
	events := make([]pipeline.Event, 0, benchBatch)
	if preload != nil {
		for k := range benchKeys {
			events = append(events, pipeline.Event{Meta: []byte(fmt.Sprintf(`{"kv":{"put":"k%08d"}}`, k)), Data: preload})
			if len(events) == benchBatch || k == benchKeys-1 {
				if err := conn.Process(ctx, events, em); err != nil {
					b.Fatal(err)
				}
				events = events[:0]
			}
		}
		*em = countEmitter{}
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		events = events[:0]
		for ; i < b.N && len(events) < benchBatch; i++ {
			events = append(events, event(i))
		}
		if err := conn.Process(ctx, events, em); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if em.err != 0 || em.out != b.N {
		b.Fatalf("%d results, %d errors (first: %s), want %d results", em.out, em.err, em.firstErr, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
}

func benchKey(i int) int { return (i * 7919) % benchKeys }

func BenchmarkConnectorPut(b *testing.B) {
	benchConnector(b, nil, func(i int) pipeline.Event {
		return pipeline.Event{Meta: fmt.Appendf(nil, `{"kv":{"put":"k%08d"}}`, benchKey(i)), Data: benchValue}
	})
}

func BenchmarkConnectorGet(b *testing.B) {
	benchConnector(b, benchValue, func(i int) pipeline.Event {
		return pipeline.Event{Meta: fmt.Appendf(nil, `{"kv":{"get":"k%08d"}}`, benchKey(i))}
	})
}

func BenchmarkConnectorIncrement(b *testing.B) {
	benchConnector(b, []byte("0"), func(i int) pipeline.Event {
		return pipeline.Event{Meta: fmt.Appendf(nil, `{"kv":{"increment":"k%08d","by":1}}`, benchKey(i))}
	})
}

// BenchmarkConnectorCAS replaces each key's value with one holding its next
// version; the benchmark tracks versions so every cas succeeds.
func BenchmarkConnectorCAS(b *testing.B) {
	versions := make([]int, benchKeys)
	value := func(v int) []byte { return fmt.Appendf(nil, `"%098d"`, v)[:100] }
	benchConnector(b, value(0), func(i int) pipeline.Event {
		k := benchKey(i)
		v := versions[k]
		versions[k]++
		return pipeline.Event{
			Meta: fmt.Appendf(nil, `{"kv":{"cas":"k%08d","old":%s}}`, k, value(v)),
			Data: value(v + 1),
		}
	})
}
