package pebblestore

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/batchrepr"

	"github.com/flowrun/flowrun/connectors/kv"
)

// The put benchmarks write b.N 100-byte values over benchKeys keys in
// batches of benchBatch, each batch synced, once through Store.Update and
// once on raw Pebble, and report ops/s; their ratio is the store's
// overhead over Pebble.
const (
	benchBatch = 1000
	benchKeys  = 10_000
)

func benchKeyAt(dst []byte, i int) []byte {
	return fmt.Appendf(dst[:0], "k%08d", (i*7919)%benchKeys)
}

var benchValue = make([]byte, 100)

type quietPebbleLogger struct{}

func (quietPebbleLogger) Infof(string, ...any)  {}
func (quietPebbleLogger) Errorf(string, ...any) {}
func (quietPebbleLogger) Fatalf(f string, a ...any) {
	panic(fmt.Sprintf(f, a...))
}

func BenchmarkRawPebblePut(b *testing.B) {
	db, err := pebble.Open(b.TempDir(), &pebble.Options{Logger: quietPebbleLogger{}})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	var key []byte
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		batch := db.NewBatch()
		for ; i < b.N && int(batch.Count()) < benchBatch; i++ {
			key = benchKeyAt(key, i)
			if err := batch.Set(key, benchValue, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := batch.Commit(pebble.Sync); err != nil {
			b.Fatal(err)
		}
		_ = batch.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

func BenchmarkStoreUpdatePut(b *testing.B) {
	s, err := Open(b.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	keys := make([][]byte, benchBatch)
	fns := make([]kv.TxnFunc, 0, benchBatch)
	errs := make([]error, benchBatch)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		fns = fns[:0]
		for ; i < b.N && len(fns) < benchBatch; i++ {
			j := len(fns)
			keys[j] = benchKeyAt(keys[j], i)
			fns = append(fns, func(tx kv.Txn) error { return tx.Set(keys[j], benchValue, 0) })
		}
		if err := s.Update(ctx, fns, errs[:len(fns)]); err != nil {
			b.Fatal(err)
		}
		for _, err := range errs[:len(fns)] {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
}

// BenchmarkStoreUpdateGetCAS measures a read-modify-write (read, then set)
// through Store.Update over 10,000 keys, with and without the row cache.
func BenchmarkStoreUpdateGetCAS(b *testing.B) {
	for _, rc := range []struct {
		name  string
		bytes int64
	}{{"row_cache", 0}, {"no_row_cache", -1}} {
		b.Run(rc.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{RowCacheBytes: rc.bytes, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const keySpace = 10_000
			ctx := context.Background()
			keys := make([][]byte, benchBatch)
			fns := make([]kv.TxnFunc, 0, benchBatch)
			errs := make([]error, benchBatch)
			run := func(n int, rmw bool) {
				for i := 0; i < n; {
					fns = fns[:0]
					for ; i < n && len(fns) < benchBatch; i++ {
						j := len(fns)
						keys[j] = benchKeyAt(keys[j], (i*7919)%keySpace)
						fns = append(fns, func(tx kv.Txn) error {
							if rmw {
								if _, _, _, err := tx.Get(keys[j]); err != nil {
									return err
								}
							}
							return tx.Set(keys[j], benchValue, 0)
						})
					}
					if err := s.Update(ctx, fns, errs[:len(fns)]); err != nil {
						b.Fatal(err)
					}
				}
			}
			run(keySpace, false) // preload
			b.ResetTimer()
			start := time.Now()
			run(b.N, true)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "ops/s")
		})
	}
}

// BenchmarkRowCachePublish measures the writer's cost of bringing the row
// cache up to date with a batch of 1000 sets: of keys not cached (a
// write-only workload) and of keys all cached (read-modify-writes).
func BenchmarkRowCachePublish(b *testing.B) {
	for _, cached := range []bool{false, true} {
		b.Run(map[bool]string{false: "uncached", true: "cached"}[cached], func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			batch := s.db.NewBatch()
			defer batch.Close()
			var key, rec []byte
			rec = kv.AppendStoredRecord(rec, benchValue, 0)
			for i := range benchBatch {
				key = benchKeyAt(key, i)
				if err := batch.Set(key, rec, nil); err != nil {
					b.Fatal(err)
				}
				if cached {
					s.cache.writerFill(key, rec, false)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				s.cache.publish(batch.Repr(), nil)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*benchBatch), "ns/set")
		})
	}
}

// BenchmarkRowCachePublishGroup measures publish as the committer runs it
// after a group of increments: 100,000 keys cached with a small number as
// their record, groups of 10,000 sets of random keys in key order, each
// group's keys drawn anew (64 groups in turn) so that their entries are not
// in the processor's fastest caches, published with what the writer knows
// of each record (the entry it read and the key's hash, "known") or
// without ("lookup": every key found through its shard's table). It
// reports ns per record.
func BenchmarkRowCachePublishGroup(b *testing.B) {
	const (
		keys    = 100_000
		perGrp  = 10_000
		nGroups = 64
	)
	for _, withKnown := range []bool{true, false} {
		b.Run(map[bool]string{true: "known", false: "lookup"}[withKnown], func(b *testing.B) {
			c := newRowCache(DefaultRowCacheBytes)
			key := func(k int) []byte { return fmt.Appendf(nil, "\x01data\x00k%010d", k) }
			rec := kv.AppendStoredRecord(nil, []byte("12345"), 0)
			for k := range keys {
				if c.writerFill(key(k), rec, false) == nil {
					b.Fatal("key not cached")
				}
			}
			rng := rand.New(rand.NewPCG(7, 8))
			type grp struct {
				repr  []byte
				known []knownRecord
			}
			groups := make([]grp, nGroups)
			for g := range groups {
				ks := make([]int, perGrp)
				for i := range ks {
					ks[i] = rng.IntN(keys)
				}
				slices.Sort(ks)
				ks = slices.Compact(ks)
				batch := new(pebble.Batch)
				for _, k := range ks {
					kb := key(k)
					if err := batch.Set(kb, rec, nil); err != nil {
						b.Fatal(err)
					}
					if withKnown {
						h := rowHash(c.seed, kb)
						groups[g].known = append(groups[g].known, knownRecord{entry: c.writerGet(kb, h), hash: h})
					}
				}
				groups[g].repr = batch.Repr()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				g := &groups[i%nGroups]
				c.beginPublish()
				c.publish(g.repr, g.known)
				c.endPublish()
			}
			b.StopTimer()
			records := 0
			for i := range b.N {
				h, _ := batchrepr.ReadHeader(groups[i%nGroups].repr)
				records += int(h.Count)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(records), "ns/record")
		})
	}
}

// BenchmarkStoreSubmitQueued keeps 64 requests of 100 synced puts queued
// at the writer (a connector that fell behind) and reports ops/s, the mean
// commit group size and the mean time from Submit to the request's
// outcome, with the group build bound (MaxGroupBuild) at 1 ms and off.
func BenchmarkStoreSubmitQueued(b *testing.B) {
	for _, bc := range []struct {
		name             string
		build            time.Duration
		perReq, inFlight int
		maxGroup         int
	}{
		{"build=1ms", time.Millisecond, 100, 64, 0},
		{"build=off", 0, 100, 64, 0},
		// A saturated kv connector: up to 4 slices in flight (the graph's
		// stage depth), each merged by the graph to ~5,000 events. The
		// writer takes requests until the group has MaxGroup
		// transactions, the last one whole: two of them (10,000) at
		// 8192, at most 4 at 16384. maxGroup 5000 keeps one per group,
		// as a bound that never let a group pass MaxGroup would at 8192.
		{"req=5000/max=5000", 0, 5000, 4, 5000},
		{"req=5000/max=8192", 0, 5000, 4, 8192},
		{"req=5000/max=16384", 0, 5000, 4, 16384},
		// Groups of the size a replay's bound on unwritten events gives
		// (~1,500) and of the size a saturated flowrun run gives
		// (~4,000): CPU per put falls with the group size, mostly in
		// Pebble's memtable insert (in a group's key order each record's
		// search runs down much of the path of the one before, which the
		// processor's caches still hold, and the larger the group, the
		// closer the next key).
		{"req=1500/max=1500", 0, 1500, 2, 1500},
		{"req=4000/max=4000", 0, 4000, 2, 4000},
	} {
		perReq, inFlight := bc.perReq, bc.inFlight
		b.Run(bc.name, func(b *testing.B) {
			var groups, txns int // written by the syncer, read after Close
			s, err := Open(b.TempDir(), Options{
				MaxGroup:      bc.maxGroup,
				MaxGroupBuild: bc.build,
				Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
				OnCommit:      func(ci CommitInfo) { groups++; txns += ci.Transactions },
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			type sent struct {
				at   time.Time
				wait func() error
			}
			window := make(chan sent, inFlight)
			var waited time.Duration
			done := make(chan error)
			go func() {
				var err error
				for r := range window {
					if werr := r.wait(); werr != nil && err == nil {
						err = werr
					}
					waited += time.Since(r.at)
				}
				done <- err
			}()
			reqs := (b.N + perReq - 1) / perReq
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			for r := range reqs {
				fns := make([]kv.TxnFunc, perReq)
				for j := range fns {
					key := benchKeyAt(nil, r*perReq+j)
					fns[j] = func(tx kv.Txn) error { return tx.Set(key, benchValue, 0) }
				}
				window <- sent{time.Now(), s.Submit(ctx, fns, make([]error, perReq))}
			}
			close(window)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			elapsed, used := time.Since(start), processCPU()-cpu
			b.StopTimer()
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(reqs*perReq)/elapsed.Seconds(), "ops/s")
			b.ReportMetric(float64(txns)/float64(max(groups, 1)), "txns/group")
			b.ReportMetric(float64(waited.Microseconds())/float64(reqs), "us/request")
			if used > 0 {
				b.ReportMetric(float64(used.Nanoseconds())/float64(reqs*perReq), "cpu-ns/op")
			}
		})
	}
}

// BenchmarkSortRefsByKey sorts the records of a commit group of 8192
// writes of random keys of the kv connector's shape (namespace, "k", ten
// digits) over 100,000 keys, as sortByKey does before the group is
// applied; it reports ns per record.
func BenchmarkSortRefsByKey(b *testing.B) {
	const records = 8192
	p := newUnappliedIndex()
	batch := new(pebble.Batch)
	rng := rand.New(rand.NewPCG(5, 6))
	for range records {
		k := fmt.Appendf(nil, "ns\x00data\x00k%010d", rng.IntN(100_000))
		if err := batch.Set(k, []byte("1"), nil); err != nil {
			b.Fatal(err)
		}
		p.add(batch.Repr(), len(k), 1, false, nil)
	}
	repr := batch.Repr()
	var scratch []refSortKey
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		scratch = sortRefsByKey(repr, p.refs, scratch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/records, "ns/record")
}

// BenchmarkStoreSubmitSaturated runs what a saturated kv connector asks
// of the store, as flowrun bench does: requests of 5,000 transactions on
// keys drawn at random from 100,000, submitted with their read hints
// (SubmitHinted), up to 4 in flight, synced. "increment" reads a counter
// and writes it plus one, over preloaded keys, and checks afterwards that
// the counters add up to the increments made; "put" writes a 100-byte
// value without reading. It reports ops/s, the process's CPU time per
// operation (cpu-ns/op, which a busy machine moves less than the
// throughput; Pebble's flushes and compactions are in it) and the mean
// commit group size.
func BenchmarkStoreSubmitSaturated(b *testing.B) {
	for _, workload := range []string{"increment", "put"} {
		b.Run(workload, func(b *testing.B) { benchSubmitSaturated(b, workload == "increment") })
	}
}

func benchSubmitSaturated(b *testing.B, increments bool) {
	const (
		keys     = 100_000
		perReq   = 5000
		inFlight = 4
	)
	var groups, txns int // written by the syncer, read after Close
	s, err := Open(b.TempDir(), Options{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnCommit: func(ci CommitInfo) { groups++; txns += ci.Transactions },
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	key := func(k int) []byte { return fmt.Appendf(nil, "\x01data\x00k%010d", k) }
	if increments {
		for from := 0; from < keys; from += perReq {
			fns := make([]kv.TxnFunc, 0, perReq)
			for k := from; k < min(from+perReq, keys); k++ {
				kb := key(k)
				fns = append(fns, func(tx kv.Txn) error { return tx.Set(kb, []byte("0"), 0) })
			}
			if err := s.Update(ctx, fns, make([]error, len(fns))); err != nil {
				b.Fatal(err)
			}
		}
	}
	increment := func(k []byte) kv.TxnFunc {
		return func(tx kv.Txn) error {
			v, _, _, err := tx.Get(k)
			if err != nil {
				return err
			}
			n, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return err
			}
			return tx.Set(k, strconv.AppendInt(nil, n+1, 10), 0)
		}
	}
	put := func(k []byte) kv.TxnFunc {
		return func(tx kv.Txn) error { return tx.Set(k, benchValue, 0) }
	}
	rng := rand.New(rand.NewPCG(9, 10))
	reqs := (b.N + perReq - 1) / perReq
	type sent struct {
		wait func() error
		errs []error
	}
	window := make(chan sent, inFlight)
	done := make(chan error)
	go func() {
		var err error
		for r := range window {
			if werr := r.wait(); werr != nil && err == nil {
				err = werr
			}
			for _, e := range r.errs {
				if e != nil && err == nil {
					err = e
				}
			}
		}
		done <- err
	}()
	// The requests are built before the clock starts.
	fnss, hintss := make([][]kv.TxnFunc, reqs), make([][][][]byte, reqs)
	for r := range reqs {
		n := min(perReq, b.N-r*perReq)
		fnss[r] = make([]kv.TxnFunc, n)
		if increments {
			hintss[r] = make([][][]byte, n)
		}
		for j := range n {
			k := key(rng.IntN(keys))
			if increments {
				fnss[r][j], hintss[r][j] = increment(k), [][]byte{k}
			} else {
				fnss[r][j] = put(k)
			}
		}
	}
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	for r := range reqs {
		errs := make([]error, len(fnss[r]))
		window <- sent{s.SubmitHinted(ctx, fnss[r], hintss[r], errs), errs}
	}
	close(window)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	elapsed, used := time.Since(start), processCPU()-cpu
	b.StopTimer()
	if increments {
		var sum int64
		var reads []kv.TxnFunc
		for k := range keys {
			kb := key(k)
			reads = append(reads, func(tx kv.Txn) error {
				v, _, _, err := tx.Get(kb)
				if err != nil {
					return err
				}
				n, err := strconv.ParseInt(string(v), 10, 64)
				sum += n
				return err
			})
		}
		if err := s.View(ctx, reads, make([]error, len(reads))); err != nil {
			b.Fatal(err)
		}
		if sum != int64(b.N) {
			b.Fatalf("the counters add up to %d after %d increments", sum, b.N)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(float64(txns)/float64(max(groups, 1)), "txns/group")
	if used > 0 {
		b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}
