package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/flowrun/flowrun/connectors/kv"
)

func openWith(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func view(t *testing.T, s *Store, fns ...kv.TxnFunc) []error {
	t.Helper()
	errs := make([]error, len(fns))
	if err := s.View(context.Background(), fns, errs); err != nil {
		t.Fatalf("View: %v", err)
	}
	return errs
}

func del(key string) kv.TxnFunc {
	return func(tx kv.Txn) error { return tx.Delete([]byte(key)) }
}

func delRange(start, end string) kv.TxnFunc {
	return func(tx kv.Txn) error { return tx.DeleteRange([]byte(start), []byte(end)) }
}

// failAfter runs fn and then fails, so the store must roll fn's writes back.
func failAfter(fn kv.TxnFunc) kv.TxnFunc {
	return func(tx kv.Txn) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errBoom
	}
}

// TestRowCacheEpochRule checks the fill rule directly: a reader's fill is
// kept only when no publish overlapped its read, and a reader finding the
// key cached meanwhile gets the cached record.
func TestRowCacheEpochRule(t *testing.T) {
	tests := []struct {
		name      string
		between   func(c *rowCache) // between the reader's beginRead and its fill
		wantKept  bool
		wantValue string // what fill tells the reader to use; "" for absent
	}{
		{"quiet", func(*rowCache) {}, true, "mine"},
		{"publish in progress", func(c *rowCache) { c.beginPublish() }, false, "mine"},
		{"publish completed", func(c *rowCache) { c.beginPublish(); c.endPublish() }, false, "mine"},
		{"cached meanwhile", func(c *rowCache) {
			c.fill([]byte("k"), []byte("theirs"), false, c.beginRead(), nil)
		}, true, "theirs"},
		{"cached absent meanwhile", func(c *rowCache) {
			c.fill([]byte("k"), nil, true, c.beginRead(), nil)
		}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newRowCache(1 << 20)
			e := c.beginRead()
			tt.between(c)
			rec, absent := c.fill([]byte("k"), []byte("mine"), false, e, nil)
			if absent != (tt.wantValue == "") || string(rec) != tt.wantValue {
				t.Errorf("fill returned %q absent=%t, want %q", rec, absent, tt.wantValue)
			}
			_, _, hit := c.get([]byte("k"), nil)
			if hit != tt.wantKept {
				t.Errorf("cached = %t, want %t", hit, tt.wantKept)
			}
			// Started during a publish: refused whatever happens next.
			c.beginPublish()
			odd := c.beginRead()
			c.endPublish()
			c.clear()
			c.fill([]byte("j"), []byte("x"), false, odd, nil)
			if _, _, hit := c.get([]byte("j"), nil); hit {
				t.Error("fill from a read overlapping a publish was kept")
			}
		})
	}
}

// TestRowCacheKeepsHotKeys checks the eviction order gives keys read
// again a second chance: keys read regularly survive a stream of new keys many times the
// cache's size, and keys not read again are evicted.
func TestRowCacheKeepsHotKeys(t *testing.T) {
	tests := []struct {
		name  string
		every int // hot keys are read after every this many new keys
	}{
		{"read after every insert", 1},
		{"read after every 5 inserts", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// About 20 entries a shard, 320 in all.
			c := newRowCache(rowCacheShards * 20 * (rowEntryOverhead + 16))
			hot := [][]byte{[]byte("hot1"), []byte("hot2"), []byte("hot3")}
			for _, k := range hot {
				c.writerFill(k, []byte("v"), false)
			}
			for i := range 5000 {
				c.writerFill([]byte(fmt.Sprintf("cold%05d", i)), []byte("v"), false)
				if i%tt.every == 0 {
					for _, k := range hot {
						if _, _, hit := c.get(k, nil); !hit {
							t.Fatalf("hot key %s evicted after %d inserts", k, i)
						}
					}
				}
			}
			if _, _, hit := c.get([]byte("cold00000"), nil); hit {
				t.Error("a key never read again survived 5000 inserts")
			}
			if st := c.stats(); st.Entries > 400 || st.Entries < 100 {
				t.Errorf("cache holds %d entries, want about 320", st.Entries)
			}
		})
	}
}

