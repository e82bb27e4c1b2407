package kv_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// pebbleConn opens a connector over a fresh Pebble store (a Viewer) with
// optimistic execution on.
func pebbleConn(t *testing.T) *kv.Connector {
	t.Helper()
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := kv.New(s, kv.Options{ReclaimInterval: -1, Optimistic: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// sessGet reads key through Run.
func sessGet(t *testing.T, c *kv.Connector, key string) string {
	t.Helper()
	var v []byte
	errs, err := c.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error {
		var err error
		v, _, err = s.Get(key, []byte("absent"))
		return err
	}})
	if err != nil || errs[0] != nil {
		t.Fatalf("get %q: %v %v", key, err, errs)
	}
	return string(v)
}

// incr returns a fn incrementing key, recording the value it saw in *out
// and counting its calls.
func incr(key string, out *string, calls *int) func(*kv.Session) error {
	return func(s *kv.Session) error {
		*calls++
		v, err := s.Increment(key, 1)
		*out = string(v)
		return err
	}
}

func TestRunOptimistic(t *testing.T) {
	boom := errors.New("boom")
	type outcome struct {
		results []string // what each fn reported, by index
		errs    []error  // errors.Is targets, nil for success
		state   map[string]string
		stats   kv.RunStats
	}
	tests := []struct {
		name    string
		setup   map[string]string // values put before the Run
		fns     func(res []string) []func(*kv.Session) error
		between func(t *testing.T, c *kv.Connector)
		want    outcome
	}{
		{
			name: "in-batch dependency validates",
			fns: func(res []string) []func(*kv.Session) error {
				var c0, c1 int
				return []func(*kv.Session) error{incr("k", &res[0], &c0), incr("k", &res[1], &c1)}
			},
			want: outcome{results: []string{"1", "2"}, errs: []error{nil, nil}, state: map[string]string{"k": "2"}, stats: kv.RunStats{Kept: 2}},
		},
		{
			name:  "read invalidated by another writer is run again",
			setup: map[string]string{"k": "10"},
			fns: func(res []string) []func(*kv.Session) error {
				var c0, c1 int
				return []func(*kv.Session) error{incr("k", &res[0], &c0), incr("other", &res[1], &c1)}
			},
			between: func(t *testing.T, c *kv.Connector) {
				var rec collect
				if err := c.Process(context.Background(), []pipeline.Event{{Meta: []byte(`{"kv":{"increment":"k","by":5}}`)}}, &rec); err != nil || rec.out != 1 {
					t.Fatalf("concurrent increment: %v, %d out", err, rec.out)
				}
			},
			want: outcome{results: []string{"16", "1"}, errs: []error{nil, nil}, state: map[string]string{"k": "16", "other": "1"}, stats: kv.RunStats{Kept: 1, Reruns: 1}},
		},
		{
			name: "invalidated guess of the overlay is run again",
			fns: func(res []string) []func(*kv.Session) error {
				var c0, c1 int
				return []func(*kv.Session) error{incr("k", &res[0], &c0), incr("k", &res[1], &c1)}
			},
			between: func(t *testing.T, c *kv.Connector) {
				errs, err := c.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error {
					return s.Set("k", []byte("100"), 0)
				}})
				if err != nil || errs[0] != nil {
					t.Fatal(err, errs)
				}
			},
			want: outcome{results: []string{"101", "102"}, errs: []error{nil, nil}, state: map[string]string{"k": "102"}, stats: kv.RunStats{Reruns: 2}},
		},
		{
			name:  "absent key that appears is run again",
			setup: map[string]string{},
			fns: func(res []string) []func(*kv.Session) error {
				return []func(*kv.Session) error{func(s *kv.Session) error {
					v, found, err := s.Get("k", nil)
					res[0] = fmt.Sprint(found, string(v))
					return err
				}}
			},
			between: func(t *testing.T, c *kv.Connector) {
				c.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error { return s.Set("k", []byte(`"x"`), 0) }})
			},
			want: outcome{results: []string{`true"x"`}, errs: []error{nil}, state: map[string]string{"k": `"x"`}, stats: kv.RunStats{Reruns: 1}},
		},
		{
			name: "error with valid reads writes nothing",
			fns: func(res []string) []func(*kv.Session) error {
				return []func(*kv.Session) error{
					func(s *kv.Session) error {
						if err := s.Set("a", []byte("1"), 0); err != nil {
							return err
						}
						return boom
					},
					func(s *kv.Session) error { // must not see a
						_, found, err := s.Get("a", nil)
						res[1] = fmt.Sprint(found)
						return err
					},
				}
			},
			want: outcome{results: []string{"", "false"}, errs: []error{boom, nil}, state: map[string]string{"a": "absent"}, stats: kv.RunStats{Kept: 2}},
		},
		{
			name:  "error of a run with invalid reads is not kept",
			setup: map[string]string{"k": "1"},
			fns: func(res []string) []func(*kv.Session) error {
				return []func(*kv.Session) error{func(s *kv.Session) error {
					v, _, err := s.Get("k", nil)
					if err != nil {
						return err
					}
					if string(v) == "1" {
						return boom
					}
					res[0] = string(v)
					return s.Set("seen", v, 0)
				}}
			},
			between: func(t *testing.T, c *kv.Connector) {
				c.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error { return s.Set("k", []byte("2"), 0) }})
			},
			want: outcome{results: []string{"2"}, errs: []error{nil}, state: map[string]string{"seen": "2"}, stats: kv.RunStats{Reruns: 1}},
		},
		{
			name:  "range operations run in the writer",
			setup: map[string]string{"p/1": "1", "p/2": "2", "q": "3"},
			fns: func(res []string) []func(*kv.Session) error {
				return []func(*kv.Session) error{
					func(s *kv.Session) error {
						keys, err := s.Keys("p/")
						res[0] = strings.Join(keys, ",")
						return err
					},
					func(s *kv.Session) error {
						all, err := s.GetAll("")
						res[1] = string(all)
						return err
					},
					func(s *kv.Session) error {
						n, err := s.Clear("p/")
						res[2] = fmt.Sprint(n)
						return err
					},
					func(s *kv.Session) error {
						n, err := s.Count("")
						res[3] = fmt.Sprint(n)
						return err
					},
					func(s *kv.Session) error { // sees the clear through validation
						_, found, err := s.Get("p/1", nil)
						res[4] = fmt.Sprint(found)
						return err
					},
				}
			},
			want: outcome{
				results: []string{"p/1,p/2", `{"p/1":1,"p/2":2,"q":3}`, "2", "1", "false"},
				errs:    []error{nil, nil, nil, nil, nil},
				state:   map[string]string{"p/1": "absent", "q": "3"},
				stats:   kv.RunStats{Pessimistic: 4, Reruns: 1},
			},
		},
		{
			name: "command errors are the same",
			fns: func(res []string) []func(*kv.Session) error {
				return []func(*kv.Session) error{
					func(s *kv.Session) error { return s.Set("s", []byte(`"x"`), 0) },
					func(s *kv.Session) error { _, err := s.Increment("s", 1); return err },
					func(s *kv.Session) error { return s.CAS("s", []byte(`"y"`), []byte("1")) },
					func(s *kv.Session) error { return s.CAS("s", []byte(`"x"`), []byte("1")) },
				}
			},
			want: outcome{results: make([]string, 4), errs: []error{nil, kv.ErrNotNumber, kv.ErrCASMismatch, nil}, state: map[string]string{"s": "1"}, stats: kv.RunStats{Kept: 4}},
		},
		{
			name: "panic is reported by the writer",
			fns: func(res []string) []func(*kv.Session) error {
				return []func(*kv.Session) error{
					func(s *kv.Session) error { panic("bad fn") },
					func(s *kv.Session) error { return s.Set("after", []byte("1"), 0) },
				}
			},
			want: outcome{results: make([]string, 2), errs: []error{errAny, nil}, state: map[string]string{"after": "1"}, stats: kv.RunStats{Pessimistic: 1, Kept: 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := pebbleConn(t)
			for k, v := range tt.setup {
				c.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error { return s.Set(k, []byte(v), 0) }})
			}
			res := make([]string, len(tt.want.results))
			fns := tt.fns(res)
			var between func()
			if tt.between != nil {
				between = func() { tt.between(t, c) }
			}
			errs, stats, err := c.RunObserved(context.Background(), fns, between)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tt.want.errs {
				switch {
				case want == errAny && errs[i] == nil, want == nil && errs[i] != nil, want != nil && want != errAny && !errors.Is(errs[i], want):
					t.Errorf("errs[%d] = %v, want %v", i, errs[i], want)
				}
			}
			if got, want := strings.Join(res, "|"), strings.Join(tt.want.results, "|"); got != want {
				t.Errorf("results %q, want %q", got, want)
			}
			if stats != tt.want.stats {
				t.Errorf("stats %+v, want %+v", stats, tt.want.stats)
			}
			for k, want := range tt.want.state {
				if got := sessGet(t, c, k); got != want {
					t.Errorf("%s = %s, want %s", k, got, want)
				}
			}
		})
	}
}

