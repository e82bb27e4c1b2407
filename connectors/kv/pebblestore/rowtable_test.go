package pebblestore

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestRowTable checks the open-addressing table against a map through
// random inserts and deletes, with hashes drawn from a few homes so that
// runs of slots collide, wrap around the end of the array and are shifted
// back by deletes; every key present must be found, every key deleted
// not.
func TestRowTable(t *testing.T) {
	for _, homes := range []uint64{1, 3, 64, 1 << 20} {
		t.Run(fmt.Sprintf("homes=%d", homes), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, homes))
			var tab rowTable
			type item struct {
				h uint64
				e *rowEntry
			}
			model := make(map[string]item)
			keys := make([]string, 0, 600)
			for i := range 600 {
				keys = append(keys, fmt.Sprintf("key%03d", i))
			}
			// A hash whose home is one of a few slots, the low bits (the
			// shard's) fixed; near the top of the array so runs wrap.
			hashOf := func(k string) uint64 {
				home := uint64(len(k)*7919+int(k[3])*31+int(k[4])*17+int(k[5])) % homes
				return (^home)<<4 | 5 | uint64(k[5])<<40
			}
			for step := range 20000 {
				k := keys[rng.IntN(len(keys))]
				if it, ok := model[k]; ok && rng.IntN(2) == 0 {
					tab.delete(it.h, it.e)
					delete(model, k)
				} else if !ok {
					e := newRowEntry([]byte(k), []byte("v"), false)
					h := hashOf(k)
					tab.insert(h, e)
					model[k] = item{h, e}
				}
				if step%500 != 0 {
					continue
				}
				if tab.len() != len(model) {
					t.Fatalf("step %d: table holds %d, want %d", step, tab.len(), len(model))
				}
				for _, k := range keys {
					it, ok := model[k]
					got := tab.find(hashOf(k), []byte(k))
					if ok && got != it.e || !ok && got != nil {
						t.Fatalf("step %d: find(%s) = %p, want %p (present %t)", step, k, got, it.e, ok)
					}
				}
			}
			tab.reset()
			if tab.len() != 0 || tab.find(hashOf(keys[0]), []byte(keys[0])) != nil {
				t.Fatal("reset table not empty")
			}
		})
	}
}

// TestRowTableHashCollision checks that two keys of one 64-bit hash are
// told apart by their bytes.
func TestRowTableHashCollision(t *testing.T) {
	var tab rowTable
	a, b := newRowEntry([]byte("a"), []byte("1"), false), newRowEntry([]byte("b"), []byte("2"), false)
	tab.insert(42, a)
	tab.insert(42, b)
	if tab.find(42, []byte("a")) != a || tab.find(42, []byte("b")) != b || tab.find(42, []byte("c")) != nil {
		t.Fatal("keys of one hash confused")
	}
	tab.delete(42, a)
	if tab.find(42, []byte("a")) != nil || tab.find(42, []byte("b")) != b {
		t.Fatal("delete of one key of a shared hash lost the other")
	}
}

// BenchmarkRowCacheGet measures cached point reads of 100,000 keys of
// 100-byte records, drawn at random, as the kv store's get workload does.
func BenchmarkRowCacheGet(b *testing.B) {
	const keys = 100_000
	c := newRowCache(64 << 20)
	val := make([]byte, 100)
	var key []byte
	for i := range keys {
		key = fmt.Appendf(key[:0], "k%08d", i)
		c.writerFill(key, val, false)
	}
	order := make([][]byte, 1<<16)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range order {
		order[i] = fmt.Appendf(nil, "k%08d", rng.IntN(keys))
	}
	var dst []byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		rec, _, hit := c.get(order[i&(len(order)-1)], dst[:0])
		if !hit {
			b.Fatal("miss")
		}
		dst = rec
	}
}

// BenchmarkRowCacheGetPrefetched is BenchmarkRowCacheGet with the keys
// looked up in batches of prefetchChunk first (rowCache.prefetch), as
// Store.ViewHinted and the writer do with read hints: the difference
// between the two is what overlapping the batch's cache misses saves.
func BenchmarkRowCacheGetPrefetched(b *testing.B) {
	const keys = 100_000
	c := newRowCache(64 << 20)
	val := make([]byte, 100)
	var key []byte
	for i := range keys {
		key = fmt.Appendf(key[:0], "k%08d", i)
		c.writerFill(key, val, false)
	}
	order := make([][]byte, 1<<16)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range order {
		order[i] = fmt.Appendf(nil, "k%08d", rng.IntN(keys))
	}
	var (
		dst   []byte
		probe probeScratch
	)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i & (len(order) - 1)
		if j%prefetchChunk == 0 {
			c.prefetch(order[j:min(j+prefetchChunk, len(order))], &probe)
		}
		rec, _, hit := c.get(order[j], dst[:0])
		if !hit {
			b.Fatal("miss")
		}
		dst = rec
	}
}