// TestRowCacheReads checks that reads through the cache return what the
// database holds in the cases where the cache's entry must change or go:
// writes of cached keys, deletions, range deletions, failed transactions,
// expiry, and a group's own writes.
func TestRowCacheReads(t *testing.T) {
	tests := []struct {
		name  string
		setup []kv.TxnFunc // committed, then every key read once to cache it
		act   []kv.TxnFunc // one group; every fn must succeed unless it is a failAfter
		want  map[string]got
	}{
		{"overwrite", []kv.TxnFunc{set("a", "1", 0)}, []kv.TxnFunc{set("a", "22", 0)},
			map[string]got{"a": {"22", 0, true}}},
		{"overwrite shorter reuses memory", []kv.TxnFunc{set("a", "long value", 0)}, []kv.TxnFunc{set("a", "s", 0)},
			map[string]got{"a": {"s", 0, true}}},
		{"absent then written", nil, []kv.TxnFunc{set("a", "1", 0)},
			map[string]got{"a": {"1", 0, true}, "b": {}}},
		{"delete", []kv.TxnFunc{set("a", "1", 0), set("b", "2", 0)}, []kv.TxnFunc{del("a")},
			map[string]got{"a": {}, "b": {"2", 0, true}}},
		{"delete then set in one group", []kv.TxnFunc{set("a", "1", 0)}, []kv.TxnFunc{del("a"), set("a", "3", 0)},
			map[string]got{"a": {"3", 0, true}}},
		{"delete range", []kv.TxnFunc{set("a", "1", 0), set("b", "2", 0), set("c", "3", 0)},
			[]kv.TxnFunc{delRange("a", "c")},
			map[string]got{"a": {}, "b": {}, "c": {"3", 0, true}}},
		{"delete range then set", []kv.TxnFunc{set("a", "1", 0), set("b", "2", 0)},
			[]kv.TxnFunc{delRange("a", "z"), set("b", "4", 0)},
			map[string]got{"a": {}, "b": {"4", 0, true}}},
		{"failed write rolled back", []kv.TxnFunc{set("a", "1", 0)},
			[]kv.TxnFunc{failAfter(set("a", "bad", 0)), failAfter(set("b", "bad", 0)), failAfter(del("a"))},
			map[string]got{"a": {"1", 0, true}, "b": {}}},
		{"failed range deletion rolled back", []kv.TxnFunc{set("a", "1", 0)},
			[]kv.TxnFunc{failAfter(delRange("a", "z"))},
			map[string]got{"a": {"1", 0, true}}},
		{"expiry kept", []kv.TxnFunc{set("a", "1", 1234)}, []kv.TxnFunc{set("b", "2", 99)},
			map[string]got{"a": {"1", 1234, true}, "b": {"2", 99, true}}},
		{"expiry changed", []kv.TxnFunc{set("a", "1", 1234)}, []kv.TxnFunc{set("a", "1", 5678)},
			map[string]got{"a": {"1", 5678, true}}},
		{"expiry removed", []kv.TxnFunc{set("a", "1", 1234)}, []kv.TxnFunc{set("a", "1", 0)},
			map[string]got{"a": {"1", 0, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openWith(t, Options{})
			if len(tt.setup) > 0 {
				update(t, s, tt.setup...)
			}
			reads := func(name string) {
				t.Helper()
				for key, want := range tt.want {
					var gv, gu got
					view(t, s, get(key, &gv))
					update(t, s, get(key, &gu))
					if gv != want || gu != want {
						t.Errorf("%s: %s: View read %+v, Update read %+v, want %+v", name, key, gv, gu, want)
					}
				}
			}
			// Cache every key (found or absent) before acting.
			for key := range tt.want {
				var g got
				view(t, s, get(key, &g))
			}
			before := s.RowCacheStats()
			errs := update(t, s, tt.act...)
			for i, err := range errs {
				if err != nil && !errors.Is(err, errBoom) {
					t.Fatalf("act[%d]: %v", i, err)
				}
			}
			reads("after")
			if st := s.RowCacheStats(); st.Hits <= before.Hits {
				t.Errorf("no read was answered by the cache: %+v then %+v", before, st)
			}
		})
	}
}

// TestRowCacheGroupOwnWrites checks that within a group, reads of keys the
// group wrote are answered from the group's writes, never from a cache
// entry of the key's committed record, in both batch modes.
func TestRowCacheGroupOwnWrites(t *testing.T) {
	s := openWith(t, Options{})
	update(t, s, set("a", "1", 0), set("b", "1", 0))
	var warm1, warm2 got
	view(t, s, get("a", &warm1), get("b", &warm2)) // both cached
	var g1, g2, g3, g4, g5 got
	errs := update(t, s,
		set("a", "2", 0),
		get("a", &g1),
		failAfter(set("a", "bad", 0)),
		get("a", &g2),
		delRange("x", "y"), // the group switches to an indexed batch
		set("b", "3", 0),
		get("b", &g3),
		failAfter(del("b")),
		get("b", &g4),
		get("a", &g5),
	)
	for i, err := range errs {
		if err != nil && !errors.Is(err, errBoom) {
			t.Fatalf("errs[%d] = %v", i, err)
		}
	}
	want := []got{{"2", 0, true}, {"2", 0, true}, {"3", 0, true}, {"3", 0, true}, {"2", 0, true}}
	for i, g := range []got{g1, g2, g3, g4, g5} {
		if g != want[i] {
			t.Errorf("read %d = %+v, want %+v", i+1, g, want[i])
		}
	}
}

// TestRowCacheBudget fills the cache with far more than its budget and
// checks the accounted size stays within it, entries are evicted and the
// evicted keys still read correctly.
func TestRowCacheBudget(t *testing.T) {
	tests := []struct {
		name   string
		budget int64
		values int // bytes per value
	}{
		{"small values", 64 << 10, 10},
		{"large values", 64 << 10, 1000},
		{"value larger than a shard", 16 << 10, 2000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openWith(t, Options{RowCacheBytes: tt.budget})
			const n = 500
			val := make([]byte, tt.values)
			var puts []kv.TxnFunc
			for i := range n {
				puts = append(puts, set(fmt.Sprintf("k%04d", i), string(val)+strconv.Itoa(i), 0))
			}
			update(t, s, puts...)
			gs := make([]got, n)
			var reads []kv.TxnFunc
			for i := range n {
				reads = append(reads, get(fmt.Sprintf("k%04d", i), &gs[i]))
			}
			view(t, s, reads...)
			update(t, s, puts...) // updates of cached keys
			view(t, s, reads...)
			st := s.RowCacheStats()
			if st.Bytes > tt.budget || st.Entries >= n {
				t.Errorf("cache holds %d entries, %d bytes; budget %d bytes", st.Entries, st.Bytes, tt.budget)
			}
			for i, g := range gs {
				if want := string(val) + strconv.Itoa(i); !g.found || g.value != want {
					t.Fatalf("k%04d read %d bytes found=%t", i, len(g.value), g.found)
				}
			}
		})
	}
}