// TestRunOptimisticOff checks that without Options.Optimistic every fn runs
// once, in the writer, even over a Viewer.
func TestRunOptimisticOff(t *testing.T) {
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := kv.New(s, kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var v0, v1 string
	var c0, c1 int
	errs, stats, err := c.RunObserved(context.Background(), []func(*kv.Session) error{incr("k", &v0, &c0), incr("k", &v1, &c1)}, nil)
	if err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatal(err, errs)
	}
	if v0 != "1" || v1 != "2" || c0 != 1 || c1 != 1 || stats != (kv.RunStats{}) {
		t.Errorf("results %s %s, calls %d %d, stats %+v; want 1 2, one call each, no optimistic run", v0, v1, c0, c1, stats)
	}
}

// errAny stands for any non-nil error in a want table.
var errAny = errors.New("any error")

// collect counts emitted events by port.
type collect struct {
	mu       sync.Mutex
	out, err int
	errs     []string
}

func (c *collect) Emit(port string, ev pipeline.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if port == pipeline.PortErr {
		c.err++
		c.errs = append(c.errs, string(ev.Meta))
		return
	}
	c.out++
}

// flakyStore is a Pebble store whose View or Update can be made to fail.
type flakyStore struct {
	*pebblestore.Store
	viewErr, updateErr error
}

