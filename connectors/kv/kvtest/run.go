package kvtest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/pipeline"
)

// Run runs the conformance table against backends made by newBackend, one
// fresh backend per scenario. The backend is closed by the harness.
func Run(t *testing.T, newBackend func(t *testing.T) kv.Backend) {
	run(t, func(t *testing.T) *Harness { return NewHarness(t, newBackend(t)) })
}

// RunConns runs the conformance table through connectors made by
// newConn (one per namespace of each scenario, a fresh one per scenario),
// for processors standing for a kv.Connector: a partitioned connector.
// Each scenario's commands must reach one store: the concurrent
// increments go through one connector.
func RunConns(t *testing.T, newConn NewConn) {
	run(t, func(t *testing.T) *Harness { return NewConnHarness(t, newConn) })
}

func run(t *testing.T, newHarness func(t *testing.T) *Harness) {
	for _, tc := range casesTable() {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if tc.opts != nil {
				tc.opts(&h.Options)
			}
			for i, st := range tc.steps {
				runStep(t, h, i, st)
			}
		})
	}
	t.Run("one slice sees its own earlier commands", func(t *testing.T) {
		testBatchOrder(t, newHarness(t))
	})
	t.Run("namespaces are isolated", func(t *testing.T) {
		testNamespaces(t, newHarness(t))
	})
	t.Run("reclaim deletes expired keys only", func(t *testing.T) {
		testReclaim(t, newHarness(t))
	})
	t.Run("idempotency keys within one slice and past their retention", func(t *testing.T) {
		testIdemBatchAndReclaim(t, newHarness(t))
	})
	t.Run("concurrent increments lose nothing", func(t *testing.T) {
		// 8 x 1,000: over etcd each increment of the one key is a
		// round trip that half of them retry; 8 x 10,000 took 100 s,
		// 8 x 2,500 still 29 s under -race.
		testConcurrentIncrements(t, newHarness(t), 8, 1000)
	})
}

// testBatchOrder sends several commands in one Process call: each sees the
// ones before it, failures in the middle do not disturb the others, and
// outputs come in input order, each derived from its input (Origin kept).
func testBatchOrder(t *testing.T, h *Harness) {
	evs := []pipeline.Event{
		Event(M(`"put":"a"`), `1`),
		Event(M(`"increment":"a"`), ``),
		Event(M(`"fetch":"a"`), ``),
		Event(M(`"cas":"a","old":1`), `9`),
		Event(M(`"scan":""`), ``),
		Event(M(`"swap":"a"`), `"s"`),
		Event(M(`"get":"a"`), ``),
	}
	tr := pipeline.NewTracker(len(evs), nil, nil)
	for i := range evs {
		evs[i] = tr.Track(i, evs[i])
	}
	got := h.DoSlice("t", evs...)
	want := []string{
		op("put", "a", `1`, true),
		op("increment", "a", `2`, true),
		"err",
		"err",
		row("a", `2`, true),
		op("swap", "a", `2`, true),
		get("a", `"s"`, true),
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d:\n%s", len(got), len(want), join(Strings(got)))
	}
	for i, g := range got {
		if want[i] == "err" {
			if g.Port != "err" {
				t.Errorf("event %d: got %s, want an err event", i, g)
			}
		} else if g.String() != want[i] {
			t.Errorf("event %d:\n got %s\nwant %s", i, g, want[i])
		}
		if g.Event.Origin() != evs[i].Origin() {
			t.Errorf("event %d: derived from event %d, want %d", i, g.Event.Origin().Index(), i)
		}
	}
}