// TestRowCacheDisabled checks a negative RowCacheBytes turns the cache off
// and reads still work.
func TestRowCacheDisabled(t *testing.T) {
	s := openWith(t, Options{RowCacheBytes: -1})
	update(t, s, set("a", "1", 7))
	for range 2 {
		var ga, gb got
		view(t, s, get("a", &ga), get("b", &gb))
		update(t, s, get("a", &ga), get("b", &gb))
		if ga != (got{"1", 7, true}) || gb.found {
			t.Fatalf("read %+v %+v", ga, gb)
		}
	}
	// Only reads answered by the previous group's batch are counted.
	if st := s.RowCacheStats(); st != (RowCacheStats{PreviousGroup: st.PreviousGroup}) {
		t.Errorf("disabled cache reports %+v", st)
	}
	var o Options
	o.EnsureDefaults()
	if o.RowCacheBytes != DefaultRowCacheBytes {
		t.Errorf("default RowCacheBytes = %d", o.RowCacheBytes)
	}
}

// TestRowCacheLargeGroup commits a group large enough for Pebble to take
// it as a memtable of its own, which empties the Batch on commit: the
// cached keys it writes must still take their new records.
func TestRowCacheLargeGroup(t *testing.T) {
	s := openWith(t, Options{MemTableBytes: 1 << 20})
	update(t, s, set("hot", "old", 0))
	var g got
	view(t, s, get("hot", &g)) // now cached (a read by the writer would find it in the previous group)
	big := strings.Repeat("v", 10<<10)
	fns := []kv.TxnFunc{set("hot", "new", 0)}
	for i := range 200 { // 2 MB: far above half the memtable size
		fns = append(fns, set(fmt.Sprintf("filler%03d", i), big, 0))
	}
	update(t, s, fns...)
	for _, read := range []func(kv.TxnFunc){
		func(fn kv.TxnFunc) { update(t, s, fn) },
		func(fn kv.TxnFunc) { view(t, s, fn) },
	} {
		g = got{}
		read(get("hot", &g))
		if g.value != "new" {
			t.Fatalf("hot = %q after a large group wrote \"new\"", g.value)
		}
	}
	if st := s.RowCacheStats(); st.Hits == 0 {
		t.Fatalf("the cache served no read: %+v", st)
	}
}

// coherenceModel records, in commit order, every write of the coherence
// test, and which of them have been released to their Update's caller.
type coherenceModel struct {
	mu       sync.Mutex
	next     int64              // last sequence number handed out
	history  map[string][]int64 // per key: sequence numbers of writes; negative for deletions
	released map[string]int64   // per key: sequence number of the latest released write
}

// write is called inside a TxnFunc (in the writer goroutine, so in commit
// order) and returns the sequence number the write carries.
func (m *coherenceModel) seq() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next++
	return m.next
}

func (m *coherenceModel) record(key string, seq int64, deleted bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if deleted {
		seq = -seq
	}
	m.history[key] = append(m.history[key], seq)
}

// latest is the key's current state: its newest write.
func (m *coherenceModel) latest(key string) (seq int64, found bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.history[key]
	if len(h) == 0 {
		return 0, false
	}
	last := h[len(h)-1]
	return max(last, -last), last > 0
}

func (m *coherenceModel) release(key string, seq int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.released[key] = max(m.released[key], seq)
}

func (m *coherenceModel) releasedAll() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(m.released))
	for k, v := range m.released {
		out[k] = v
	}
	return out
}

// check says whether a read of key returning seq (found) or nothing is a
// state the key held at or after sequence number bound, and returns the
// earliest such state's sequence number, the next read's bound.
func (m *coherenceModel) check(key string, bound, seq int64, found bool) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := m.history[key]
	if !found && bound == 0 {
		return 0, nil // absent before its first write
	}
	for _, w := range h {
		at := max(w, -w)
		if at < bound {
			continue
		}
		if found && w == seq || !found && w < 0 {
			return at, nil
		}
	}
	if found {
		return 0, fmt.Errorf("%s read write %d, not a write at or after %d", key, seq, bound)
	}
	return 0, fmt.Errorf("%s read absent, not deleted at or after %d", key, bound)
}