func (f *flakyStore) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	if f.viewErr != nil {
		return f.viewErr
	}
	return f.Store.View(ctx, fns, errs)
}

func (f *flakyStore) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	if f.updateErr != nil {
		return f.updateErr
	}
	return f.Store.Update(ctx, fns, errs)
}

func TestRunOptimisticStoreFailures(t *testing.T) {
	failed := errors.New("disk on fire")
	tests := []struct {
		name               string
		viewErr, updateErr error
		wantErr            error
		wantK              string
	}{
		{"view fails: run in the writer", failed, nil, nil, "1"},
		{"commit fails", nil, failed, kv.ErrCommit, "absent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			f := &flakyStore{Store: s}
			c, err := kv.New(f, kv.Options{ReclaimInterval: -1, Optimistic: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			f.viewErr, f.updateErr = tt.viewErr, tt.updateErr
			var v string
			var calls int
			errs, err := c.Run(context.Background(), []func(*kv.Session) error{incr("k", &v, &calls)})
			if !errors.Is(err, tt.wantErr) || tt.wantErr == nil && errs[0] != nil {
				t.Fatalf("Run = %v, %v; want %v", errs, err, tt.wantErr)
			}
			if tt.wantErr != nil && !errors.Is(err, failed) {
				t.Errorf("Run error %v does not wrap the store's", err)
			}
			f.viewErr, f.updateErr = nil, nil
			if got := sessGet(t, c, "k"); got != tt.wantK {
				t.Errorf("k = %s, want %s", got, tt.wantK)
			}
		})
	}
}

// TestRunOptimisticConcurrent increments a small key set from several
// goroutines calling Run (with reads of keys others write, so validations
// fail and fns run again) and one sending increment commands, and checks
// the exact totals and that each fn's last call is the one reported.
func TestRunOptimisticConcurrent(t *testing.T) {
	c := pebbleConn(t)
	const keys, runners, rounds, batch = 4, 3, 30, 20
	var wg sync.WaitGroup
	want := make([]int, keys)
	var mu sync.Mutex
	for r := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(r)))
			for range rounds {
				fns := make([]func(*kv.Session) error, batch)
				seen := make([]string, batch)
				picked := make([]int, batch)
				for i := range fns {
					k := rng.Intn(keys)
					picked[i] = k
					fns[i] = func(s *kv.Session) error {
						seen[i] = ""
						if _, _, err := s.Get(fmt.Sprintf("k%d", (k+1)%keys), nil); err != nil {
							return err
						}
						v, err := s.Increment(fmt.Sprintf("k%d", k), 1)
						seen[i] = string(v)
						return err
					}
				}
				errs, err := c.Run(context.Background(), fns)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for i, e := range errs {
					if e != nil || seen[i] == "" {
						t.Errorf("fn %d: %v, saw %q", i, e, seen[i])
					}
					want[picked[i]]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for j := range rounds * batch {
			k := j % keys
			var rec collect
			if err := c.Process(context.Background(), []pipeline.Event{{Meta: []byte(fmt.Sprintf(`{"kv":{"increment":"k%d"}}`, k))}}, &rec); err != nil || rec.out != 1 {
				t.Errorf("increment: %v %v", err, rec.errs)
			}
			mu.Lock()
			want[k]++
			mu.Unlock()
		}
	}()
	wg.Wait()
	for k := range keys {
		if got := sessGet(t, c, fmt.Sprintf("k%d", k)); got != fmt.Sprint(want[k]) {
			t.Errorf("k%d = %s, want %d", k, got, want[k])
		}
	}
}