// testNamespaces fills several namespaces of one backend, with names and
// keys chosen to collide if the layout were a plain concatenation, and
// checks no command of one namespace reaches another.
func testNamespaces(t *testing.T, h *Harness) {
	spaces := []string{"n", "n2", "nn", "n\u0000", "default", "é", "\U0010ffff"}
	keys := []string{"2x", "n2x", "x", "\u0000", "é", "\uffff"}
	for _, ns := range spaces {
		for _, k := range keys {
			meta := M(`"put":` + quoteJSON(k))
			want := Out(quoteJSON(ns), `"op":"put","key":`+quoteJSON(k)+`,"found":true`)
			if g := join(Strings(h.Do(ns, meta, quoteJSON(ns)))); g != want {
				t.Fatalf("ns %q put %q:\n got %s\nwant %s", ns, k, g, want)
			}
		}
	}
	n := strconv.Itoa(len(keys))
	for _, ns := range spaces {
		for _, probe := range []struct{ meta, want string }{
			{M(`"count":null`), n},
			{M(`"count":""`), n},
			{M(`"count":"n"`), "1"},
			{M(`"keys":null`), ""},
			{M(`"get_all":null`), ""},
		} {
			got := h.Do(ns, probe.meta, "")
			if len(got) != 1 || got[0].Port != "out" {
				t.Fatalf("ns %q %s: %s", ns, probe.meta, join(Strings(got)))
			}
			data := string(got[0].Event.Data)
			switch {
			case probe.want != "":
				if data != probe.want {
					t.Errorf("ns %q %s = %s, want %s", ns, probe.meta, data, probe.want)
				}
			case gjson.Parse(data).IsArray():
				if c := len(gjson.Parse(data).Array()); c != len(keys) {
					t.Errorf("ns %q keys: %s, want %d keys", ns, data, len(keys))
				}
			default:
				gjson.Parse(data).ForEach(func(k, v gjson.Result) bool {
					if v.Str != ns {
						t.Errorf("ns %q get_all %q = %s: another namespace's value", ns, k.Str, v.Raw)
					}
					return true
				})
			}
		}
		for _, scan := range []string{`"scan":""`, `"scan":"","end":"\uffff\uffff"`, `"scan":"\u0000"`} {
			rows := h.Do(ns, M(scan), "")
			if len(rows) != len(keys) {
				t.Errorf("ns %q %s: %d rows, want %d:\n%s", ns, scan, len(rows), len(keys), join(Strings(rows)))
			}
			for _, r := range rows {
				if string(r.Event.Data) != quoteJSON(ns) {
					t.Errorf("ns %q %s: row from another namespace: %s", ns, scan, r)
				}
			}
		}
		for _, k := range keys {
			got := h.Do(ns, M(`"get":`+quoteJSON(k)), "")
			if len(got) != 1 || string(got[0].Event.Data) != quoteJSON(ns) {
				t.Errorf("ns %q get %q: %s", ns, k, join(Strings(got)))
			}
		}
	}
	// Clearing one namespace, whatever the prefix, leaves the others whole.
	for i, ns := range spaces {
		for _, clr := range []string{`"clear":"n"`, `"clear":""`, `"clear":null`} {
			h.Do(ns, M(clr), "")
		}
		if got := h.Do(ns, M(`"count":null`), ""); len(got) != 1 || string(got[0].Event.Data) != "0" {
			t.Errorf("ns %q after clear: %s", ns, join(Strings(got)))
		}
		for _, other := range spaces[i+1:] {
			if got := h.Do(other, M(`"count":null`), ""); len(got) != 1 || string(got[0].Event.Data) != n {
				t.Errorf("clearing ns %q changed ns %q: %s", ns, other, join(Strings(got)))
			}
		}
	}
}

// quoteJSON encodes s the way the connector does (canonical JSON string).
func quoteJSON(s string) string {
	b := []byte(`"`)
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', byte(c))
		case c < 0x20:
			b = fmt.Appendf(b, `\u%04x`, c)
		default:
			b = append(b, string(c)...)
		}
	}
	return string(append(b, '"'))
}

// testReclaim checks that the janitor pass deletes exactly the expired
// records of its own namespace and that rewritten keys survive.
func testReclaim(t *testing.T, h *Harness) {
	ctx := context.Background()
	do := func(ns, meta, data string) {
		t.Helper()
		if got := h.Do(ns, meta, data); len(got) != 1 || got[0].Port != "out" {
			t.Fatalf("%s %s: %s", meta, data, join(Strings(got)))
		}
	}
	do("a", M(`"put":"e1","ttl":1`), `1`)
	do("a", M(`"put":"e2","ttl":1`), `1`)
	do("a", M(`"put":"keep","ttl":1`), `1`)
	do("a", M(`"put":"keep"`), `2`) // no ttl any more
	do("a", M(`"put":"later","ttl":1`), `1`)
	do("a", M(`"put":"later","ttl":100`), `2`) // expiry moved
	do("a", M(`"put":"cleared","ttl":1`), `1`)
	do("a", M(`"clear":"cleared"`), ``)
	do("b", M(`"put":"e1","ttl":1`), `1`)
	if n, err := h.Conn("a").Reclaim(ctx); err != nil || n != 0 {
		t.Fatalf("Reclaim before expiry = %d, %v; want 0", n, err)
	}
	h.Clock.Advance(time.Second)
	n, err := h.Conn("a").Reclaim(ctx)
	if err != nil || n != 2 {
		t.Fatalf("Reclaim = %d, %v; want 2 (e1, e2)", n, err)
	}
	if n, err := h.Conn("a").Reclaim(ctx); err != nil || n != 0 {
		t.Fatalf("second Reclaim = %d, %v; want 0", n, err)
	}
	if got := Strings(h.Do("a", M(`"keys":null`), "")); got[0] != op("keys", "", `["keep","later"]`, true, `,"next":null`) {
		t.Errorf("after reclaim: %s", got)
	}
	// Namespace b was not reclaimed by a's janitor: its record is still
	// stored, and b's own pass removes it.
	if n, err := h.Conn("b").Reclaim(ctx); err != nil || n != 1 {
		t.Errorf("Reclaim of b = %d, %v; want 1", n, err)
	}
	// Enough expired keys to need several reclaim transactions.
	evs := make([]pipeline.Event, 2500)
	for i := range evs {
		evs[i] = Event(M(`"put":"bulk`+strconv.Itoa(i)+`","ttl":1`), `1`)
	}
	h.DoSlice("a", evs...)
	h.Clock.Advance(time.Second)
	if n, err := h.Conn("a").Reclaim(ctx); err != nil || n != len(evs) {
		t.Errorf("bulk Reclaim = %d, %v; want %d", n, err, len(evs))
	}
}

// testConcurrentIncrements runs goroutines × perG increments of one key,
// half through their own Connector and half sharing one, in slices of
// varying size. Every increment must see a distinct value.
func testConcurrentIncrements(t *testing.T, h *Harness, goroutines, perG int) {
	if testing.Short() {
		perG /= 10
	}
	shared := h.Conn("ctr")
	conns := make([]Conn, goroutines)
	for g := range conns {
		if g%2 == 0 || h.newConn != nil {
			conns[g] = shared
			continue
		}
		opts := h.Options
		opts.Namespace = "ctr"
		opts.Now = h.Clock.Now
		opts.ReclaimInterval = -1
		c, err := kv.New(shareBackend(h.Backend), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		conns[g] = c
	}
	seen := make([][]int64, goroutines)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			size := 1 + g*17%97
			for done := 0; done < perG; {
				n := min(size, perG-done)
				evs := make([]pipeline.Event, n)
				for i := range evs {
					evs[i] = Event(M(`"increment":"hits"`), ``)
				}
				var rec Recorder
				if err := conns[g].Process(context.Background(), evs, &rec); err != nil {
					errs <- err
					return
				}
				for _, e := range rec.Events {
					if e.Port != "out" {
						errs <- fmt.Errorf("increment failed: %s", e)
						return
					}
					v, err := strconv.ParseInt(string(e.Event.Data), 10, 64)
					if err != nil {
						errs <- fmt.Errorf("increment result %s: %v", e, err)
						return
					}
					seen[g] = append(seen[g], v)
				}
				done += n
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := int64(goroutines * perG)
	got := h.Do("ctr", M(`"get":"hits"`), "")
	if want := get("hits", strconv.FormatInt(total, 10), true); len(got) != 1 || got[0].String() != want {
		t.Fatalf("final value: %s, want %s", join(Strings(got)), want)
	}
	var all []int64
	for _, s := range seen {
		all = append(all, s...)
	}
	slices.Sort(all)
	for i, v := range all {
		if v != int64(i+1) {
			t.Fatalf("increment results are not 1..%d: position %d holds %d", total, i, v)
		}
	}
}

// testIdemBatchAndReclaim checks that a repeated idempotency key is caught
// within one slice of events (one commit group), and that the janitor
// reclaims idempotency records once their retention has passed, leaving
// younger ones.
func testIdemBatchAndReclaim(t *testing.T, h *Harness) {
	ctx := context.Background()
	h.Options.IdemRetention = time.Minute
	evs := []pipeline.Event{
		Event(M(`"increment":"n","idem":"a"`), ``),
		Event(M(`"increment":"n","idem":"b"`), ``),
		Event(M(`"increment":"n","idem":"a"`), ``),
		Event(M(`"increment":"n","by":2,"idem":"a"`), ``),
		Event(M(`"get":"n"`), ``),
	}
	got := h.DoSlice("i", evs...)
	want := []string{
		op("increment", "n", `1`, false),
		op("increment", "n", `2`, true),
		op("increment", "n", `1`, false, `,"replayed":true`),
		"", // conflict, checked below
		get("n", `2`, true),
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events: %s", len(got), join(Strings(got)))
	}
	for i, g := range got {
		if i == 3 {
			if g.Port != "err" || !strings.Contains(gjson.GetBytes(g.Event.Meta, "error").String(), kv.ErrIdemConflict.Error()) {
				t.Errorf("event 3: %s, want an idempotency conflict", g)
			}
			continue
		}
		if s := Strings(got[i : i+1])[0]; s != want[i] {
			t.Errorf("event %d: %s, want %s", i, s, want[i])
		}
	}
	h.Clock.Advance(30 * time.Second)
	h.Do("i", M(`"increment":"n","idem":"c"`), ``)
	if n, err := h.Conn("i").Reclaim(ctx); err != nil || n != 0 {
		t.Fatalf("Reclaim within retention = %d, %v; want 0", n, err)
	}
	h.Clock.Advance(30 * time.Second)
	if n, err := h.Conn("i").Reclaim(ctx); err != nil || n != 2 {
		t.Fatalf("Reclaim = %d, %v; want 2 (a, b)", n, err)
	}
	// a is forgotten and applies again; c is still remembered.
	if g := Strings(h.Do("i", M(`"increment":"n","idem":"a"`), ``))[0]; g != op("increment", "n", `4`, true) {
		t.Errorf("a after its retention: %s", g)
	}
	if g := Strings(h.Do("i", M(`"increment":"n","idem":"c"`), ``))[0]; g != op("increment", "n", `3`, true, `,"replayed":true`) {
		t.Errorf("c within its retention: %s", g)
	}
}