// TestRowCacheCoherence runs writers (puts, deletes, read-modify-writes,
// failing transactions) and View readers concurrently on a few keys. Every
// read must observe at least the last write released before the View began,
// never a write older than one its goroutine already saw, and never a write
// of a failed transaction; reads inside Update must observe the latest
// write exactly.
func TestRowCacheCoherence(t *testing.T) {
	tests := []struct {
		name   string
		budget int64
		keys   int
	}{
		{"default", 0, 5},
		{"evicting", rowCacheShards * (rowEntryOverhead + 40), 50}, // about one entry a shard
		{"disabled", -1, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var keys []string
			for i := range tt.keys {
				keys = append(keys, fmt.Sprintf("k%d", i))
			}
			s := openWith(t, Options{RowCacheBytes: tt.budget})
			m := &coherenceModel{history: map[string][]int64{}, released: map[string]int64{}}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			errc := make(chan error, 16)
			fail := func(err error) {
				select {
				case errc <- err:
				default:
				}
				cancel()
			}

			for w := range 2 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), 1))
					for ctx.Err() == nil {
						n := 1 + rng.IntN(6)
						fns := make([]kv.TxnFunc, n)
						wrote := make([]string, n)
						seqs := make([]int64, n)
						for i := range fns {
							key := keys[rng.IntN(len(keys))]
							wrote[i] = key
							switch op := rng.IntN(10); {
							case op < 3: // put
								fns[i] = func(tx kv.Txn) error {
									seqs[i] = m.seq()
									m.record(key, seqs[i], false)
									return tx.Set([]byte(key), []byte(strconv.FormatInt(seqs[i], 10)), seqs[i])
								}
							case op < 5: // delete
								fns[i] = func(tx kv.Txn) error {
									seqs[i] = m.seq()
									m.record(key, seqs[i], true)
									return tx.Delete([]byte(key))
								}
							case op < 9: // read-modify-write: the read must be the latest write
								fns[i] = func(tx kv.Txn) error {
									v, exp, found, err := tx.Get([]byte(key))
									if err != nil {
										return err
									}
									want, wantFound := m.latest(key)
									if got, _ := strconv.ParseInt(string(v), 10, 64); found != wantFound || found && (got != want || exp != want) {
										fail(fmt.Errorf("Update read %s = %q (expiry %d) found=%t, want %d found=%t", key, v, exp, found, want, wantFound))
									}
									seqs[i] = m.seq()
									m.record(key, seqs[i], false)
									return tx.Set([]byte(key), []byte(strconv.FormatInt(seqs[i], 10)), seqs[i])
								}
							default: // fails after writing: must never be seen
								fns[i] = func(tx kv.Txn) error {
									if err := tx.Set([]byte(key), []byte("-1"), 0); err != nil {
										return err
									}
									return errBoom
								}
							}
						}
						errs := make([]error, n)
						if err := s.Update(context.Background(), fns, errs); err != nil {
							fail(err)
							return
						}
						for i, err := range errs {
							if err == nil {
								m.release(wrote[i], seqs[i])
							}
						}
					}
				})
			}

			for r := range 3 {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(r), 2))
					seen := map[string]int64{}
					for ctx.Err() == nil {
						bounds := m.releasedAll()
						n := 1 + rng.IntN(8)
						fns := make([]kv.TxnFunc, n)
						reads := make([]got, n)
						which := make([]string, n)
						for i := range fns {
							which[i] = keys[rng.IntN(len(keys))]
							fns[i] = get(which[i], &reads[i])
						}
						errs := make([]error, n)
						if err := s.View(context.Background(), fns, errs); err != nil {
							fail(err)
							return
						}
						for i, g := range reads {
							if errs[i] != nil {
								fail(errs[i])
								return
							}
							key := which[i]
							seq, _ := strconv.ParseInt(g.value, 10, 64)
							if g.found && g.expireAt != seq {
								fail(fmt.Errorf("View read %s = %q with expiry %d", key, g.value, g.expireAt))
								return
							}
							at, err := m.check(key, max(bounds[key], seen[key]), seq, g.found)
							if err != nil {
								fail(fmt.Errorf("View (released %d, seen %d): %w", bounds[key], seen[key], err))
								return
							}
							seen[key] = at
						}
					}
				})
			}
			wg.Wait()
			select {
			case err := <-errc:
				t.Fatal(err)
			default:
			}
			st := s.RowCacheStats()
			t.Logf("%d writes; cache %+v", m.next, st)
			if tt.budget >= 0 && st.Hits == 0 {
				t.Error("the cache answered no read")
			}
		})
	}
}

// TestRowCachePublishThroughKnownEntries checks publish with the entries
// the writer read: a live entry is updated in place, and one that left the
// cache since is not trusted, the key being looked up instead, because a
// reader may have cached it again with the record the batch replaces.
func TestRowCachePublishThroughKnownEntries(t *testing.T) {
	tests := []struct {
		name    string
		between func(c *rowCache) // after the writer's read, before publish
	}{
		{"still cached", func(*rowCache) {}},
		{"cleared", func(c *rowCache) { c.clear() }},
		{"cleared and cached again by a reader", func(c *rowCache) {
			c.clear()
			c.fill([]byte("k"), []byte("old"), false, c.beginRead(), nil)
		}},
		{"cleared and cached again by the writer", func(c *rowCache) {
			c.clear()
			c.writerFill([]byte("k"), []byte("old"), false)
		}},
	}
	for _, tt := range tests {
		for _, withHash := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/hash=%t", tt.name, withHash), func(t *testing.T) {
				c := newRowCache(1 << 20)
				known := c.writerFill([]byte("k"), []byte("old"), false)
				if known == nil {
					t.Fatal("writerFill kept nothing")
				}
				tt.between(c)
				b := new(pebble.Batch)
				if err := b.Set([]byte("k"), []byte("new"), nil); err != nil {
					t.Fatal(err)
				}
				kr := knownRecord{entry: known}
				if withHash {
					kr.hash = rowHash(c.seed, []byte("k"))
				}
				c.beginPublish()
				c.publish(b.Repr(), []knownRecord{kr})
				c.endPublish()
				rec, absent, hit := c.get([]byte("k"), nil)
				if hit && (absent || string(rec) != "new") {
					t.Fatalf("after publish the cache holds %q (absent %t), want \"new\"", rec, absent)
				}
				if st := c.stats(); st.Entries > 1 {
					t.Errorf("%d entries for one key", st.Entries)
				}
			})
		}
	}
}

