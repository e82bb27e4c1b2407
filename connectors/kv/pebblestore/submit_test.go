package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/flowrun/flowrun/connectors/kv"
)

// TestSubmitKeepsOrderAndReportsOutcomes queues many submissions before
// waiting for any: each reads the key the one before it wrote, so they
// must apply in submission order, and each wait reports its own outcome.
func TestSubmitKeepsOrderAndReportsOutcomes(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	const n = 200
	waits := make([]func() error, n)
	errs := make([][]error, n)
	for i := range n {
		fn := func(tx kv.Txn) error {
			v, _, found, err := tx.Get([]byte("k"))
			if err != nil {
				return err
			}
			if want := fmt.Sprint(i - 1); i > 0 && (!found || string(v) != want) {
				return fmt.Errorf("submission %d read %q (found %v), want %q", i, v, found, want)
			}
			if i%10 == 9 {
				return errBoom // a failed transaction writes nothing...
			}
			return tx.Set([]byte("k"), []byte(fmt.Sprint(i)), 0)
		}
		if i%10 == 0 && i > 0 {
			// ...so the one after it writes on top of the one before.
			prev := fn
			fn = func(tx kv.Txn) error {
				if err := tx.Set([]byte("k"), []byte(fmt.Sprint(i-1)), 0); err != nil {
					return err
				}
				return prev(tx)
			}
		}
		errs[i] = make([]error, 1)
		waits[i] = s.Submit(ctx, []kv.TxnFunc{fn}, errs[i])
	}
	for i, wait := range waits {
		if err := wait(); err != nil {
			t.Fatalf("wait %d: %v", i, err)
		}
		wantErr := i%10 == 9
		if got := errs[i][0]; (got != nil) != wantErr || got != nil && !errors.Is(got, errBoom) {
			t.Fatalf("submission %d: error %v, want boom: %v", i, got, wantErr)
		}
	}
	var g got
	update(t, s, get("k", &g))
	// The last submission (n-1) is one that fails.
	if g.value != fmt.Sprint(n-2) {
		t.Fatalf("k = %q after all submissions, want %d", g.value, n-2)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Submit(ctx, []kv.TxnFunc{set("k", "x", 0)}, make([]error, 1))(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close: %v, want ErrClosed", err)
	}
	if err := s.Submit(ctx, []kv.TxnFunc{set("k", "x", 0)}, nil)(); err == nil {
		t.Fatal("Submit with too few error slots succeeded")
	}
}

// TestSortedGroupKeepsLastWrite commits groups whose writes, in random key
// order with many rewrites and deletions of the same keys, are put in key
// order before the commit: the last write of each key must win, reads
// inside the group must see the writes before them, and the group commits
// one record per key it wrote, the last (what the Replicator is given is
// the group's Pebble batch), which the row cache then holds.
func TestSortedGroupKeepsLastWrite(t *testing.T) {
	rep := &fakeReplicator{}
	s, err := Open(t.TempDir(), Options{Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]string{}
	for round := range 20 {
		var fns []kv.TxnFunc
		touched := map[string]bool{}
		for i := range 3 * minSortedRecords {
			key := fmt.Sprintf("k%02d", rng.IntN(40))
			touched[key] = true
			switch rng.IntN(4) {
			case 0:
				fns = append(fns, func(tx kv.Txn) error { return tx.Delete([]byte(key)) })
				delete(want, key)
			case 1:
				// A read-modify-write: reads what the group wrote so far.
				expect, had := want[key]
				value := fmt.Sprintf("r%d-%d", round, i)
				fns = append(fns, func(tx kv.Txn) error {
					v, _, found, err := tx.Get([]byte(key))
					if err != nil {
						return err
					}
					if found != had || string(v) != expect {
						return fmt.Errorf("%s read %q (found %v), want %q (%v)", key, v, found, expect, had)
					}
					return tx.Set([]byte(key), []byte(value), 0)
				})
				want[key] = value
			default:
				value := fmt.Sprintf("s%d-%d", round, i)
				fns = append(fns, set(key, value, 0))
				want[key] = value
			}
		}
		for i, err := range update(t, s, fns...) {
			if err != nil {
				t.Fatalf("round %d, fn %d: %v", round, i, err)
			}
		}
		var rows []string
		update(t, s, scanAll("", "", &rows))
		var wantRows []string
		for _, k := range slices.Sorted(maps.Keys(want)) {
			wantRows = append(wantRows, k+"="+want[k])
		}
		if !slices.Equal(rows, wantRows) {
			t.Fatalf("round %d: store holds %v, want %v", round, rows, wantRows)
		}
		groups := rep.recorded()
		var wantGroup []string
		for _, k := range slices.Sorted(maps.Keys(touched)) {
			if v, ok := want[k]; ok {
				wantGroup = append(wantGroup, fmt.Sprintf("set %s=%s@0", k, v))
			} else {
				wantGroup = append(wantGroup, "delete "+k)
			}
		}
		if g := groups[len(groups)-1]; !slices.Equal(g, wantGroup) {
			t.Fatalf("round %d: the group committed %d records %v, want the last write of each of its %d keys %v", round, len(g), g, len(wantGroup), wantGroup)
		}
		for k := range touched { // through the row cache
			var g got
			view(t, s, get(k, &g))
			if v, ok := want[k]; g.found != ok || g.value != v {
				t.Fatalf("round %d: %s reads %q (found %t), want %q (found %t)", round, k, g.value, g.found, v, ok)
			}
		}
	}
	if st := s.RowCacheStats(); st.Hits == 0 {
		t.Error("no read hit the row cache")
	}
}

// TestSortRefsByKey compares sortRefsByKey with a stable sort by
// bytes.Compare on keys chosen to trip a prefix comparison: keys that are
// prefixes of others, zero bytes (the prefix's padding), keys shorter than
// the common prefix, long shared prefixes and repeated keys.
func TestSortRefsByKey(t *testing.T) {
	tests := []struct {
		name    string
		prefix  string // every key starts with it
		maxLen  int    // of the random part
		bytes   string // what the random part is made of
		records int    // at most, in a group
	}{
		{"short, with zero bytes", "", 3, "\x00\x01a\xff", 200},
		{"shared prefix", "ns\x00flow\x00", 12, "\x00ab", 200},
		{"long random tails", "p", 20, "\x00\x01\x02", 200},
		{"all equal but the end", "0123456789abcdef", 2, "\x00z", 200},
		// Groups large enough for the radix sort.
		{"radix, short, with zero bytes", "", 3, "\x00\x01a\xff", 3 * radixSortMin},
		{"radix, shared prefix", "ns\x00flow\x00", 12, "\x00ab", 3 * radixSortMin},
		{"radix, long random tails", "p", 20, "\x00\x01\x02", 3 * radixSortMin},
		{"radix, digits", "ns\x00k", 10, "0123456789", 3 * radixSortMin},
		{"radix, few keys", "ns\x00k", 2, "01", 3 * radixSortMin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			for round := range 50 {
				p := newUnappliedIndex()
				b := new(pebble.Batch)
				for range 1 + rng.IntN(tt.records) {
					k := []byte(tt.prefix)
					for range rng.IntN(tt.maxLen + 1) {
						k = append(k, tt.bytes[rng.IntN(len(tt.bytes))])
					}
					if err := b.Set(k, nil, nil); err != nil {
						t.Fatal(err)
					}
					p.add(b.Repr(), len(k), 0, false, nil)
				}
				repr := b.Repr()
				key := func(r unappliedRef) []byte { return repr[r.keyOff : r.keyOff+r.keyLen] }
				want := slices.Clone(p.refs)
				slices.SortStableFunc(want, func(a, b unappliedRef) int { return bytes.Compare(key(a), key(b)) })
				got := sortRefsByKey(repr, p.refs, nil)
				if len(got) != len(want) {
					t.Fatalf("round %d: %d records sorted, want %d", round, len(got), len(want))
				}
				for i, k := range got {
					if got := p.refs[k.i]; got != want[i] {
						t.Fatalf("round %d, position %d: record %q at %d, want %q at %d",
							round, i, key(got), got.keyOff, key(want[i]), want[i].keyOff)
					}
				}
			}
		})
	}
}

// TestGroupClosedByBuildTime queues requests behind one that holds the
// writer, on a clock that advances only as transactions run: each group
// after the first must close once it has been built for MaxGroupBuild,
// after the request that reached it, and every request still completes
// once, in order.
func TestGroupClosedByBuildTime(t *testing.T) {
	for _, tc := range []struct {
		name       string
		build      time.Duration // MaxGroupBuild
		txnsPerReq int
		want       []int // transactions per group
	}{
		// 1 ms per transaction: a group of one-transaction requests is
		// closed when 3 ms have passed, after its third.
		{"one txn per request", 2500 * time.Microsecond, 1, []int{1, 3, 3, 3, 3, 3, 3, 1}},
		// Two-transaction requests are not split: 2 ms, then 4 ms.
		{"two txns per request", 2500 * time.Microsecond, 2, []int{1, 4, 4, 4, 4, 4}},
		// Off (the default), everything queued after the first group is one group
		// (MaxGroup is larger); the first may take some of it.
		{"disabled", 0, 1, []int{1, 19}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var clock atomic.Int64 // ns since an arbitrary start
			base := time.Unix(0, 0)
			var sizes []int // written by the syncer, read after Close
			s, err := Open(t.TempDir(), Options{
				MaxGroupBuild: tc.build,
				now:           func() time.Time { return base.Add(time.Duration(clock.Load())) },
				OnCommit:      func(ci CommitInfo) { sizes = append(sizes, ci.Transactions) },
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			hold := make(chan struct{})
			// The first request holds the writer until every other one is
			// queued, and takes 10 ms: its group is itself alone.
			first := s.Submit(ctx, []kv.TxnFunc{func(tx kv.Txn) error {
				<-hold
				clock.Add(int64(10 * time.Millisecond))
				return tx.Set([]byte("first"), []byte("1"), 0)
			}}, make([]error, 1))
			txns := 0
			for _, n := range tc.want[1:] {
				txns += n
			}
			var ran []int
			var waits []func() error
			for r := range txns / tc.txnsPerReq {
				var fns []kv.TxnFunc
				for i := range tc.txnsPerReq {
					fns = append(fns, func(tx kv.Txn) error {
						ran = append(ran, r) // the writer runs transactions one at a time
						clock.Add(int64(time.Millisecond))
						return tx.Set(fmt.Appendf(nil, "k%d-%d", r, i), []byte("v"), 0)
					})
				}
				waits = append(waits, s.Submit(ctx, fns, make([]error, len(fns))))
			}
			close(hold)
			if err := first(); err != nil {
				t.Fatal(err)
			}
			for r, wait := range waits {
				if err := wait(); err != nil {
					t.Fatalf("request %d: %v", r, err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if sum := 0; tc.build == 0 && len(sizes) <= 2 {
				for _, n := range sizes {
					sum += n
				}
				if sum == 20 {
					sizes = tc.want // how many requests the first group took is a race
				}
			}
			if !slices.Equal(sizes, tc.want) {
				t.Errorf("group sizes %v, want %v", sizes, tc.want)
			}
			if len(ran) != txns || !slices.IsSorted(ran) {
				t.Errorf("transactions ran for requests %v, want each of %d once, in order", ran, txns/tc.txnsPerReq)
			}
		})
	}
}

func TestMaxGroupBuildDefaultsOff(t *testing.T) {
	var opts Options
	opts.EnsureDefaults()
	if opts.MaxGroupBuild != 0 {
		t.Errorf("default MaxGroupBuild %v, want 0 (groups bounded by MaxGroup only)", opts.MaxGroupBuild)
	}
}

// TestUnappliedIndexModel checks the index of a group's own writes
// against a list of the records written, through random sets, deletes,
// truncations back to a mark (a failed transaction) and re-indexing, with
// enough keys that the heads table grows and its probe runs collide and
// are shifted back by truncation: every key must read its latest record
// still indexed, and a key not written must miss.
func TestUnappliedIndexModel(t *testing.T) {
	type rec struct {
		key string
		val string
		del bool
	}
	for _, nkeys := range []int{3, 120, 200, 2000} {
		t.Run(fmt.Sprintf("keys=%d", nkeys), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, uint64(nkeys)))
			p := newUnappliedIndex()
			for round := range 20 {
				p.reset()
				b := new(pebble.Batch)
				var model []rec
				check := func(step int) {
					t.Helper()
					repr := b.Repr()
					for k := range nkeys + 5 { // the last 5 are never written
						key := fmt.Sprintf("key%d", k)
						var want *rec
						for i := len(model) - 1; i >= 0; i-- {
							if model[i].key == key {
								want = &model[i]
								break
							}
						}
						got, del, hit := p.lookup(repr, []byte(key))
						switch {
						case want == nil && hit:
							t.Fatalf("round %d step %d: %s found (%q, deleted %t), never written", round, step, key, got, del)
						case want != nil && (!hit || del != want.del || !want.del && string(got) != want.val):
							t.Fatalf("round %d step %d: %s = %q (deleted %t, hit %t), want %q (deleted %t)", round, step, key, got, del, hit, want.val, want.del)
						}
					}
				}
				for step := range 600 {
					switch r := rng.IntN(20); {
					case r < 3 && len(model) > 0: // a failed transaction
						n := len(model) - rng.IntN(min(len(model), 30)+1)
						if r == 0 {
							n = rng.IntN(len(model) + 1)
						}
						model = model[:n]
						p.truncate(n)
						// The Pebble batch is rebuilt to the mark too.
						nb := new(pebble.Batch)
						for _, m := range model {
							if m.del {
								_ = nb.Delete([]byte(m.key), nil)
							} else {
								_ = nb.Set([]byte(m.key), []byte(m.val), nil)
							}
						}
						if !bytes.Equal(nb.Repr()[batchHeaderLen:], b.Repr()[batchHeaderLen:len(nb.Repr())]) {
							t.Fatal("rebuilt batch differs")
						}
						b = nb
						check(step)
					case r == 1:
						p.reindex(slices.Clone(p.refs))
					default:
						m := rec{key: fmt.Sprintf("key%d", rng.IntN(nkeys)), del: rng.IntN(4) == 0}
						var err error
						if m.del {
							err = b.Delete([]byte(m.key), nil)
						} else {
							m.val = fmt.Sprintf("v%d.%d", round, step)
							err = b.Set([]byte(m.key), []byte(m.val), nil)
						}
						if err != nil {
							t.Fatal(err)
						}
						p.add(b.Repr(), len(m.key), len(m.val), m.del, nil)
						model = append(model, m)
					}
					if step%25 == 0 {
						check(step)
					}
				}
				check(600)
			}
		})
	}
}

// TestUnappliedIndexTruncateAcrossGrowth truncates an index back to
// every mark after enough distinct keys to grow its heads table twice:
// growing places the heads again in table order, not in the order they
// were written, so truncation must shift back the slots after one it
// empties, or keys written before the mark stop being found.
func TestUnappliedIndexTruncateAcrossGrowth(t *testing.T) {
	const n = 3 * minHeadSlots / 2 // grows at half and at whole minHeadSlots
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "key%d", i)
	}
	p := newUnappliedIndex()
	for mark := range n + 1 {
		p.reset()
		b := new(pebble.Batch)
		for i, k := range keys {
			v := fmt.Appendf(nil, "v%d", i)
			if err := b.Set(k, v, nil); err != nil {
				t.Fatal(err)
			}
			p.add(b.Repr(), len(k), len(v), false, nil)
		}
		p.truncate(mark)
		for i, k := range keys {
			got, _, hit := p.lookup(b.Repr(), k)
			if i < mark && (!hit || string(got) != fmt.Sprintf("v%d", i)) || i >= mark && hit {
				t.Fatalf("mark %d: %s = %q (hit %t), want written %t", mark, k, got, hit, i < mark)
			}
		}
	}
}
