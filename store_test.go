package flowrun_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

func openStore(t *testing.T, opts flowrun.StoreOptions) *flowrun.Store {
	t.Helper()
	st, err := flowrun.OpenStore(context.Background(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// snapshot returns the live entries of ns (at most a page of Scan).
func snapshot(t *testing.T, ns *flowrun.Namespace) map[string]string {
	t.Helper()
	es, err := ns.Scan(context.Background(), "", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range es {
		m[e.Key] = string(e.Value)
	}
	return m
}

// TestBadInput runs each failing command against a namespace holding known
// values and checks the error (errors.Is and the text a user needs) and
// that the namespace is unchanged.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, flowrun.StoreOptions{MaxKeyLength: 8, MaxValueBytes: 32, MaxScan: 10, MaxGetAll: 2, NoReclaim: true})
	ns := st.Namespace("bad")
	for k, v := range map[string]string{"n": "5", "f": "1.5", "s": `"text"`, "big": "9223372036854775807", "huge": "1e308", "huge_int": "99999999999999999999"} {
		if err := ns.Put(ctx, k, []byte(v), flowrun.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	before := snapshot(t, ns)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		fn   func(ctx context.Context) error
		want error
		msg  string // part of the message
	}{
		{"empty key", ctx, func(ctx context.Context) error { return ns.Put(ctx, "", []byte("1"), flowrun.PutOptions{}) }, flowrun.ErrInvalidKey, ""},
		{"key too long", ctx, func(ctx context.Context) error { return ns.Put(ctx, "123456789", []byte("1"), flowrun.PutOptions{}) }, flowrun.ErrKeyTooLong, "8"},
		{"invalid utf-8 key", ctx, func(ctx context.Context) error { _, _, err := ns.Get(ctx, "a\xffb"); return err }, flowrun.ErrInvalidKey, ""},
		{"value too large", ctx, func(ctx context.Context) error {
			return ns.Put(ctx, "n", []byte(`"0123456789abcdefghijklmnopqrstuvwxyz"`), flowrun.PutOptions{})
		}, flowrun.ErrValueTooLarge, "limit is 32 bytes"},
		{"invalid json", ctx, func(ctx context.Context) error { return ns.Put(ctx, "n", []byte(`{"a":`), flowrun.PutOptions{}) }, flowrun.ErrInvalidJSON, ""},
		{"not json at all", ctx, func(ctx context.Context) error { return ns.Put(ctx, "n", []byte(`hello`), flowrun.PutOptions{}) }, flowrun.ErrInvalidJSON, ""},
		{"null value", ctx, func(ctx context.Context) error { return ns.Put(ctx, "n", []byte(`null`), flowrun.PutOptions{}) }, flowrun.ErrNullValue, ""},
		{"empty value", ctx, func(ctx context.Context) error { return ns.Put(ctx, "n", nil, flowrun.PutOptions{}) }, flowrun.ErrNullValue, ""},
		{"negative ttl", ctx, func(ctx context.Context) error {
			return ns.Put(ctx, "n", []byte("1"), flowrun.PutOptions{TTL: -time.Second})
		}, flowrun.ErrInvalidCommand, "ttl"},
		{"increment a string", ctx, func(ctx context.Context) error { _, err := ns.Increment(ctx, "s", 1); return err }, flowrun.ErrNotNumber, `"text"`},
		{"integer increment of a float", ctx, func(ctx context.Context) error { _, err := ns.Increment(ctx, "f", 1); return err }, flowrun.ErrNotNumber, "IncrementFloat"},
		{"float increment of a string", ctx, func(ctx context.Context) error { _, err := ns.IncrementFloat(ctx, "s", 0.5); return err }, flowrun.ErrNotNumber, ""},
		{"increment of an integer beyond int64", ctx, func(ctx context.Context) error { _, err := ns.Increment(ctx, "huge_int", 1); return err }, flowrun.ErrOverflow, "does not fit"},
		{"increment overflow", ctx, func(ctx context.Context) error { _, err := ns.Increment(ctx, "big", 1); return err }, flowrun.ErrOverflow, ""},
		{"float increment by infinity", ctx, func(ctx context.Context) error {
			_, err := ns.IncrementFloat(ctx, "n", math.Inf(1))
			return err
		}, flowrun.ErrOverflow, ""},
		{"float increment overflow", ctx, func(ctx context.Context) error {
			_, err := ns.IncrementFloat(ctx, "huge", 1e308)
			return err
		}, flowrun.ErrOverflow, "not a finite number"},
		{"cas mismatch", ctx, func(ctx context.Context) error { return ns.CompareAndSet(ctx, "n", []byte("4"), []byte("6")) }, flowrun.ErrCASMismatch, "found 5"},
		{"cas absent expected", ctx, func(ctx context.Context) error { return ns.CompareAndSet(ctx, "n", nil, []byte("6")) }, flowrun.ErrCASMismatch, ""},
		{"cas invalid old", ctx, func(ctx context.Context) error { return ns.CompareAndSet(ctx, "n", []byte("{"), []byte("6")) }, flowrun.ErrInvalidJSON, ""},
		{"cad mismatch", ctx, func(ctx context.Context) error { return ns.CompareAndDelete(ctx, "n", []byte("4")) }, flowrun.ErrCASMismatch, ""},
		{"cad absent", ctx, func(ctx context.Context) error { return ns.CompareAndDelete(ctx, "zz", []byte("4")) }, flowrun.ErrCASMismatch, ""},
		{"keys limit above max", ctx, func(ctx context.Context) error { _, _, err := ns.Keys(ctx, "", "", 11); return err }, flowrun.ErrTooManyEntries, "10"},
		{"keys negative limit", ctx, func(ctx context.Context) error { _, _, err := ns.Keys(ctx, "", "", -1); return err }, flowrun.ErrInvalidCommand, ""},
		{"scan limit above max", ctx, func(ctx context.Context) error { _, err := ns.Scan(ctx, "", "", 11); return err }, flowrun.ErrTooManyEntries, ""},
		{"scan end too long", ctx, func(ctx context.Context) error { _, err := ns.Scan(ctx, "", "123456789", 0); return err }, flowrun.ErrKeyTooLong, ""},
		{"get_all too many", ctx, func(ctx context.Context) error { _, err := ns.GetAll(ctx, ""); return err }, flowrun.ErrTooManyEntries, "limit is 2"},
		{"cancelled put", cancelled, func(ctx context.Context) error { return ns.Put(ctx, "n", []byte("1"), flowrun.PutOptions{}) }, context.Canceled, ""},
		{"cancelled update", cancelled, func(ctx context.Context) error {
			return ns.Update(ctx, func(tx *flowrun.Tx) error { return tx.Put("n", []byte("1"), flowrun.PutOptions{}) })
		}, context.Canceled, ""},
		{"update failing after writes", ctx, func(ctx context.Context) error {
			return ns.Update(ctx, func(tx *flowrun.Tx) error {
				if err := tx.Put("n", []byte("100"), flowrun.PutOptions{}); err != nil {
					return err
				}
				if _, err := tx.Clear(""); err != nil {
					return err
				}
				return tx.CompareAndSet("n", []byte("100"), []byte("101")) // cleared: mismatch
			})
		}, flowrun.ErrCASMismatch, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.fn(tt.ctx)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), `namespace "bad"`) || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("message %q does not name the namespace or %q", err, tt.msg)
			}
			if got := snapshot(t, ns); !reflect.DeepEqual(got, before) {
				t.Errorf("store changed by a failed command: %s, was %s", got, before)
			}
		})
	}
}

