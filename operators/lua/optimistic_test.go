package lua

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// staleStore is a Pebble store whose View serves made-up values for the
// keys ending in one of stale (each once), so the optimistic run of a
// script reading them is certain to fail validation and run again.
type staleStore struct {
	*pebblestore.Store
	mu    sync.Mutex
	stale map[string][]byte
}

func (s *staleStore) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	wrapped := make([]kv.TxnFunc, len(fns))
	for i, fn := range fns {
		wrapped[i] = func(tx kv.Txn) error { return fn(staleTxn{tx, s}) }
	}
	return s.Store.View(ctx, wrapped, errs)
}

type staleTxn struct {
	kv.Txn
	s *staleStore
}

func (t staleTxn) Get(key []byte) ([]byte, int64, bool, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	for suffix, v := range t.s.stale {
		if bytes.HasSuffix(key, []byte(suffix)) {
			delete(t.s.stale, suffix)
			return v, 0, true, nil
		}
	}
	return t.Txn.Get(key)
}

// logRecorder is a slog handler keeping the messages it is given.
type logRecorder struct {
	mu   *sync.Mutex
	msgs *[]string
}

func newLogRecorder() logRecorder { return logRecorder{mu: &sync.Mutex{}, msgs: new([]string)} }

func (h logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.msgs = append(*h.msgs, r.Message)
	return nil
}
func (h logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logRecorder) WithGroup(string) slog.Handler      { return h }
func (h logRecorder) lines() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.msgs)
}

// TestRerunKeepsOnlyTheLastRun makes the optimistic run of a script read
// a value that is not in the store: the run is discarded and made again
// inside the writer, and only the second run's writes, outputs and log
// lines remain.
func TestRerunKeepsOnlyTheLastRun(t *testing.T) {
	tests := []struct {
		name     string
		setup    string // script run once before the stale values are served
		script   string
		stale    map[string][]byte
		wantOut  []string // data of the out events
		wantErr  int
		wantLogs []string
		wantN    string
	}{
		{
			name:     "stale read",
			script:   `local n = kv.increment("n"); log.info("n=" .. n); emit("out", {n = n})`,
			stale:    map[string][]byte{"n": []byte("41")},
			wantOut:  []string{`{"n":1}`, `{"n":2}`},
			wantLogs: []string{"n=1", "n=2"},
			wantN:    "2",
		},
		{
			name:     "discarded run raised an error",
			script:   `local n = kv.increment("n"); log.info("n=" .. n); if n > 40 then error("too many") end; emit("out", {n = n})`,
			stale:    map[string][]byte{"n": []byte("41")},
			wantOut:  []string{`{"n":1}`, `{"n":2}`},
			wantLogs: []string{"n=1", "n=2"},
			wantN:    "2",
		},
		{
			name:     "kept run raised an error",
			setup:    `kv.set("flag", true)`,
			script:   `local v = kv.get("flag"); log.warn("flag", v); if v then error("flagged") end; kv.increment("n"); emit("out")`,
			stale:    map[string][]byte{"flag": []byte("false")},
			wantErr:  2,
			wantLogs: []string{"flag true", "flag true"},
			wantN:    "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			store := &staleStore{Store: ps}
			conn, err := kv.New(store, kv.Options{ReclaimInterval: -1, Optimistic: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })
			if tt.setup != "" {
				if c := process(t, newProc(t, tt.setup, Options{Store: conn}), ev(`{}`, `{}`)); len(c.out["err"]) != 0 {
					t.Fatalf("setup: %s", c.out["err"][0].Meta)
				}
			}
			store.stale = tt.stale
			logs := newLogRecorder()
			p := newProc(t, tt.script, Options{Store: conn, Logger: slog.New(logs)})
			c := process(t, p, ev(`{}`, `{}`), ev(`{}`, `{}`))
			var got []string
			for _, e := range c.out["out"] {
				got = append(got, string(e.Data))
			}
			if strings.Join(got, " ") != strings.Join(tt.wantOut, " ") || len(c.out["err"]) != tt.wantErr {
				t.Errorf("out %v, %d err (%v); want %v, %d err", got, len(c.out["err"]), c.out["err"], tt.wantOut, tt.wantErr)
			}
			if l := logs.lines(); strings.Join(l, "|") != strings.Join(tt.wantLogs, "|") {
				t.Errorf("logs %q, want %q", l, tt.wantLogs)
			}
			if n := storeGet(t, conn, "n"); n != tt.wantN {
				t.Errorf("n = %s, want %s", n, tt.wantN)
			}
		})
	}
}

