package changelog

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// benchRecord is a commit group of n puts of 100-byte values.
func benchRecord(n, base int) *Record {
	r := &Record{Input: uint64(base)}
	val := make([]byte, 100)
	for i := range val {
		val[i] = 'v'
	}
	for i := 0; i < n; i++ {
		r.Set([]byte(fmt.Sprintf("key/%08d", base+i)), val, 0)
	}
	return r
}

// BenchmarkAppend appends commit groups one at a time (each waits for its
// acknowledgement) to a three-replica stream, for groups of 1 and 100
// puts.
func BenchmarkAppend(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("puts=%d", n), func(b *testing.B) {
			l, _ := openLogB(b)
			ctx := context.Background()
			w := l.NewWriter(0, 1)
			r := benchRecord(n, 0)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := w.Append(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			sec := time.Since(start).Seconds()
			b.ReportMetric(float64(b.N)/sec, "appends/s")
			b.ReportMetric(float64(b.N*n)/sec, "puts/s")
		})
	}
}

// BenchmarkSubmit pipelines appends, up to 32 in flight, as a store's
// syncer would while later groups are built.
func BenchmarkSubmit(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("puts=%d", n), func(b *testing.B) {
			l, _ := openLogB(b)
			ctx := context.Background()
			w := l.NewWriter(0, 1)
			r := benchRecord(n, 0)
			var waits []func() (uint64, error)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				waits = append(waits, w.Submit(ctx, r))
				if len(waits) == 32 {
					if _, err := waits[0](); err != nil {
						b.Fatal(err)
					}
					waits = waits[1:]
				}
			}
			for _, wait := range waits {
				if _, err := wait(); err != nil {
					b.Fatal(err)
				}
			}
			sec := time.Since(start).Seconds()
			b.ReportMetric(float64(b.N)/sec, "appends/s")
			b.ReportMetric(float64(b.N*n)/sec, "puts/s")
		})
	}
}

// BenchmarkRestore restores 100,000 keys, written as 100 groups of 1,000
// puts, into a Pebble store.
func BenchmarkRestore(b *testing.B) {
	const keys, perGroup = 100_000, 1000
	l, _ := openLogB(b)
	ctx := context.Background()
	w := l.NewWriter(0, 1)
	for g := 0; g < keys/perGroup; g++ {
		if _, err := w.Append(ctx, benchRecord(perGroup, g*perGroup)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		res, err := l.Restore(ctx, openPebble(b), 0)
		if err != nil {
			b.Fatal(err)
		}
		if res.Writes != keys {
			b.Fatalf("restored %d writes, want %d", res.Writes, keys)
		}
	}
	sec := time.Since(start).Seconds() / float64(b.N)
	b.ReportMetric(sec, "s/100k-keys")
	b.ReportMetric(keys/sec, "keys/s")
}

// BenchmarkReplicatedStore runs increments of 10,000 keys through a Pebble
// store's Update, in calls of 100 transactions from 4 goroutines (as kv
// connectors do), with and without the changelog as its Replicator.
func BenchmarkReplicatedStore(b *testing.B) {
	for _, replicated := range []bool{false, true} {
		b.Run(fmt.Sprintf("changelog=%v", replicated), func(b *testing.B) {
			opts := pebblestore.Options{}
			if replicated {
				l, _ := openLogB(b)
				opts.Replicator = l.NewWriter(0, 1)
			}
			s, err := pebblestore.Open(b.TempDir(), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const perCall, goroutines = 100, 4
			incr := func(key []byte) kv.TxnFunc {
				return func(tx kv.Txn) error {
					v, _, _, err := tx.Get(key)
					if err != nil {
						return err
					}
					n, _ := strconv.Atoi(string(v))
					return tx.Set(key, strconv.AppendInt(nil, int64(n+1), 10), 0)
				}
			}
			calls := (b.N + perCall - 1) / perCall
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					fns := make([]kv.TxnFunc, perCall)
					errs := make([]error, perCall)
					for c := next.Add(1); c <= int64(calls); c = next.Add(1) {
						for i := range fns {
							fns[i] = incr([]byte(fmt.Sprintf("key/%05d", (int(c)*perCall+i)%10000)))
						}
						if err := s.Update(context.Background(), fns, errs); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(calls*perCall)/time.Since(start).Seconds(), "increments/s")
		})
	}
}

// BenchmarkRestoreFromCheckpoint restores N keys (100-byte values, each
// written once, in records of 1,000) from the log alone, then from a
// checkpoint of the same state (the log purged below it), into fresh
// Pebble stores. Run with -benchtime=1x: each iteration appends N keys.
func BenchmarkRestoreFromCheckpoint(b *testing.B) {
	for _, keys := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				l, _ := openLogB(b)
				ctx := context.Background()
				w := l.NewWriter(0, 1)
				const perRecord = 1000
				var waits []func() (uint64, error)
				for r := 0; r < keys/perRecord; r++ {
					waits = append(waits, w.Submit(ctx, benchRecord(perRecord, r*perRecord)))
					if len(waits) == MaxInFlight/2 {
						if _, err := waits[0](); err != nil {
							b.Fatal(err)
						}
						waits = waits[1:]
					}
				}
				for _, wait := range waits {
					if _, err := wait(); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				s := openPebble(b)
				res, err := l.Restore(ctx, s, 0)
				if err != nil || res.Writes != keys {
					b.Fatalf("log restore = %+v, %v", res, err)
				}
				logSec := time.Since(start).Seconds()

				b.StopTimer()
				cw, err := l.Fence(ctx, 2)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := cw.CatchUp(ctx, s, res.Position); err != nil {
					b.Fatal(err)
				}
				snap := s.Snapshot()
				c, err := cw.Checkpoint(ctx, snap, time.Now())
				_ = snap.Close()
				if err != nil || c.Keys != keys {
					b.Fatalf("checkpoint = %+v, %v", c, err)
				}
				b.StartTimer()
				start = time.Now()
				res, err = l.Restore(ctx, openPebble(b), 0)
				if err != nil || res.CheckpointKeys != keys {
					b.Fatalf("checkpoint restore = %+v, %v", res, err)
				}
				ckSec := time.Since(start).Seconds()
				b.ReportMetric(logSec, "log-s")
				b.ReportMetric(ckSec, "checkpoint-s")
				b.ReportMetric(float64(keys)/logSec, "log-keys/s")
				b.ReportMetric(float64(keys)/ckSec, "checkpoint-keys/s")
			}
		})
	}
}
