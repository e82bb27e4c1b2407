package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
)

func openTest(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func update(t *testing.T, s kv.Backend, fns ...kv.TxnFunc) []error {
	t.Helper()
	errs := make([]error, len(fns))
	if err := s.Update(context.Background(), fns, errs); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return errs
}

func set(key, value string, expireAt int64) kv.TxnFunc {
	return func(tx kv.Txn) error { return tx.Set([]byte(key), []byte(value), expireAt) }
}

type got struct {
	value    string
	expireAt int64
	found    bool
}

func get(key string, into *got) kv.TxnFunc {
	return func(tx kv.Txn) error {
		v, e, ok, err := tx.Get([]byte(key))
		*into = got{string(v), e, ok}
		return err
	}
}

func scanAll(start, end string, into *[]string) kv.TxnFunc {
	return func(tx kv.Txn) error {
		*into = nil
		var endKey []byte
		if end != "" {
			endKey = []byte(end)
		}
		return tx.Scan([]byte(start), endKey, func(k, v []byte, _ int64) (bool, error) {
			*into = append(*into, string(k)+"="+string(v))
			return true, nil
		})
	}
}

var errBoom = errors.New("boom")

func TestTxnSemantics(t *testing.T) {
	s := openTest(t, t.TempDir())
	defer s.Close()

	var g1, g2, g3 got
	var rows []string
	errs := update(t, s,
		set("a", "1", 0),
		get("a", &g1), // sees the write before it in the same group
		set("b", "2", 1234),
		func(tx kv.Txn) error { // fails after writing: must leave no trace
			if err := tx.Set([]byte("a"), []byte("clobbered"), 0); err != nil {
				return err
			}
			if err := tx.Set([]byte("c"), []byte("3"), 0); err != nil {
				return err
			}
			return errBoom
		},
		get("a", &g2),
		get("b", &g3),
		scanAll("", "", &rows),
	)
	for i, err := range errs {
		if (i == 3) != (err != nil) {
			t.Fatalf("errs[%d] = %v", i, err)
		}
	}
	if !errors.Is(errs[3], errBoom) {
		t.Fatalf("errs[3] = %v, want errBoom", errs[3])
	}
	if g1 != (got{"1", 0, true}) || g2 != (got{"1", 0, true}) {
		t.Fatalf("reads in group: %+v %+v", g1, g2)
	}
	if g3 != (got{"2", 1234, true}) {
		t.Fatalf("expiry round trip: %+v", g3)
	}
	if fmt.Sprint(rows) != "[a=1 b=2]" {
		t.Fatalf("scan after rollback = %v", rows)
	}

	// A later call sees the committed state; a failed first writer of an
	// empty batch rolls back to nothing.
	var g4 got
	errs = update(t, s,
		func(tx kv.Txn) error { _ = tx.Set([]byte("z"), []byte("9"), 0); return errBoom },
		get("z", &g4),
		func(tx kv.Txn) error { return tx.DeleteRange([]byte("a"), []byte("b")) },
		scanAll("", "", &rows),
	)
	if errs[0] == nil || g4.found {
		t.Fatalf("failed first write leaked: errs=%v z=%+v", errs, g4)
	}
	if fmt.Sprint(rows) != "[b=2]" {
		t.Fatalf("scan after DeleteRange = %v", rows)
	}
}

func TestScanBounds(t *testing.T) {
	s := openTest(t, t.TempDir())
	defer s.Close()
	update(t, s, set("a", "1", 0), set("b", "2", 0), set("c", "3", 0), set("ü", "4", 0))
	tests := []struct {
		start, end string
		want       string
	}{
		{"", "", "[a=1 b=2 c=3 ü=4]"},
		{"b", "c", "[b=2]"},
		{"b", "", "[b=2 c=3 ü=4]"},
		{"c", "b", "[]"},
		{"d", "", "[ü=4]"},
	}
	for _, tt := range tests {
		var rows []string
		update(t, s, scanAll(tt.start, tt.end, &rows))
		if got := fmt.Sprint(rows); got != tt.want {
			t.Errorf("scan [%q,%q) = %s, want %s", tt.start, tt.end, got, tt.want)
		}
	}
	// Stopping early.
	var n int
	update(t, s, func(tx kv.Txn) error {
		return tx.Scan(nil, nil, func(k, v []byte, _ int64) (bool, error) { n++; return n < 2, nil })
	})
	if n != 2 {
		t.Fatalf("scan stopped after %d rows, want 2", n)
	}
}

func TestReopenKeepsData(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	update(t, s, set("k", "v", 0), set("e", "x", 99))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), []kv.TxnFunc{set("k", "w", 0)}, make([]error, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Update after Close = %v, want ErrClosed", err)
	}
	s = openTest(t, dir)
	defer s.Close()
	var k, e got
	update(t, s, get("k", &k), get("e", &e))
	if k != (got{"v", 0, true}) || e != (got{"x", 99, true}) {
		t.Fatalf("after reopen: %+v %+v", k, e)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	defer s.Close()
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}

	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(file, "sub"), Options{}); err == nil {
		t.Fatal("Open under a regular file succeeded")
	}
}