// TestRunSameAsWithoutViewer runs one script of sessions against memstore
// (no Viewer: every fn in the writer) and Pebble (optimistic) and compares
// every result and error.
func TestRunSameAsWithoutViewer(t *testing.T) {
	mem, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close(context.Background())
	peb := pebbleConn(t)
	script := func(res []string) []func(*kv.Session) error {
		rec := func(i int, v ...any) { res[i] = fmt.Sprint(v...) }
		return []func(*kv.Session) error{
			func(s *kv.Session) error { return s.Set("a", []byte(`{"x":[1,2]}`), time.Hour) },
			func(s *kv.Session) error { v, f, err := s.Get("a", nil); rec(1, string(v), f); return err },
			func(s *kv.Session) error { v, err := s.Increment("n", 2.5); rec(2, string(v)); return err },
			func(s *kv.Session) error { f, err := s.Delete("a"); rec(3, f); return err },
			func(s *kv.Session) error { f, err := s.Exists("a"); rec(4, f); return err },
			func(s *kv.Session) error { return s.CAS("c", nil, []byte("1")) },
			func(s *kv.Session) error {
				err := s.CAS("c", nil, []byte("2"))
				rec(6, errors.Is(err, kv.ErrCASMismatch))
				return nil
			},
			func(s *kv.Session) error { n, err := s.Count(""); rec(7, n); return err },
			func(s *kv.Session) error { v, f, err := s.Get("a", []byte("0")); rec(8, string(v), f); return err },
		}
	}
	var got [2]string
	for j, c := range []*kv.Connector{mem, peb} {
		res := make([]string, 9)
		errs, err := c.Run(context.Background(), script(res))
		if err != nil {
			t.Fatal(err)
		}
		got[j] = fmt.Sprint(res, errs)
	}
	if got[0] != got[1] {
		t.Errorf("without a Viewer: %s\noptimistic:       %s", got[0], got[1])
	}
}
