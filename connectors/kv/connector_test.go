package kv_test

import (
	"context"
	"errors"
	"strconv"
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

// countingBackend counts the Txn calls made through it.
type countingBackend struct {
	kv.Backend
	failCommit  error
	closed      atomic.Int32
	deletes     atomic.Int64
	deleteRange atomic.Int64
	sets        atomic.Int64
}

func (b *countingBackend) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	if b.failCommit != nil {
		// Run the functions, then report the commit as failed: the
		// connector must not emit any of their results.
		_ = b.Backend.Update(ctx, wrap(b, fns), errs)
		return b.failCommit
	}
	return b.Backend.Update(ctx, wrap(b, fns), errs)
}

func (b *countingBackend) Close() error {
	b.closed.Add(1)
	return b.Backend.Close()
}

func wrap(b *countingBackend, fns []kv.TxnFunc) []kv.TxnFunc {
	out := make([]kv.TxnFunc, len(fns))
	for i, fn := range fns {
		out[i] = func(tx kv.Txn) error { return fn(countingTxn{tx, b}) }
	}
	return out
}

type countingTxn struct {
	kv.Txn
	b *countingBackend
}

func (t countingTxn) Set(k, v []byte, exp int64) error {
	t.b.sets.Add(1)
	return t.Txn.Set(k, v, exp)
}

func (t countingTxn) Delete(k []byte) error {
	t.b.deletes.Add(1)
	return t.Txn.Delete(k)
}

func (t countingTxn) DeleteRange(s, e []byte) error {
	t.b.deleteRange.Add(1)
	return t.Txn.DeleteRange(s, e)
}

func process(t *testing.T, c *kv.Connector, evs ...pipeline.Event) []kvtest.Emitted {
	t.Helper()
	var rec kvtest.Recorder
	if err := c.Process(context.Background(), evs, &rec); err != nil {
		t.Fatalf("Process: %v", err)
	}
	return rec.Events
}

// TestClearUsesOneRangeDeletion clears a million keys of a memstore, 50,000
// under the race detector (where the million took 50 s).
func TestClearUsesOneRangeDeletion(t *testing.T) {
	testClearMillion(t, memstore.New(), raceEnabled)
}

// testClearMillion clears a million keys (50,000 under -short or when
// small) and asserts it was done with one range deletion and no point
// deletion. The clear counts every key first, so the work budget is raised
// to let it.
func testClearMillion(t *testing.T, backend kv.Backend, small bool) {
	n := 1_000_000
	if testing.Short() || small {
		n = 50_000
	}
	b := &countingBackend{Backend: backend}
	c, err := kv.New(b, kv.Options{ReclaimInterval: -1, MaxKeysVisited: 2 * n})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	const chunk = 10_000
	start := time.Now()
	for i := 0; i < n; i += chunk {
		evs := make([]pipeline.Event, chunk)
		for j := range evs {
			evs[j] = kvtest.Event(kvtest.M(`"put":"k`+strconv.Itoa(i+j)+`"`), `1`)
		}
		process(t, c, evs...)
	}
	process(t, c, kvtest.Event(kvtest.M(`"put":"other"`), `2`))
	t.Logf("put %d keys in %v", n, time.Since(start))
	start = time.Now()
	got := process(t, c, kvtest.Event(kvtest.M(`"clear":"k"`), ``))
	elapsed := time.Since(start)
	t.Logf("clear of %d keys took %v", n, elapsed)
	want := kvtest.Out(strconv.Itoa(n), `"op":"clear","key":"k","found":true`)
	if len(got) != 1 || got[0].String() != want {
		t.Fatalf("clear: %v, want %s", kvtest.Strings(got), want)
	}
	if d, r := b.deletes.Load(), b.deleteRange.Load(); d != 0 || r != 1 {
		t.Errorf("clear used %d point deletions and %d range deletions, want 0 and 1", d, r)
	}
	got = process(t, c, kvtest.Event(kvtest.M(`"count":null`), ``))
	if len(got) != 1 || string(got[0].Event.Data) != "1" {
		t.Errorf("after clear: %v", kvtest.Strings(got))
	}
}

func TestCommitFailureFailsTheWholeBatch(t *testing.T) {
	boom := errors.New("disk on fire")
	b := &countingBackend{Backend: memstore.New(), failCommit: boom}
	c, err := kv.New(b, kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	evs := []pipeline.Event{
		kvtest.Event(kvtest.MC(`"put":"a"`, `1`), `1`),
		kvtest.Event(kvtest.M(`"get":"a"`), ``),
		kvtest.Event(kvtest.M(`"nope":"a"`), ``),
	}
	got := process(t, c, evs...)
	if len(got) != 3 {
		t.Fatalf("got %d events: %v", len(got), kvtest.Strings(got))
	}
	for i, e := range got {
		msg := gjson.GetBytes(e.Event.Meta, "error").String()
		if e.Port != "err" {
			t.Errorf("event %d on %q, want err", i, e.Port)
		}
		if i < 2 && (!strings.Contains(msg, boom.Error()) || !strings.Contains(msg, kv.ErrCommit.Error())) {
			t.Errorf("event %d error %q does not report the commit failure", i, msg)
		}
	}
	if c := gjson.GetBytes(got[0].Event.Meta, "correlation").Raw; c != "1" {
		t.Errorf("correlation lost on commit failure: %s", got[0].Event.Meta)
	}
}

func TestJanitorAndClose(t *testing.T) {
	clock := kvtest.NewClock()
	b := &countingBackend{Backend: memstore.New()}
	c, err := kv.New(b, kv.Options{Namespace: "j", Now: clock.Now, ReclaimInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	process(t, c, kvtest.Event(kvtest.M(`"put":"a","ttl":1`), `1`))
	process(t, c, kvtest.Event(kvtest.M(`"put":"b"`), `1`))
	clock.Advance(2 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for b.deletes.Load() < 2 { // the record and its index entry
		if time.Now().After(deadline) {
			t.Fatal("janitor did not reclaim the expired key")
		}
		time.Sleep(time.Millisecond)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := b.closed.Load(); n != 1 {
		t.Errorf("backend closed %d times, want 1", n)
	}
	got := process(t, c, kvtest.Event(kvtest.M(`"get":"b"`), ``))
	if len(got) != 1 || got[0].Port != "err" || !strings.Contains(string(got[0].Event.Meta), kv.ErrCommit.Error()) {
		t.Errorf("Process after Close: %v", kvtest.Strings(got))
	}
}

func TestNewAndOptions(t *testing.T) {
	if _, err := kv.New(nil, kv.Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
	var o kv.Options
	o.EnsureDefaults()
	if o.Namespace != kv.DefaultNamespace || o.MaxKeyLength != 255 || o.MaxValueBytes != 4<<20 ||
		o.MaxGetAll != kv.DefaultMaxGetAll || o.MaxScan != kv.DefaultMaxScan || o.MaxBatch != kv.DefaultMaxBatch ||
		o.Now == nil || o.ReclaimInterval != time.Minute || o.Logger == nil {
		t.Errorf("EnsureDefaults left %+v", o)
	}
	o = kv.Options{ReclaimInterval: -1}
	o.EnsureDefaults()
	if o.ReclaimInterval >= 0 {
		t.Errorf("a negative ReclaimInterval must stay negative (janitor off), got %v", o.ReclaimInterval)
	}
	if p := kv.Ports(); len(p) != 2 || p[0] != "out" || p[1] != "err" {
		t.Errorf("Ports() = %v", p)
	}
}

func TestValueLimitDefault(t *testing.T) {
	c, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	big := `"` + strings.Repeat("x", 4<<20) + `"`
	got := process(t, c, kvtest.Event(kvtest.M(`"put":"big"`), big))
	if len(got) != 1 || got[0].Port != "err" {
		t.Fatalf("4 MiB + 2 bytes value accepted")
	}
	msg := gjson.GetBytes(got[0].Event.Meta, "error").String()
	for _, want := range []string{`put "big"`, "limit is 4 MiB", kv.ErrValueTooLarge.Error()} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if string(got[0].Event.Data) != big {
		t.Error("err data is not the original payload")
	}
	ok := `"` + strings.Repeat("x", 4<<20-2) + `"`
	if got := process(t, c, kvtest.Event(kvtest.M(`"put":"big"`), ok)); len(got) != 1 || got[0].Port != "out" {
		t.Fatalf("exactly 4 MiB refused")
	}
}

// TestCorrelationFoundWithTheCommand checks the correlation read in the
// same pass as meta.kv: wherever it sits among the meta's fields, whatever
// it holds, on out and on err, and the first of two as gjson reads it.
func TestCorrelationFoundWithTheCommand(t *testing.T) {
	c, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	for _, tc := range []struct {
		name, meta, data string
		port, corr       string // corr "": none
	}{
		{"after kv", `{"kv":{"put":"a"},"correlation":7}`, `1`, "out", `7`},
		{"before kv", `{"correlation":"x-1","kv":{"get":"a"}}`, ``, "out", `"x-1"`},
		{"among others", `{"a":[1,{"kv":2}],"correlation":{"kv":{"get":"b"}},"z":null,"kv":{"get":"a"}}`, ``, "out", `{"kv":{"get":"b"}}`},
		{"absent", `{"kv":{"get":"a"}}`, ``, "out", ``},
		{"first of two", `{"correlation":1,"kv":{"get":"a"},"correlation":2}`, ``, "out", `1`},
		{"escaped name", `{"kv":{"get":"a"},"correl\u0061tion":[true]}`, ``, "out", `[true]`},
		{"failed command", `{"kv":{"increment":"a","by":"x"},"correlation":3}`, ``, "err", `3`},
		{"no command", `{"correlation":4}`, ``, "err", `4`},
		{"meta not an object", `[{"correlation":5}]`, ``, "err", ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := process(t, c, kvtest.Event(tc.meta, tc.data))
			if len(got) != 1 || got[0].Port != tc.port {
				t.Fatalf("got %v, want one event on %s", kvtest.Strings(got), tc.port)
			}
			if r := gjson.GetBytes(got[0].Event.Meta, "correlation"); r.Raw != tc.corr {
				t.Errorf("correlation %q, want %q: %s", r.Raw, tc.corr, got[0].Event.Meta)
			}
		})
	}
}