func TestPanickingTxnIsAnError(t *testing.T) {
	s := openTest(t, t.TempDir())
	defer s.Close()
	var g got
	errs := update(t, s,
		func(tx kv.Txn) error { _ = tx.Set([]byte("p"), []byte("1"), 0); panic("bad command") },
		get("p", &g),
	)
	if errs[0] == nil || g.found {
		t.Fatalf("panic: errs=%v p=%+v", errs, g)
	}
}

// TestConcurrentReadModifyWrite checks that transactions from many
// goroutines are serialised: read-increment-write loses no update.
func TestConcurrentReadModifyWrite(t *testing.T) {
	for _, opts := range []Options{{}, {NoSync: true}, {MaxDelay: 200_000, MaxGroup: 16}} {
		t.Run(fmt.Sprintf("%+v", opts), func(t *testing.T) {
			s, err := Open(t.TempDir(), opts)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			incr := func(tx kv.Txn) error {
				v, _, _, err := tx.Get([]byte("n"))
				if err != nil {
					return err
				}
				var n int
				fmt.Sscan(string(v), &n)
				return tx.Set([]byte("n"), []byte(fmt.Sprint(n+1)), 0)
			}
			const workers, perWorker, perCall = 4, 50, 10
			var wg sync.WaitGroup
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < perWorker; i++ {
						fns := make([]kv.TxnFunc, perCall)
						for j := range fns {
							fns[j] = incr
						}
						errs := make([]error, perCall)
						if err := s.Update(context.Background(), fns, errs); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			var g got
			update(t, s, get("n", &g))
			if want := fmt.Sprint(workers * perWorker * perCall); g.value != want {
				t.Fatalf("n = %q, want %s", g.value, want)
			}
		})
	}
}

func TestPoolSharesOneStore(t *testing.T) {
	dir := t.TempDir()
	p := NewPool()
	a, err := p.Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Open(filepath.Join(dir, "."), Options{})
	if err != nil {
		t.Fatalf("second pooled Open: %v", err)
	}
	if _, err := p.Open(dir, Options{NoSync: true}); err == nil {
		t.Fatal("pooled Open with a different sync policy succeeded")
	}
	update(t, a, set("k", "from-a", 0))
	var g got
	update(t, b, get("k", &g))
	if g.value != "from-a" {
		t.Fatalf("b sees %+v", g)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("double Close = %v", err)
	}
	update(t, b, get("k", &g)) // still open through b
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Fully released: the directory can be opened again.
	s := openTest(t, dir)
	s.Close()
}

func TestOnCommitReportsGroups(t *testing.T) {
	tests := []struct {
		name   string
		noSync bool
	}{{"sync", false}, {"nosync", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var infos []CommitInfo
			pool := NewObservedPool(func(ci CommitInfo) {
				mu.Lock()
				infos = append(infos, ci)
				mu.Unlock()
			})
			dir := t.TempDir()
			b, err := pool.Open(dir, Options{NoSync: tt.noSync})
			if err != nil {
				t.Fatal(err)
			}
			var g got
			update(t, b, set("a", "1", 0), set("b", "2", 0), func(kv.Txn) error { return errBoom })
			update(t, b, get("a", &g))
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(infos) != 3 {
				t.Fatalf("got %d commit reports, want 3 (opening, write, read): %+v", len(infos), infos)
			}
			if o := infos[0]; o.Transactions != 0 || o.Wrote || o.Err != nil || o.Dir != infos[1].Dir {
				t.Errorf("opening reported as %+v", o)
			}
			w, r := infos[1], infos[2]
			if w.Transactions != 3 || w.Requests != 1 || !w.Wrote || w.Err != nil || w.Latency <= 0 {
				t.Errorf("write group reported as %+v", w)
			}
			if r.Transactions != 1 || r.Wrote {
				t.Errorf("read group reported as %+v", r)
			}
			if abs, _ := filepath.Abs(dir); w.Dir != abs {
				t.Errorf("Dir = %q, want %q", w.Dir, abs)
			}
		})
	}
}

