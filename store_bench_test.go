package flowrun_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/flowrun/flowrun"
)

// benchPut measures durable puts (sync on, the default) of small values to
// distinct keys: one goroutine after another when parallelism is 0,
// parallelism goroutines per GOMAXPROCS otherwise. Concurrent puts share
// commit groups, so their throughput is that of the store's writer, not
// of one fsync per put.
func benchPut(b *testing.B, parallelism int) {
	ctx := context.Background()
	st, err := flowrun.OpenStore(ctx, b.TempDir(), flowrun.StoreOptions{NoReclaim: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ns := st.Namespace("bench")
	value := []byte(`{"hp":10,"room":"hall"}`)
	var next atomic.Int64
	put := func() {
		if err := ns.Put(ctx, "k"+strconv.FormatInt(next.Add(1), 10), value, flowrun.PutOptions{}); err != nil {
			b.Error(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	if parallelism == 0 {
		for b.Loop() {
			put()
		}
	} else {
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				put()
			}
		})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
}

// BenchmarkStorePutSequential: each put waits for its own fsync.
func BenchmarkStorePutSequential(b *testing.B) { benchPut(b, 0) }

// BenchmarkStorePutParallel: 32 goroutines per GOMAXPROCS put at once.
func BenchmarkStorePutParallel(b *testing.B) { benchPut(b, 32) }
