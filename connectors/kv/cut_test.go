package kv_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// runStream runs events through a flow whose kv node has several slices
// in flight, flushing after every flushEvery events, and returns the
// result lines ("port data meta") of each correlation, in arrival order.
func runStream(t *testing.T, b kv.Backend, opts kv.Options, events []pipeline.Event, flushEvery int) map[int64]string {
	t.Helper()
	conn, err := kv.New(b, opts)
	if err != nil {
		t.Fatal(err)
	}
	src := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for i, ev := range events {
			emit.Emit(pipeline.PortOut, ev)
			if (i+1)%flushEvery == 0 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	})
	sink := runThrough(t, src, conn)
	got := map[int64]string{}
	for i, ev := range sink.events {
		corr := gjson.GetBytes(ev.Meta, "correlation").Int()
		got[corr] += fmt.Sprintf("%s %s %s\n", sink.ports[i], ev.Data, ev.Meta)
	}
	return got
}

// TestCutBatchesKeepInputOrder runs one stream of writes and long reads
// through Pebble with a work budget so small that most submissions to the
// writer are cut off, and through memstore, whose slices are never cut:
// every result must be the same, so cutting neither reorders commands,
// nor runs one twice, nor loses one.
func TestCutBatchesKeepInputOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var events []pipeline.Event
	for i := range 3000 {
		k := rng.IntN(12)
		var cmd string
		switch rng.IntN(6) {
		case 0:
			cmd = fmt.Sprintf(`{"put":"k%02d"}`, k)
		case 1:
			cmd = fmt.Sprintf(`{"increment":"n%02d"}`, k)
		case 2:
			cmd = fmt.Sprintf(`{"get":"k%02d"}`, k)
		case 3:
			cmd = `{"count":"k"}`
		case 4:
			cmd = `{"scan":"k","limit":5}`
		default:
			cmd = fmt.Sprintf(`{"delete":"k%02d"}`, k)
		}
		events = append(events, pipeline.Event{
			Meta: fmt.Appendf(nil, `{"kv":%s,"correlation":%d}`, cmd, i),
			Data: fmt.Appendf(nil, "%d", i),
		})
	}
	// cutKeys is a quarter of the budget: 3 keys, so a count of the 12
	// keys (or a scan) cuts the rest of its submission off.
	opts := kv.Options{ReclaimInterval: -1, MaxKeysVisited: 12}
	want := runStream(t, memstore.New(), opts, events, 7)
	got := runStream(t, openPebble(t, t.TempDir()), opts, events, 7)
	if len(got) != len(want) {
		t.Fatalf("results for %d correlations on pebble, %d on memstore", len(got), len(want))
	}
	for corr := range int64(len(events)) {
		if got[corr] != want[corr] {
			t.Fatalf("correlation %d: pebble %s, memstore %s", corr, got[corr], want[corr])
		}
	}
}

// TestLongReadsDoNotHoldTheWriter submits, through one connector, a slice
// of many long reads next to a write (so the slice runs in the store's
// writer), and meanwhile a put through another connector on the same
// store: the put must not wait for the whole slice, only for about one
// event's work, since the slice is cut off after a quarter of an event's
// budget and the rest runs after commands queued meanwhile.
func TestLongReadsDoNotHoldTheWriter(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a store of 60,000 keys")
	}
	pool := pebblestore.NewPool()
	dir := t.TempDir()
	open := func(ns string) *kv.Connector {
		b, err := pool.Open(dir, pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := kv.New(b, kv.Options{Namespace: ns, ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	heavy, light := open("heavy"), open("light")
	ctx := context.Background()
	var fill []pipeline.Event
	for i := range 60000 {
		fill = append(fill, pipeline.Event{Meta: fmt.Appendf(nil, `{"kv":{"put":"k%06d"}}`, i), Data: []byte("1")})
		if len(fill) == 1000 {
			if err := heavy.Process(ctx, fill, emitFunc(func(string, pipeline.Event) {})); err != nil {
				t.Fatal(err)
			}
			fill = fill[:0]
		}
	}
	// 150 counts of 60,000 keys each: 9 million keys, many times the
	// 25,000 a submission may visit before it is cut.
	events := []pipeline.Event{{Meta: []byte(`{"kv":{"put":"w"}}`), Data: []byte("1")}}
	for range 150 {
		events = append(events, pipeline.Event{Meta: []byte(`{"kv":{"count":"k"}}`)})
	}
	var (
		wg        sync.WaitGroup
		heavyTook time.Duration
		heavyErrs []string
		heavyMu   sync.Mutex
		started   = make(chan struct{})
		lightTook time.Duration
		lightErr  string
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		t0 := time.Now()
		close(started)
		_ = heavy.Process(ctx, events, emitFunc(func(port string, ev pipeline.Event) {
			if port != pipeline.PortOut {
				heavyMu.Lock()
				heavyErrs = append(heavyErrs, string(ev.Meta))
				heavyMu.Unlock()
			}
		}))
		heavyTook = time.Since(t0)
	}()
	<-started
	time.Sleep(20 * time.Millisecond) // the heavy slice is in the writer
	t0 := time.Now()
	_ = light.Process(ctx, []pipeline.Event{{Meta: []byte(`{"kv":{"put":"x"}}`), Data: []byte("1")}},
		emitFunc(func(port string, ev pipeline.Event) {
			if port != pipeline.PortOut {
				lightErr = string(ev.Meta)
			}
		}))
	lightTook = time.Since(t0)
	wg.Wait()
	if len(heavyErrs) != 0 || lightErr != "" {
		t.Fatalf("errors: heavy %s, light %s", strings.Join(heavyErrs, "; "), lightErr)
	}
	t.Logf("heavy events %v, a put of another connector meanwhile %v", heavyTook, lightTook)
	if lightTook > heavyTook/3 {
		t.Errorf("a put of another connector waited %v of the heavy events's %v: the events held the writer", lightTook, heavyTook)
	}
}

// emitFunc adapts a function to pipeline.Emitter.
type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }
