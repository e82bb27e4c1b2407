package kv_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

func openPebble(t *testing.T, dir string) kv.Backend {
	s, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatalf("pebblestore.Open: %v", err)
	}
	return s
}

// The command set over the Pebble backend: the same table memstore runs,
// plus the restart checks.
func TestPebbleConformance(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.Backend { return openPebble(t, t.TempDir()) })
}

func TestPebblePersistence(t *testing.T) {
	kvtest.RunPersistent(t, openPebble)
}

// TestPebbleClearMillion loads a million keys through the connector, which
// takes minutes under the race detector; there it clears 50,000 instead.
func TestPebbleClearMillion(t *testing.T) {
	testClearMillion(t, openPebble(t, t.TempDir()), raceEnabled)
}

// TestPebbleLargeReadOnlyBatch runs read-only batches large enough to be
// read by two goroutines while another connector writes to the same
// store, and checks every result is in input order with its correlation.
func TestPebbleLargeReadOnlyBatch(t *testing.T) {
	h := kvtest.NewHarness(t, openPebble(t, t.TempDir()))
	const n = 700
	var puts []pipeline.Event
	for i := range n {
		if i%7 != 3 { // every seventh key stays absent
			puts = append(puts, kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"k%d"`, i)), fmt.Sprint(i)))
		}
	}
	h.DoSlice("ns", puts...)
	writer := h.Conn("other")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var rec kvtest.Recorder
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			ev := kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"w%d"`, j%50)), fmt.Sprint(j))
			if err := writer.Process(context.Background(), []pipeline.Event{ev}, &rec); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); <-done }()
	for round := range 3 {
		var gets []pipeline.Event
		for i := range n {
			op := "get"
			if i%5 == 0 {
				op = "exists"
			}
			gets = append(gets, kvtest.Event(kvtest.MC(fmt.Sprintf(`"%s":"k%d"`, op, i), fmt.Sprint(i)), ""))
		}
		got := h.DoSlice("ns", gets...)
		if len(got) != n {
			t.Fatalf("round %d: %d results for %d reads", round, len(got), n)
		}
		for i, e := range got {
			want := fmt.Sprint(i)
			switch {
			case i%5 == 0:
				want = fmt.Sprint(i%7 != 3)
			case i%7 == 3:
				want = "null"
			}
			if e.Port != pipeline.PortOut || string(e.Event.Data) != want || gjson.GetBytes(e.Event.Meta, "correlation").Raw != fmt.Sprint(i) {
				t.Fatalf("round %d, result %d: %s, want data %s", round, i, e, want)
			}
		}
	}
}

// TestPebbleReadHints checks that the connector tells a pebblestore the
// keys of each slice's reads, for slices the writer runs (increments,
// through SubmitHinted) and slices read past it (gets, through
// ViewHinted), and that the results are those of the commands.
func TestPebbleReadHints(t *testing.T) {
	ctx := context.Background()
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kv.New(store, kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	const keys = 50
	slice := func(op string) []pipeline.Event {
		var evs []pipeline.Event
		for i := range keys {
			evs = append(evs, kvtest.Event(kvtest.M(fmt.Sprintf(`%q:"k%02d"`, op, i)), ""))
		}
		return evs
	}
	for round := 1; round <= 2; round++ {
		em := &countEmitter{}
		if err := conn.Process(ctx, slice("increment"), em); err != nil || em.out != keys {
			t.Fatalf("increments: %v, %d results, first error %s", err, em.out, em.firstErr)
		}
	}
	em := &countEmitter{}
	if err := conn.Process(ctx, slice("get"), em); err != nil || em.out != keys {
		t.Fatalf("gets: %v, %d results, first error %s", err, em.out, em.firstErr)
	}
	if n := store.RowCacheStats().Prefetched; n != 3*keys {
		t.Errorf("%d keys prefetched for 3 slices of %d commands", n, keys)
	}
	capture := &captureEmitter{}
	if err := conn.Process(ctx, []pipeline.Event{kvtest.Event(kvtest.M(`"get":"k07"`), "")}, capture); err != nil {
		t.Fatal(err)
	}
	if want := pipeline.PortOut + " 2"; len(capture.got) != 1 || capture.got[0] != want {
		t.Errorf("k07 after two increments: %q, want %q", capture.got, want)
	}
}

// captureEmitter keeps each event's port and data.
type captureEmitter struct{ got []string }

func (c *captureEmitter) Emit(port string, ev pipeline.Event) {
	c.got = append(c.got, port+" "+string(ev.Data))
}