// TestClosedStore: every command on a closed store, and a second Close,
// fail with ErrClosed; the writes acknowledged before Close are there
// when the directory is opened again.
func TestClosedStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Namespace("a")
	if err := ns.Put(ctx, "k", []byte(`"v"`), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"put":          func() error { return ns.Put(ctx, "k", []byte("1"), flowrun.PutOptions{}) },
		"get":          func() error { _, _, err := ns.Get(ctx, "k"); return err },
		"update":       func() error { return ns.Update(ctx, func(*flowrun.Tx) error { return nil }) },
		"reclaim":      func() error { _, err := ns.Reclaim(ctx); return err },
		"new handle":   func() error { return st.Namespace("b").Put(ctx, "k", []byte("1"), flowrun.PutOptions{}) },
		"second close": st.Close,
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, flowrun.ErrClosed) {
			t.Errorf("%s: got %v, want ErrClosed", name, err)
		}
	}
	st, err = flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if v, _, err := st.Namespace("a").Get(ctx, "k"); err != nil || string(v) != `"v"` {
		t.Fatalf("after reopening: %s, %v", v, err)
	}
}

// TestOpenStoreErrors: bad options name the field; a directory open in
// another Store is refused, not opened twice.
func TestOpenStoreErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tt := range []struct {
		opts  flowrun.StoreOptions
		field string
	}{
		{flowrun.StoreOptions{MaxValueBytes: -1}, "MaxValueBytes"},
		{flowrun.StoreOptions{MaxKeysVisited: -5}, "MaxKeysVisited"},
		{flowrun.StoreOptions{ReclaimInterval: -time.Second}, "ReclaimInterval"},
	} {
		if _, err := flowrun.OpenStore(ctx, dir, tt.opts); err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%+v: got %v, want an error naming %s", tt.opts, err, tt.field)
		}
	}
	st := openStore(t, flowrun.StoreOptions{})
	if other, err := flowrun.OpenStore(ctx, st.Dir(), flowrun.StoreOptions{}); err == nil {
		other.Close()
		t.Fatal("a directory open in a Store was opened again")
	} else if !strings.Contains(err.Error(), st.Dir()) {
		t.Errorf("error does not name the directory: %v", err)
	}
}

