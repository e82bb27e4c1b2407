package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

func TestBudgetOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    kv.Options
		wantErr string // "" for none
		bytes   int
		keys    int
	}{
		{"zero means the defaults", kv.Options{}, "", kv.DefaultMaxResultBytes, kv.DefaultMaxKeysVisited},
		{"set", kv.Options{MaxResultBytes: 1 << 30, MaxKeysVisited: 5}, "", 1 << 30, 5},
		{"negative result budget", kv.Options{MaxResultBytes: -1}, "max_result_bytes", 0, 0},
		{"negative work budget", kv.Options{MaxKeysVisited: -1}, "max_keys_visited", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.ReclaimInterval = -1
			c, err := kv.New(memstore.New(), tt.opts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "must be positive") {
					t.Fatalf("kv.New = %v, want an error naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			if o := c.Options(); o.MaxResultBytes != tt.bytes || o.MaxKeysVisited != tt.keys {
				t.Errorf("budgets %d bytes, %d keys; want %d, %d", o.MaxResultBytes, o.MaxKeysVisited, tt.bytes, tt.keys)
			}
		})
	}
}

// cancelBackend cancels a context once its Scans have visited cancelAt
// records, and counts the records visited.
type cancelBackend struct {
	kv.Backend
	cancelAt int64
	cancel   context.CancelFunc
	visited  atomic.Int64
}

func (b *cancelBackend) wrap(fns []kv.TxnFunc) []kv.TxnFunc {
	out := make([]kv.TxnFunc, len(fns))
	for i, fn := range fns {
		out[i] = func(tx kv.Txn) error { return fn(cancelTxn{tx, b}) }
	}
	return out
}

func (b *cancelBackend) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return b.Backend.Update(ctx, b.wrap(fns), errs)
}

// cancelViewer is a cancelBackend over a Viewer, so that read-only events
// take the View path.
type cancelViewer struct{ *cancelBackend }

func (b cancelViewer) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return b.Backend.(kv.Viewer).View(ctx, b.wrap(fns), errs)
}

type cancelTxn struct {
	kv.Txn
	b *cancelBackend
}

func (t cancelTxn) Scan(start, end []byte, fn func(k, v []byte, exp int64) (bool, error)) error {
	return t.Txn.Scan(start, end, func(k, v []byte, exp int64) (bool, error) {
		if t.b.visited.Add(1) == t.b.cancelAt {
			t.b.cancel()
		}
		return fn(k, v, exp)
	})
}

