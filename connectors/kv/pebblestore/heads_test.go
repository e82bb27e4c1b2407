package pebblestore

import (
	"math/rand/v2"
	"testing"
)

// TestHashHeadsMatchesMap runs random gets, sets, deletes and resets on a
// hashHeads and a Go map side by side, with few distinct hashes (many
// updates and deletes of one hash, long probe runs from colliding low
// bits) and many (growth).
func TestHashHeadsMatchesMap(t *testing.T) {
	for _, distinct := range []uint64{8, 300, 5000} {
		rng := rand.New(rand.NewPCG(1, distinct))
		var h hashHeads
		want := map[uint64]int32{}
		for step := range 200_000 {
			// Hashes sharing their low bits probe the same run of slots.
			k := rng.Uint64N(distinct) << (rng.Uint64N(2) * 20)
			switch r := rng.IntN(100); {
			case r < 45:
				v := int32(step)
				h.set(k, v)
				want[k] = v
			case r < 55:
				h.set(k, -1)
				delete(want, k)
			case r < 56 && step%7 == 0:
				h.reset()
				clear(want)
			default:
				got, ok := h.get(k)
				w, wok := want[k]
				if ok != wok || ok && got != w || !ok && got != -1 {
					t.Fatalf("distinct %d, step %d: get(%#x) = %d, %v; want %d, %v", distinct, step, k, got, ok, w, wok)
				}
			}
		}
		for k, w := range want {
			if got, ok := h.get(k); !ok || got != w {
				t.Fatalf("distinct %d: get(%#x) = %d, %v; want %d", distinct, k, got, ok, w)
			}
		}
	}
}

// TestHashHeadsGenerationWrap checks that a reset after 2^32 resets does
// not make the slots of an old generation look current.
func TestHashHeadsGenerationWrap(t *testing.T) {
	var h hashHeads
	h.set(7, 1)        // in generation 1
	h.gen = ^uint32(0) // as after 2^32-2 more resets: the slot of 7 is stale
	h.reset()
	if idx, ok := h.get(7); ok {
		t.Fatalf("after the generation wrapped, get(7) = %d, want none", idx)
	}
}

// BenchmarkUnappliedIndex indexes a group of 4096 writes to distinct keys,
// then reindexes them, as a group sorted by key does.
func BenchmarkUnappliedIndex(b *testing.B) {
	const n = 4096
	var repr []byte
	for i := range n {
		key := []byte("k" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)))
		repr = append(repr, 1, byte(len(key)))
		repr = append(repr, key...)
		repr = append(repr, 0) // empty value
	}
	p := newUnappliedIndex()
	b.ReportAllocs()
	for b.Loop() {
		p.reset()
		off := 0
		for off < len(repr) {
			keyLen := int(repr[off+1])
			end := off + 2 + keyLen + 1
			p.add(repr[:end], keyLen, 0, false, nil)
			off = end
		}
		refs := append(p.sortBuf[:0], p.refs...)
		p.reindex(refs)
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "writes/s")
}