func TestOnCommitSilentAfterClose(t *testing.T) {
	var infos []CommitInfo
	var mu sync.Mutex
	s, err := Open(t.TempDir(), Options{OnCommit: func(ci CommitInfo) {
		mu.Lock()
		infos = append(infos, ci)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Updates after Close fail before reaching the writer: nothing is
	// reported, and no report is made up.
	errs := make([]error, 1)
	if err := s.Update(context.Background(), []kv.TxnFunc{set("a", "1", 0)}, errs); !errors.Is(err, ErrClosed) {
		t.Fatalf("Update after Close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(infos) != 0 {
		t.Fatalf("reports after Close: %+v", infos)
	}
}

// TestView checks the read-only path: it sees earlier writes, refuses
// writes with kv.ErrReadOnly, and refuses to run on a closed store.
func TestView(t *testing.T) {
	s := openTest(t, t.TempDir())
	update(t, s, set("a", "1", 0), set("b", "2", 99))
	var ga, gb, gz got
	var rows []string
	fns := []kv.TxnFunc{
		get("a", &ga), get("b", &gb), get("z", &gz), scanAll("", "", &rows),
		set("c", "3", 0),
		func(tx kv.Txn) error { return tx.Delete([]byte("a")) },
		func(tx kv.Txn) error { return tx.DeleteRange([]byte("a"), []byte("z")) },
	}
	errs := make([]error, len(fns))
	if err := s.View(context.Background(), fns, errs); err != nil {
		t.Fatalf("View: %v", err)
	}
	for i, err := range errs {
		if (i >= 4) != errors.Is(err, kv.ErrReadOnly) || i < 4 && err != nil {
			t.Errorf("errs[%d] = %v", i, err)
		}
	}
	if ga != (got{"1", 0, true}) || gb != (got{"2", 99, true}) || gz.found || fmt.Sprint(rows) != "[a=1 b=2]" {
		t.Fatalf("View read %+v %+v %+v %v", ga, gb, gz, rows)
	}
	if err := s.View(context.Background(), fns[:1], errs[:2]); err == nil {
		t.Error("View accepted mismatched slices")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.View(context.Background(), fns[:1], errs[:1]); !errors.Is(err, ErrClosed) {
		t.Errorf("View after Close = %v, want ErrClosed", err)
	}
}

// TestGroupMatchesModel runs random groups of transactions (sets, deletes,
// range deletions, point reads, scans, failing transactions) against the
// store and a map, and checks every read and the final state agree. Groups
// start with a plain batch and switch to an indexed one on a scan or range
// deletion, so this covers reads of a group's own writes and rollbacks in
// both modes. Submitted all at once to a store with small groups, the
// groups are built while earlier ones are still being applied, so reads
// also go through the previous group's batch, and scans and range
// deletions wait for it.
func TestGroupMatchesModel(t *testing.T) {
	for _, pipelined := range []bool{false, true} {
		for seed := range 8 {
			t.Run(fmt.Sprintf("pipelined=%t/seed%d", pipelined, seed), func(t *testing.T) {
				testGroupMatchesModel(t, uint64(seed), pipelined)
			})
		}
	}
}

func testGroupMatchesModel(t *testing.T, seed uint64, pipelined bool) {
	opts := Options{}
	if pipelined {
		// Small groups, each applied only after the next one has had
		// time to be built on top of it.
		opts.MaxGroup = 4
		opts.beforeApply = func() { time.Sleep(200 * time.Microsecond) }
	}
	s, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var waits []func()
	rng := rand.New(rand.NewPCG(seed, 7))
	model := map[string]string{}
	key := func() string { return fmt.Sprintf("k%02d", rng.IntN(24)) }
	// Pipelined, groups are fewer transactions and scans and range
	// deletions rare: a group with either cannot be read through by the
	// next one, which then waits for it to be applied.
	groups, maxTxns, rareKind := 30, 40, 1
	if pipelined {
		groups, maxTxns, rareKind = 150, 6, 20
	}
	for group := range groups {
		var fns []kv.TxnFunc
		var checks []func() error
		for range 1 + rng.IntN(maxTxns) {
			// Each transaction does 1-3 operations and fails 1 time
			// in 5 after them; its model changes apply only if it
			// succeeds.
			type step struct {
				kind     int
				k, k2, v string
			}
			var steps []step
			for range 1 + rng.IntN(3) {
				st := step{kind: rng.IntN(10), k: key(), k2: key(), v: fmt.Sprint(group, "-", rng.IntN(1000))}
				if (st.kind == 6 || st.kind == 9) && rng.IntN(rareKind) != 0 {
					st.kind = 7 // a point read instead
				}
				if st.k2 < st.k {
					st.k, st.k2 = st.k2, st.k
				}
				steps = append(steps, st)
			}
			fail := rng.IntN(5) == 0
			// Expected reads come from a copy of the model as it
			// stands before this transaction, updated as it runs.
			var want []string
			local := maps.Clone(model)
			for _, st := range steps {
				switch {
				case st.kind < 4:
					local[st.k] = st.v
				case st.kind < 6:
					delete(local, st.k)
				case st.kind == 6:
					for k := range local {
						if k >= st.k && k < st.k2 {
							delete(local, k)
						}
					}
				case st.kind < 9:
					v, ok := local[st.k]
					if !ok {
						v = "<absent>"
					}
					want = append(want, fmt.Sprintf("%s:%q", st.k, v))
				default:
					want = append(want, fmt.Sprint(sortedRows(local)))
				}
			}
			if !fail {
				model = local
			}
			var gotReads []string
			fns = append(fns, func(tx kv.Txn) error {
				gotReads = gotReads[:0]
				for _, st := range steps {
					var err error
					switch {
					case st.kind < 4:
						err = tx.Set([]byte(st.k), []byte(st.v), 0)
					case st.kind < 6:
						err = tx.Delete([]byte(st.k))
					case st.kind == 6:
						err = tx.DeleteRange([]byte(st.k), []byte(st.k2))
					case st.kind < 9:
						var v []byte
						var found bool
						v, _, found, err = tx.Get([]byte(st.k))
						if !found {
							v = []byte("<absent>")
						}
						gotReads = append(gotReads, fmt.Sprintf("%s:%q", st.k, v))
					default:
						var rows []string
						err = tx.Scan(nil, nil, func(k, v []byte, _ int64) (bool, error) {
							rows = append(rows, string(k)+"="+string(v))
							return true, nil
						})
						gotReads = append(gotReads, fmt.Sprint(rows))
					}
					if err != nil {
						return err
					}
				}
				if fail {
					return errBoom
				}
				return nil
			})
			checks = append(checks, func() error {
				if fmt.Sprint(gotReads) != fmt.Sprint(want) {
					return fmt.Errorf("reads %v, want %v", gotReads, want)
				}
				return nil
			})
		}
		errs := make([]error, len(fns))
		wait := s.Submit(context.Background(), fns, errs)
		verify := func() {
			if err := wait(); err != nil {
				t.Fatalf("group %d: %v", group, err)
			}
			for i, check := range checks {
				if err := check(); err != nil {
					t.Fatalf("group %d txn %d: %v", group, i, err)
				}
				if errs[i] != nil && !errors.Is(errs[i], errBoom) {
					t.Fatalf("group %d txn %d: %v", group, i, errs[i])
				}
			}
		}
		if pipelined {
			waits = append(waits, verify)
		} else {
			verify()
		}
	}
	for _, verify := range waits {
		verify()
	}
	var rows []string
	update(t, s, scanAll("", "", &rows))
	if fmt.Sprint(rows) != fmt.Sprint(sortedRows(model)) {
		t.Fatalf("final state %v, want %v", rows, sortedRows(model))
	}
}

func sortedRows(m map[string]string) []string {
	rows := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		rows = append(rows, k+"="+m[k])
	}
	return rows
}

// TestPoolMemTableBytes checks that a pool's memtable size applies to the
// stores it opens, unless Open's Options set their own.
func TestPoolMemTableBytes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pool, own int64
		want      int64
	}{
		{"default", 0, 0, DefaultMemTableBytes},
		{"pool's", 8 << 20, 0, 8 << 20},
		{"Open's own", 8 << 20, 4 << 20, 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPool()
			p.SetMemTableBytes(tc.pool)
			b, err := p.Open(t.TempDir(), Options{MemTableBytes: tc.own})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := b.(*handle).store.opts.MemTableBytes; got != tc.want {
				t.Errorf("MemTableBytes = %d, want %d", got, tc.want)
			}
		})
	}
}