// TestLongReadsStopWhenCancelled cancels the flow's context while a read of
// 20,000 keys (within the work budget) is under way: the read must stop
// within a few hundred keys and fail with the context's error, on the
// writer's path (Update) and the read-only path (View), and the store must
// be unchanged.
func TestLongReadsStopWhenCancelled(t *testing.T) {
	const keys, cancelAt, slack = 20_000, 1000, 300
	backends := []struct {
		name string
		open func(t *testing.T) (kv.Backend, bool)
	}{
		{"memstore", func(*testing.T) (kv.Backend, bool) { return memstore.New(), false }},
		{"pebble", func(t *testing.T) (kv.Backend, bool) { return openPebble(t, t.TempDir()), true }},
	}
	commands := []struct{ name, meta string }{
		{"count", `"count":null`},
		{"scan", `"scan":""`},
		{"keys", `"keys":null`},
		{"get_all", `"get_all":null`},
		{"clear", `"clear":null`},
		{"batch of counts", `"batch":[{"count":null},{"count":null},{"count":null}]`},
		{"batch with a write", `"batch":[{"put":"new","value":1},{"count":null}]`},
	}
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			inner, viewer := bk.open(t)
			cb := &cancelBackend{Backend: inner}
			var b kv.Backend = cb
			if viewer {
				b = cancelViewer{cb}
			}
			c, err := kv.New(b, kv.Options{ReclaimInterval: -1, MaxKeysVisited: 1 << 30, MaxResultBytes: 1 << 30, MaxGetAll: 1 << 30, MaxScan: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			evs := make([]pipeline.Event, keys)
			for i := range evs {
				evs[i] = kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"k%05d"`, i)), `1`)
			}
			process(t, c, evs...)
			for _, cmd := range commands {
				t.Run(cmd.name, func(t *testing.T) {
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					cb.cancel, cb.cancelAt = cancel, cancelAt
					cb.visited.Store(0)
					var rec kvtest.Recorder
					if err := c.Process(ctx, []pipeline.Event{kvtest.Event(kvtest.M(cmd.meta), ``)}, &rec); err != nil {
						t.Fatalf("Process: %v", err)
					}
					if len(rec.Events) != 1 || rec.Events[0].Port != pipeline.PortErr {
						t.Fatalf("got %d events (first %v), want one err event", len(rec.Events), kvtest.Strings(rec.Events[:min(1, len(rec.Events))]))
					}
					msg := gjson.GetBytes(rec.Events[0].Event.Meta, "error").String()
					if !strings.Contains(msg, context.Canceled.Error()) || !strings.Contains(msg, "cancelled") {
						t.Errorf("meta.error %q does not report the cancellation", msg)
					}
					if v := cb.visited.Load(); v > cancelAt+slack {
						t.Errorf("the read visited %d keys, %d after the cancellation; want at most %d", v, v-cancelAt, slack)
					}
					cb.cancelAt = -1
					got := process(t, c, kvtest.Event(kvtest.M(`"batch":[{"count":null},{"exists":"new"}]`), ``))
					if len(got) != 1 || string(got[0].Event.Data) != fmt.Sprintf("[%d,false]", keys) {
						t.Errorf("after the cancelled read: %v, want the store unchanged", kvtest.Strings(got))
					}
				})
			}
		})
	}
}

// TestSessionBudgets runs the budgets through Run, the path of Lua
// scripts: the calls of one function share one event's budgets, and a
// function failing on one leaves the store unchanged.
func TestSessionBudgets(t *testing.T) {
	v := []byte(`"` + strings.Repeat("a", 30) + `"`) // 32 bytes
	tests := []struct {
		name   string
		fn     func(s *kv.Session) error
		option string
	}{
		{"get_all over the result budget", func(s *kv.Session) error { _, err := s.GetAll(""); return err }, "max_result_bytes"},
		{"gets summed over the result budget", func(s *kv.Session) error {
			for _, k := range []string{"k01", "k02", "k03", "k04"} {
				if _, _, err := s.Get(k, nil); err != nil {
					return err
				}
			}
			return nil
		}, "max_result_bytes"},
		{"keys over the work budget", func(s *kv.Session) error { _, err := s.Keys(""); return err }, "max_keys_visited"},
		{"count over the work budget", func(s *kv.Session) error { _, err := s.Count(""); return err }, "max_keys_visited"},
		{"counts summed over the work budget", func(s *kv.Session) error {
			for range 2 {
				if _, err := s.Count("k0"); err != nil {
					return err
				}
			}
			return nil
		}, "max_keys_visited"},
		{"clear over the work budget", func(s *kv.Session) error { _, err := s.Clear(""); return err }, "max_keys_visited"},
		{"a write then the budget", func(s *kv.Session) error {
			if err := s.Set("new", []byte("1"), 0); err != nil {
				return err
			}
			_, err := s.Count("")
			return err
		}, "max_keys_visited"},
	}
	for _, optimistic := range []bool{false, true} {
		t.Run(fmt.Sprintf("optimistic=%v", optimistic), func(t *testing.T) {
			c, err := kv.New(openPebble(t, t.TempDir()), kv.Options{ReclaimInterval: -1, MaxResultBytes: 100, MaxKeysVisited: 10, Optimistic: optimistic})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			var evs []pipeline.Event
			for i := 1; i <= 12; i++ {
				evs = append(evs, kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"k%02d"`, i)), string(v)))
			}
			process(t, c, evs...)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					errs, err := c.Run(context.Background(), []func(s *kv.Session) error{tt.fn})
					if err != nil {
						t.Fatal(err)
					}
					if !errors.Is(errs[0], kv.ErrBudgetExceeded) || !strings.Contains(errs[0].Error(), tt.option) {
						t.Fatalf("fn error %v, want ErrBudgetExceeded naming %s", errs[0], tt.option)
					}
					// Within budget, from a fresh function: the budget is per run.
					errs, err = c.Run(context.Background(), []func(s *kv.Session) error{func(s *kv.Session) error {
						n, err := s.Count("k0")
						if err == nil && n != 9 {
							err = fmt.Errorf("count %d, want 9", n)
						}
						if ok, xerr := s.Exists("new"); xerr != nil || ok {
							err = errors.Join(err, fmt.Errorf("exists new = %v, %v; want the store unchanged", ok, xerr))
						}
						return err
					}})
					if err != nil || errs[0] != nil {
						t.Fatalf("a run within the budget: %v, %v", err, errs[0])
					}
				})
			}
		})
	}
}