// TestRowCacheSortedReadModifyWrites runs a group of read-modify-writes
// large enough to be rewritten in key order, in reverse key order and
// mixed with blind writes, so that publish must match each record with the
// entry read for its key after the sort; every key must then read back its
// new value from the cache.
func TestRowCacheSortedReadModifyWrites(t *testing.T) {
	s := openWith(t, Options{})
	const n = 3 * minSortedRecords
	key := func(i int) string { return fmt.Sprintf("k%03d", i) }
	var setup []kv.TxnFunc
	for i := range n {
		setup = append(setup, set(key(i), "0", 0))
	}
	update(t, s, setup...)
	var fns []kv.TxnFunc
	for i := n - 1; i >= 0; i-- {
		k := []byte(key(i))
		if i%3 == 0 { // a blind write: no entry read for it
			fns = append(fns, set(key(i), fmt.Sprintf("blind%d", i), 0))
			continue
		}
		fns = append(fns, func(tx kv.Txn) error {
			v, _, found, err := tx.Get(k)
			if err != nil || !found {
				return fmt.Errorf("get %s: found %t, %v", k, found, err)
			}
			next, _ := strconv.Atoi(string(v))
			return tx.Set(k, []byte(strconv.Itoa(next+i)), 0)
		})
	}
	for range 2 { // the second group reads from the cache the first filled
		for i, err := range update(t, s, fns...) {
			if err != nil {
				t.Fatalf("fn %d: %v", i, err)
			}
		}
	}
	before := s.RowCacheStats()
	for i := range n {
		want := strconv.Itoa(2 * i)
		if i%3 == 0 {
			want = fmt.Sprintf("blind%d", i)
		}
		var g got
		view(t, s, get(key(i), &g))
		if g.value != want {
			t.Errorf("%s = %q, want %q", key(i), g.value, want)
		}
	}
	if st := s.RowCacheStats(); st.Hits-before.Hits < 2*n/3 {
		t.Errorf("%d of %d reads hit the cache, want every read-modified key", st.Hits-before.Hits, n)
	}
}