// TestTxIncrementOfFloat: Tx.Increment of a float is refused before it
// writes, so a function that ignores the error and commits does not turn
// the float into another one.
func TestTxIncrementOfFloat(t *testing.T) {
	ctx := context.Background()
	ns := openStore(t, flowrun.StoreOptions{}).Namespace("")
	if err := ns.Put(ctx, "f", []byte("1.5"), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	err := ns.Update(ctx, func(tx *flowrun.Tx) error {
		if _, err := tx.Increment("f", 1); !errors.Is(err, flowrun.ErrNotNumber) {
			t.Errorf("got %v, want ErrNotNumber", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v, _, _ := ns.Get(ctx, "f"); string(v) != "1.5" {
		t.Fatalf("f is %s, want 1.5", v)
	}
}

// TestUpdatePanics: a panicking function is an error of its Update, with
// nothing applied, and the store keeps working.
func TestUpdatePanics(t *testing.T) {
	ctx := context.Background()
	ns := openStore(t, flowrun.StoreOptions{}).Namespace("")
	err := ns.Update(ctx, func(tx *flowrun.Tx) error {
		_ = tx.Put("k", []byte("1"), flowrun.PutOptions{})
		panic("boom")
	})
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("got %v, want the panic as an error", err)
	}
	if ok, err := ns.Exists(ctx, "k"); ok || err != nil {
		t.Fatalf("after the panic: exists=%t, %v", ok, err)
	}
}

// TestConcurrentCommands: many goroutines incrementing shared counters and
// putting their own keys, in several namespaces, lose nothing (run with
// -race).
func TestConcurrentCommands(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, flowrun.StoreOptions{NoSync: true})
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := st.Namespace(fmt.Sprintf("ns-%d", w%2))
			for i := range each {
				if _, err := ns.Increment(ctx, "counter", 1); err != nil {
					t.Error(err)
					return
				}
				if err := ns.Put(ctx, fmt.Sprintf("w%d:%d", w, i), []byte("true"), flowrun.PutOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i := range 2 {
		ns := st.Namespace(fmt.Sprintf("ns-%d", i))
		v, _, err := ns.Get(ctx, "counter")
		if err != nil || string(v) != fmt.Sprint(workers/2*each) {
			t.Errorf("%s counter = %s, %v; want %d", ns.Name(), v, err, workers/2*each)
		}
		if n, err := ns.Count(ctx, "w"); err != nil || n != workers/2*each {
			t.Errorf("%s count = %d, %v; want %d", ns.Name(), n, err, workers/2*each)
		}
	}
}

// TestCloseWaitsForCommands: Close during concurrent puts returns only
// after every put that succeeded is durable; the others fail with
// ErrClosed, never a panic or a hang.
func TestCloseWaitsForCommands(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := st.Namespace("")
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				k := fmt.Sprintf("w%d:%d", w, i)
				err := ns.Put(ctx, k, []byte("1"), flowrun.PutOptions{})
				if errors.Is(err, flowrun.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked = append(acked, k)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	st, err = flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ns = st.Namespace("")
	for _, k := range acked {
		if ok, err := ns.Exists(ctx, k); !ok || err != nil {
			t.Fatalf("acknowledged %s missing after Close: %v", k, err)
		}
	}
}

// TestConcurrentPutsShareCommits: durable puts from many goroutines are
// committed in groups, several calls sharing one commit and fsync, rather
// than one commit per put.
func TestConcurrentPutsShareCommits(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	groups, calls, maxCalls := 0, 0, 0
	const workers, each = 16, 20
	// The first commit waits until every worker has started, so that on
	// a loaded machine the workers' puts still overlap: without this a
	// scheduler running them one after another left nothing to share.
	var started atomic.Int32
	var first sync.Once
	st := openStore(t, flowrun.StoreOptions{OnCommit: func(ci flowrun.CommitInfo) {
		if !ci.Wrote {
			return
		}
		first.Do(func() {
			deadline := time.Now().Add(10 * time.Second)
			for started.Load() < workers && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond)
		})
		mu.Lock()
		defer mu.Unlock()
		groups++
		calls += ci.Requests
		maxCalls = max(maxCalls, ci.Requests)
	}})
	ns := st.Namespace("")
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Add(1)
			for i := range each {
				if err := ns.Put(ctx, fmt.Sprintf("w%d:%d", w, i), []byte("1"), flowrun.PutOptions{}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if calls != workers*each {
		t.Fatalf("OnCommit saw %d calls, want %d", calls, workers*each)
	}
	if maxCalls < 2 {
		t.Errorf("%d puts from %d goroutines took %d commits, none shared", calls, workers, groups)
	}
	t.Logf("%d puts in %d commit groups (largest %d)", calls, groups, maxCalls)
}

// TestReclaim: expired keys are invisible at once; Namespace.Reclaim
// deletes them, and so does the store's background reclaiming every
// ReclaimInterval.
func TestReclaim(t *testing.T) {
	ctx := context.Background()
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	commits := make(chan struct{}, 100)
	st := openStore(t, flowrun.StoreOptions{
		Now:             func() time.Time { return time.Unix(0, now.Load()) },
		ReclaimInterval: 5 * time.Millisecond,
		OnCommit: func(ci flowrun.CommitInfo) {
			if ci.Wrote {
				select {
				case commits <- struct{}{}:
				default:
				}
			}
		},
	})
	manual, background := st.Namespace("manual"), st.Namespace("background")
	for _, ns := range []*flowrun.Namespace{manual, background} {
		for _, k := range []string{"a", "b"} {
			if err := ns.Put(ctx, k, []byte("1"), flowrun.PutOptions{TTL: time.Second}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, err := manual.Reclaim(ctx); n != 0 || err != nil {
		t.Fatalf("reclaim before expiry: %d, %v", n, err)
	}
	for len(commits) > 0 {
		<-commits
	}
	now.Add(int64(2 * time.Second))
	if ok, err := manual.Exists(ctx, "a"); ok || err != nil {
		t.Fatalf("expired key exists: %t, %v", ok, err)
	}
	// The background reclaiming writes the deletions of both namespaces,
	// one commit each, in whichever order it visits them; nothing else
	// writes until both are seen.
	deadline := time.After(30 * time.Second) // does-not-hang bound only
	for seen := 0; seen < 2; seen++ {
		select {
		case <-commits:
		case <-deadline:
			t.Fatalf("%d of 2 background reclaim commits within 30s", seen)
		}
	}
	for _, ns := range []*flowrun.Namespace{manual, background} {
		if n, err := ns.Reclaim(ctx); n != 0 || err != nil {
			t.Errorf("namespace %q after background reclaiming: %d, %v", ns.Name(), n, err)
		}
	}
}

// TestSameKeysAsAConnector: what a Store writes in namespace NAME is what a
// flow's kv connector with namespace NAME reads from the same directory.
func TestSameKeysAsAConnector(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Namespace("warnings").Put(ctx, "warnings_7", []byte(`{"n": 3}`), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kv.New(b, kv.Options{Namespace: "warnings", ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v []byte
	errs, err := conn.Run(ctx, []func(*kv.Session) error{func(s *kv.Session) (err error) {
		v, _, err = s.Get("warnings_7", nil)
		return err
	}})
	if err != nil || errs[0] != nil || string(v) != `{"n":3}` {
		t.Fatalf("connector reads %s, %v, %v", v, err, errs[0])
	}
}