// TestConcurrentScriptsAndCommands runs two Lua processors and a stream
// of increment commands against the same few keys of one store at once.
// Every increment must count exactly once, each result value must be
// reported once (by whichever node made it), and every script's log line
// must match an emitted event: no output or line of a discarded run.
func TestConcurrentScriptsAndCommands(t *testing.T) {
	ps, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kv.New(ps, kv.Options{ReclaimInterval: -1, Optimistic: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	const keys, batches, batchSize = 3, 20, 25
	script := `local n = kv.increment(event.data.key); log.info(event.data.key .. "=" .. n); emit("out", {key = event.data.key, n = n})`
	logs := newLogRecorder()
	procs := []*Processor{
		newProc(t, script, Options{Store: conn, Logger: slog.New(logs)}),
		newProc(t, script, Options{Store: conn, Logger: slog.New(logs)}),
	}
	var (
		mu      sync.Mutex
		seen    = map[string]int{} // "key=n" -> times reported
		emitted []string
		wg      sync.WaitGroup
	)
	report := func(kn string, fromScript bool) {
		mu.Lock()
		defer mu.Unlock()
		seen[kn]++
		if fromScript {
			emitted = append(emitted, kn)
		}
	}
	for j, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				events := make([]pipeline.Event, batchSize)
				for i := range events {
					events[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"key":"k%d"}`, (i+b+j)%keys))}
				}
				c := &collector{}
				if err := p.Process(context.Background(), events, c); err != nil {
					t.Error(err)
					return
				}
				if len(c.out["err"]) != 0 || len(c.out["out"]) != batchSize {
					t.Errorf("%d out, err %v", len(c.out["out"]), c.out["err"])
				}
				for _, e := range c.out["out"] {
					r := gjson.ParseBytes(e.Data)
					report(r.Get("key").String()+"="+r.Get("n").Raw, true)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range batches * batchSize {
			k := fmt.Sprintf("k%d", i%keys)
			c := &collector{}
			meta := fmt.Sprintf(`{"kv":{"increment":%q}}`, k)
			if err := conn.Process(context.Background(), []pipeline.Event{{Meta: []byte(meta)}}, c); err != nil || len(c.out["out"]) != 1 {
				t.Errorf("increment: %v %v", err, c.out)
				return
			}
			report(k+"="+string(c.out["out"][0].Data), false)
		}
	}()
	wg.Wait()
	total := 0
	for k := range keys {
		key := fmt.Sprintf("k%d", k)
		n := 0
		fmt.Sscan(storeGet(t, conn, key), &n)
		total += n
		for i := 1; i <= n; i++ {
			if c := seen[fmt.Sprintf("%s=%d", key, i)]; c != 1 {
				t.Errorf("%s=%d reported %d times", key, i, c)
			}
		}
	}
	if want := 3 * batches * batchSize; total != want || len(seen) != want {
		t.Errorf("%d increments stored, %d results reported; want %d", total, len(seen), want)
	}
	got := logs.lines()
	slices.Sort(got)
	slices.Sort(emitted)
	if !slices.Equal(got, emitted) {
		t.Errorf("%d log lines for %d emitted events, or different ones", len(got), len(emitted))
	}
}