// TestRowCacheKeysViewEntryData checks that every key stays found, through
// its shard's table, with its current record after records grow and
// shrink in place and move, and that the table agrees with the shard's
// list (checkRowTable).
func TestRowCacheKeysViewEntryData(t *testing.T) {
	// Room for every entry in any one shard (16 MiB / 16 = 1 MiB against
	// 50 entries of at most 5 KB): keys are spread over the shards by a
	// seed drawn per cache, and with 1 MiB in all the largest round could
	// overfill one shard in a rare draw and evict a key.
	c := newRowCache(16 << 20)
	for i := range 50 {
		c.writerFill([]byte(fmt.Sprintf("k%02d", i)), []byte("v"), false)
	}
	for round, size := range []int{2, 300, 10, 5000, 0} {
		b := new(pebble.Batch)
		for i := range 50 {
			k := []byte(fmt.Sprintf("k%02d", i))
			var err error
			if size == 0 && i%2 == 0 {
				err = b.Delete(k, nil)
			} else {
				err = b.Set(k, bytes.Repeat([]byte{'a' + byte(round)}, size+i), nil)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		c.beginPublish()
		c.publish(b.Repr(), nil)
		c.endPublish()
		for i := range c.shards {
			if err := checkRowTable(&c.shards[i]); err != nil {
				t.Fatalf("round %d: shard %d: %v", round, i, err)
			}
		}
		for i := range 50 {
			k := fmt.Sprintf("k%02d", i)
			rec, absent, hit := c.get([]byte(k), nil)
			switch {
			case !hit:
				t.Fatalf("round %d: %s left the cache", round, k)
			case size == 0 && i%2 == 0:
				if !absent {
					t.Fatalf("round %d: %s = %q, want absent", round, k, rec)
				}
			case absent || len(rec) != size+i || rec[0] != 'a'+byte(round):
				t.Fatalf("round %d: %s = %.10q (%d bytes, absent %t), want %d bytes of %c", round, k, rec, len(rec), absent, size+i, 'a'+byte(round))
			}
		}
	}
}

// TestRowEntryInline checks entries hold their key and record in the one
// allocation made for them, account for it, hold no pointer (so the
// garbage collector marks them without reading them), refuse a record
// larger than their buffer without changing, and that keys too long to
// cache are refused.
func TestRowEntryInline(t *testing.T) {
	rt := reflect.TypeOf(rowEntry{})
	for i := range rt.NumField() {
		switch k := rt.Field(i).Type.Kind(); k {
		case reflect.Pointer, reflect.UnsafePointer, reflect.Slice, reflect.String, reflect.Map, reflect.Chan, reflect.Func, reflect.Interface:
			t.Errorf("rowEntry.%s is a %v: entries must hold no pointer", rt.Field(i).Name, k)
		}
	}
	for n := 0; n <= 600; n++ {
		key := bytes.Repeat([]byte{'k'}, min(n, 10))
		rec := bytes.Repeat([]byte{'r'}, n-len(key))
		e := newRowEntry(key, rec, false)
		if e.key() != string(key) || !bytes.Equal(e.rec(), rec) {
			t.Fatalf("n=%d: key %q rec %q", n, e.key(), e.rec())
		}
		if int(e.dcap) < n || e.size() != int64(rowEntryHeader)+int64(e.dcap)+rowEntryOverhead {
			t.Fatalf("n=%d: buffer %d, size %d", n, e.dcap, e.size())
		}
		if allocs := testing.AllocsPerRun(10, func() { newRowEntry(key, rec, false) }); allocs != 1 {
			t.Fatalf("n=%d: %v allocations per entry, want 1", n, allocs)
		}
	}
	e := newRowEntry([]byte("key"), []byte("small"), false)
	before := e.size()
	big := bytes.Repeat([]byte{'b'}, 500)
	if e.set(big, false) || e.key() != "key" || string(e.rec()) != "small" || e.size() != before {
		t.Fatalf("a record larger than the buffer: set reported it fitted, or changed the entry (%q, %q)", e.key(), e.rec())
	}
	if !e.set([]byte("tiny"), false) || string(e.rec()) != "tiny" || e.size() != before {
		t.Fatalf("a smaller record: %q, size %d", e.rec(), e.size())
	}
	if !e.set([]byte("x"), true) || !e.absent || len(e.rec()) != 0 || e.key() != "key" {
		t.Errorf("absent after set: %+v", e)
	}
	long := bytes.Repeat([]byte{'k'}, 1<<16)
	if newRowEntry(long, nil, true) != nil {
		t.Error("an entry for a key over 64 KiB")
	}
	c := newRowCache(1 << 30)
	if e := c.writerFill(long, []byte("v"), false); e != nil {
		t.Error("writerFill cached a key over 64 KiB")
	}
	if rec, absent := c.fill(long, []byte("v"), false, c.beginRead(), nil); string(rec) != "v" || absent {
		t.Errorf("fill of a key over 64 KiB: %q, %t", rec, absent)
	}
	if st := c.stats(); st.Entries != 0 {
		t.Errorf("%d entries cached", st.Entries)
	}
}

// TestRowCacheGrownRecord checks that a cached key whose record outgrows
// its entry gets a new entry in the table and the ring, with the new
// record, and that the old entry leaves unchanged (the writer may still
// hold it).
func TestRowCacheGrownRecord(t *testing.T) {
	c := newRowCache(1 << 20)
	key := []byte("grows")
	old := c.writerFill(key, []byte(`"small"`), false)
	if old == nil {
		t.Fatal("not cached")
	}
	big := []byte(`"` + strings.Repeat("b", 400) + `"`)
	c.beginPublish()
	sh, h := c.shard(key)
	sh.mu.Lock()
	sh.update(old, h, key, big, false)
	sh.mu.Unlock()
	c.endPublish()
	if old.cached || string(old.rec()) != `"small"` {
		t.Errorf("old entry: cached %t, record %q; want it out of the cache, unchanged", old.cached, old.rec())
	}
	got, absent, hit := c.get(key, nil)
	if !hit || absent || !bytes.Equal(got, big) {
		t.Errorf("get after growing: %q hit %t absent %t", got, hit, absent)
	}
	if err := checkRowTable(sh); err != nil {
		t.Error(err)
	}
}

// ringEntries returns sh's cached entries, newest first.
func ringEntries(sh *rowShard) []*rowEntry {
	var all []*rowEntry
	for i := len(sh.ring) - 1; i >= sh.head; i-- {
		if e := sh.ring[i]; e != nil {
			all = append(all, e)
		}
	}
	return all
}

// TestRowCacheAdmitsWritesWhileCold checks that written keys enter a cold
// cache, so the reads after a load hit; that a key written twice without a
// read leaves it and ends the shard's cold phase; that deletions, and
// writes once written keys have brought a budget's worth in, add nothing.
func TestRowCacheAdmitsWritesWhileCold(t *testing.T) {
	const perShard = 64 << 10
	var c *rowCache
	publish := func(keys []string, val string, del bool) {
		t.Helper()
		b := new(pebble.Batch)
		for _, k := range keys {
			var err error
			if del {
				err = b.Delete([]byte(k), nil)
			} else {
				err = b.Set([]byte(k), []byte(val), nil)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		c.beginPublish()
		c.publish(b.Repr(), nil)
		c.endPublish()
	}
	keys := func(from, n int) []string {
		var ks []string
		for i := range n {
			ks = append(ks, fmt.Sprintf("k%06d", from+i))
		}
		return ks
	}
	cached := func(keys []string, want string) int {
		t.Helper()
		n := 0
		for _, k := range keys {
			rec, absent, hit := c.get([]byte(k), nil)
			if hit {
				if absent || string(rec) != want {
					t.Fatalf("%s: cached %q (absent %t), want %q", k, rec, absent, want)
				}
				n++
			}
		}
		return n
	}

	c = newRowCache(rowCacheShards * perShard)
	load := keys(0, 100)
	publish(load, "v1", false)
	if n := cached(load, "v1"); n != len(load) {
		t.Fatalf("%d of %d loaded keys read from the cache", n, len(load))
	}
	publish(load, "v2", false) // read since: updated
	if n := cached(load, "v2"); n != len(load) {
		t.Fatalf("%d of %d keys written after a read still cached", n, len(load))
	}
	deleted := keys(2000, 100)
	publish(deleted, "", true)
	if st := c.stats(); st.Entries != len(load) {
		t.Errorf("%d entries after deletions of keys not cached, want %d", st.Entries, len(load))
	}
	// Keys over every shard (shards are picked by a seed drawn per
	// cache: 100 keys in a row missed one shard in about 1 run in 40).
	var twice []string
	covered := map[int]bool{}
	for i := 1000; len(twice) < 100 || len(covered) < rowCacheShards; i++ {
		k := fmt.Sprintf("k%06d", i)
		covered[c.shardIndex([]byte(k))] = true
		twice = append(twice, k)
	}
	publish(twice, "a", false)
	publish(twice, "b", false)
	if n := cached(twice, "b"); n != 0 {
		t.Errorf("%d keys written twice, never read, still cached", n)
	}
	after := keys(3000, 100)
	publish(after, "c", false)
	if n := cached(after, "c"); n != 0 {
		t.Errorf("%d keys let in after keys were rewritten unread", n)
	}
	if n := cached(load, "v2"); n != len(load) {
		t.Errorf("%d of %d keys read before still cached", n, len(load))
	}

	// Many more bytes than the cache holds, each key written once: a
	// budget's worth is let in, then nothing.
	c = newRowCache(rowCacheShards * perShard)
	for i := range 40 {
		publish(keys(10_000+1000*i, 1000), "x", false)
	}
	late := keys(900_000, 100)
	publish(late, "late", false)
	if n := cached(late, "late"); n != 0 {
		t.Errorf("%d keys written after a budget's worth of writes were let in", n)
	}
	if st := c.stats(); st.Bytes > rowCacheShards*perShard || st.Entries == 0 {
		t.Errorf("%d entries, %d bytes cached, budget %d", st.Entries, st.Bytes, rowCacheShards*perShard)
	}
}

// checkRowTable checks that sh's table holds exactly the entries of its
// ring, each in a slot with its key's hash and found by that key, and that
// each entry knows its place in the ring.
func checkRowTable(sh *rowShard) error {
	inList := make(map[*rowEntry]bool)
	holes := 0
	for i, e := range sh.ring[sh.head:] {
		if e == nil {
			holes++
			continue
		}
		if int(e.pos) != sh.head+i {
			return fmt.Errorf("%q at ring slot %d says it is at %d", e.key(), sh.head+i, e.pos)
		}
		inList[e] = true
	}
	if holes != sh.holes {
		return fmt.Errorf("%d holes in the ring, shard counts %d", holes, sh.holes)
	}
	used := 0
	for i, s := range sh.entries.slots {
		if s.hash == 0 {
			if s.e != nil {
				return fmt.Errorf("empty slot %d holds an entry", i)
			}
			continue
		}
		used++
		switch {
		case s.hash != rowHashString(sh.seed, s.e.key()):
			return fmt.Errorf("slot %d: hash of %q is not its key's", i, s.e.key())
		case !s.e.cached || int(s.hash%rowCacheShards) != sh.index || !inList[s.e]:
			return fmt.Errorf("slot %d: %q is in the table, not in the shard (cached %t)", i, s.e.key(), s.e.cached)
		case sh.entries.find(s.hash, []byte(s.e.key())) != s.e:
			return fmt.Errorf("slot %d: %q not found by its key", i, s.e.key())
		}
	}
	if used != sh.entries.len() || used != sh.count || used != len(inList) {
		return fmt.Errorf("%d slots in use, table counts %d, shard %d, list %d", used, sh.entries.len(), sh.count, len(inList))
	}
	return nil
}

// TestWriterReadsPastAppliedGroup checks that once the committer has
// applied the previous group, the writer's reads of keys that group wrote
// go to the row cache and the database rather than to its Pebble batch
// (the cheaper lookup), and still see its writes. update returns after the
// group is synced, so the first group is applied before the second is
// built, while the writer still holds it as the previous group.
func TestWriterReadsPastAppliedGroup(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rowCache int64
	}{
		{"cache", 1 << 20},
		{"no cache", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openWith(t, Options{RowCacheBytes: tc.rowCache})
			update(t, s, set("k", "v1", 0))
			var g got
			update(t, s, get("k", &g), set("k", "v2", 0))
			if g != (got{"v1", 0, true}) {
				t.Fatalf("read %+v, want v1", g)
			}
			update(t, s, get("k", &g))
			if g != (got{"v2", 0, true}) {
				t.Fatalf("read %+v, want v2", g)
			}
			if st := s.RowCacheStats(); st.PreviousGroup != 0 {
				t.Errorf("%d reads went to an applied group's batch", st.PreviousGroup)
			}
		})
	}
}

// TestStoreSharesHashSeed checks that the row cache and both unapplied
// indexes hash with one seed: the writer hashes a key once and looks it
// up in all three with that hash, so with another seed the cache would
// look in the wrong shard and keep a key twice.
func TestStoreSharesHashSeed(t *testing.T) {
	s := openWith(t, Options{})
	if s.unapplied[0].seed != s.unapplied[1].seed || s.cache.seed != s.unapplied[0].seed {
		t.Fatal("the row cache and the unapplied indexes hash with different seeds")
	}
	// Read-modify-writes through the writer, then reads from outside it
	// (View hashes with the cache's own seed): every read sees the last
	// write, and each key is cached once.
	for i := range 3 {
		var fns []kv.TxnFunc
		for k := range 50 {
			key := fmt.Sprintf("k%02d", k)
			var g got
			fns = append(fns, get(key, &g), set(key, strconv.Itoa(i), 0))
		}
		update(t, s, fns...)
		for k := range 50 {
			var g got
			view(t, s, get(fmt.Sprintf("k%02d", k), &g))
			if g.value != strconv.Itoa(i) {
				t.Fatalf("round %d: k%02d = %+v", i, k, g)
			}
		}
	}
	if st := s.RowCacheStats(); st.Entries != 50 {
		t.Errorf("%d cached entries for 50 keys", st.Entries)
	}
}

// TestRowCachePrefetchChangesNothing checks that the batched probe reads
// only: entries, their records, recency marks and the hit and miss counts
// are as they were, whatever the keys (cached, absent, unknown, empty, one
// key many times, in an empty cache).
func TestRowCachePrefetchChangesNothing(t *testing.T) {
	keys := [][]byte{[]byte("a"), []byte("gone"), []byte("unknown"), {}, []byte("a"), []byte("b")}
	for _, tc := range []struct {
		name string
		fill func(c *rowCache)
	}{
		{"empty", func(*rowCache) {}},
		{"filled", func(c *rowCache) {
			c.writerFill([]byte("a"), []byte("1"), false)
			c.writerFill([]byte("b"), []byte("2"), false)
			c.writerFill([]byte("gone"), nil, true)
			for i := range 200 {
				c.writerFill([]byte(fmt.Sprintf("k%03d", i)), []byte("v"), false)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newRowCache(1 << 20)
			tc.fill(c)
			type state struct {
				key, rec           string
				absent, referenced bool
			}
			snapshot := func() (RowCacheStats, []state) {
				var all []state
				for i := range c.shards {
					for _, e := range ringEntries(&c.shards[i]) {
						all = append(all, state{e.key(), string(e.rec()), e.absent, e.referenced})
					}
				}
				return c.stats(), all
			}
			st0, all0 := snapshot()
			var probe probeScratch
			for range 3 {
				c.prefetch(keys, &probe)
			}
			st1, all1 := snapshot()
			if st0 != st1 || !slices.Equal(all0, all1) {
				t.Errorf("prefetch changed the cache:\n%+v %+v\n%+v %+v", st0, all0, st1, all1)
			}
			for _, e := range probe.ents[:cap(probe.ents)] {
				if e != nil {
					t.Fatal("the probe's scratch keeps an entry alive")
				}
			}
		})
	}
}

// TestStoreReadHints checks that ViewHinted and SubmitHinted give the
// results View and Submit give, look the hinted keys up ahead of the
// reads (RowCacheStats.Prefetched), whatever the hints say (a key not
// read, one read but not hinted, none), and refuse hints that do not
// match the fns.
func TestStoreReadHints(t *testing.T) {
	ctx := context.Background()
	s := openWith(t, Options{})
	update(t, s, set("a", "1", 0), set("b", "2", 0))
	var ga, gb, gc got
	fns := []kv.TxnFunc{get("a", &ga), get("b", &gb), get("c", &gc)}
	hints := [][][]byte{{[]byte("a")}, nil, {[]byte("c"), []byte("x")}}
	errs := make([]error, len(fns))
	if err := s.ViewHinted(ctx, fns, hints, errs); err != nil || errors.Join(errs...) != nil {
		t.Fatalf("ViewHinted: %v %v", err, errs)
	}
	if ga != (got{"1", 0, true}) || gb != (got{"2", 0, true}) || gc.found {
		t.Fatalf("ViewHinted read %+v %+v %+v", ga, gb, gc)
	}
	if n := s.RowCacheStats().Prefetched; n != 3 {
		t.Errorf("ViewHinted prefetched %d keys, want 3", n)
	}
	ga, gb = got{}, got{}
	fns = []kv.TxnFunc{get("a", &ga), set("a", "3", 0), get("a", &gb)}
	hints = [][][]byte{{[]byte("a")}, nil, {[]byte("a")}}
	if err := s.SubmitHinted(ctx, fns, hints, errs)(); err != nil || errors.Join(errs...) != nil {
		t.Fatalf("SubmitHinted: %v %v", err, errs)
	}
	if ga != (got{"1", 0, true}) || gb != (got{"3", 0, true}) {
		t.Fatalf("SubmitHinted read %+v then %+v", ga, gb)
	}
	if n := s.RowCacheStats().Prefetched; n != 5 {
		t.Errorf("after SubmitHinted %d keys prefetched, want 5", n)
	}
	if err := s.ViewHinted(ctx, fns[:1], hints, errs[:1]); err == nil {
		t.Error("ViewHinted took 3 hints for 1 fn")
	}
	if err := s.SubmitHinted(ctx, fns[:1], hints, errs[:1])(); err == nil {
		t.Error("SubmitHinted took 3 hints for 1 fn")
	}
	// Without a cache there is nothing to prefetch.
	off := openWith(t, Options{RowCacheBytes: -1})
	if err := off.ViewHinted(ctx, fns[:1], hints[:1], errs[:1]); err != nil {
		t.Fatal(err)
	}
	if n := off.RowCacheStats().Prefetched; n != 0 {
		t.Errorf("a store without a cache prefetched %d keys", n)
	}
}