// scanStarts records the start key of every Scan.
type scanStarts struct {
	kv.Backend
	starts []string
}

func (b *scanStarts) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	w := make([]kv.TxnFunc, len(fns))
	for i, fn := range fns {
		w[i] = func(tx kv.Txn) error { return fn(scanStartsTxn{tx, b}) }
	}
	return b.Backend.Update(ctx, w, errs)
}

type scanStartsTxn struct {
	kv.Txn
	b *scanStarts
}

func (t scanStartsTxn) Scan(start, end []byte, fn func(k, v []byte, exp int64) (bool, error)) error {
	t.b.starts = append(t.b.starts, string(start))
	return t.Txn.Scan(start, end, fn)
}

// TestReclaimResumesAfterEachChunk clears 3,500 keys with an expiry, which
// leaves their expiry index entries to the janitor, and reclaims them: each
// transaction of the pass must resume where the one before stopped, never
// scan again from the start of the index over what it already deleted
// (tombstones, slower to step over with every chunk), and the pass must
// empty the index.
func TestReclaimResumesAfterEachChunk(t *testing.T) {
	clock := kvtest.NewClock()
	b := &scanStarts{Backend: memstore.New()}
	c, err := kv.New(b, kv.Options{ReclaimInterval: -1, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	evs := make([]pipeline.Event, 3500)
	for i := range evs {
		evs[i] = kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"k%05d","ttl":1`, i)), `1`)
	}
	process(t, c, evs...)
	if got := process(t, c, kvtest.Event(kvtest.M(`"clear":null`), ``)); len(got) != 1 || string(got[0].Event.Data) != "3500" {
		t.Fatalf("clear: %v", kvtest.Strings(got))
	}
	clock.Advance(2 * time.Second)
	b.starts = nil
	if n, err := c.Reclaim(context.Background()); err != nil || n != 0 {
		t.Fatalf("Reclaim = %d, %v; want 0 records (clear deleted them), no error", n, err)
	}
	seen := map[string]bool{}
	for i, s := range b.starts {
		if seen[s] {
			t.Fatalf("scan %d of %d starts again at %q", i, len(b.starts), s)
		}
		seen[s] = true
	}
	if len(b.starts) < 4 {
		t.Errorf("%d scans for 3,500 index entries, want at least 4 (chunks of 1,000)", len(b.starts))
	}
	b.starts = nil
	if n, err := c.Reclaim(context.Background()); err != nil || n != 0 || len(b.starts) != 2 {
		t.Errorf("second Reclaim = %d, %v with %d scans; want nothing left (one empty scan per index)", n, err, len(b.starts))
	}
}
