package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/pipeline"
)

// TestOnExpiredReportsBeforeDeleting: a reclaim pass reports the expired
// keys with their last values before deleting them, deletes nothing when
// the report fails (the next pass reports the same keys again), and does
// not report a key whose expiry a later write superseded.
func TestOnExpiredReportsBeforeDeleting(t *testing.T) {
	clock := kvtest.NewClock()
	var reports []string
	fail := true
	c, err := kv.New(openPebble(t, t.TempDir()), kv.Options{
		Namespace: "ns", Now: clock.Now, ReclaimInterval: -1,
		OnExpired: func(_ context.Context, keys []kv.ExpiredKey) error {
			var r []string
			for _, k := range keys {
				r = append(r, fmt.Sprintf("%s/%s=%s@%d", k.Namespace, k.Key, k.Value, k.ExpireAt-kvtest.Start))
			}
			reports = append(reports, strings.Join(r, " "))
			if fail {
				return errors.New("sink down")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	process(t, c,
		kvtest.Event(kvtest.M(`"put":"a","ttl":1`), `{"v":1}`),
		kvtest.Event(kvtest.M(`"increment":"b","ttl":2`), ``),
		kvtest.Event(kvtest.M(`"put":"c"`), `3`),
		kvtest.Event(kvtest.M(`"put":"d","ttl":1`), `4`),
		kvtest.Event(kvtest.M(`"put":"d"`), `5`), // no expiry any more
		kvtest.Event(kvtest.M(`"put":"e","ttl":60`), `6`),
	)
	if n, err := c.Reclaim(context.Background()); n != 0 || err != nil || len(reports) != 0 {
		t.Fatalf("before expiry: %d, %v, reports %q", n, err, reports)
	}
	clock.Advance(2 * time.Second)
	n, err := c.Reclaim(context.Background())
	if n != 0 || err == nil || !strings.Contains(err.Error(), "sink down") || !strings.Contains(err.Error(), "2 expired keys") {
		t.Fatalf("failing report: %d, %v", n, err)
	}
	fail = false
	if n, err := c.Reclaim(context.Background()); n != 2 || err != nil {
		t.Fatalf("second pass: %d, %v", n, err)
	}
	if n, err := c.Reclaim(context.Background()); n != 0 || err != nil {
		t.Fatalf("third pass: %d, %v", n, err)
	}
	want := []string{`ns/a={"v":1}@1000 ns/b=1@2000`, `ns/a={"v":1}@1000 ns/b=1@2000`}
	if strings.Join(reports, "\n") != strings.Join(want, "\n") {
		t.Fatalf("reports:\n%s\nwant:\n%s", strings.Join(reports, "\n"), strings.Join(want, "\n"))
	}
	got := process(t, c, kvtest.Event(kvtest.M(`"scan":""`), ``))
	if len(got) != 3 {
		t.Fatalf("live keys after reclaiming: %v", kvtest.Strings(got))
	}
}

// sinkFunc is a graph sink calling fn for each slice.
type sinkFunc func(events []pipeline.Event) error

func (f sinkFunc) Process(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
	return f(events)
}

// runExpiryGraph runs input -> store, store/expired -> sink over the
// store in dir, the sink calling fn, and returns Graph.Run's error.
func runExpiryGraph(t *testing.T, dir string, input []pipeline.Event, fn func([]pipeline.Event) error) error {
	t.Helper()
	c, err := kv.New(openPebble(t, dir), kv.Options{Namespace: "ns", ExpiredEvents: true, ReclaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	g := pipeline.New(pipeline.Options{})
	steps := []error{
		g.AddSource("input", pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
			for _, ev := range input {
				emit.Emit(pipeline.PortOut, ev)
			}
			return emit.Flush(ctx)
		}), pipeline.PortOut),
		g.AddProcessor("store", c, kv.Ports()...),
		g.AddSource("store:expired", c.ExpirySource(), kv.PortExpired),
		g.AddProcessor("sink", sinkFunc(fn)),
		g.Link("input", pipeline.PortOut, "store"),
		g.Link("store:expired", kv.PortExpired, "sink"),
	}
	for _, err := range steps {
		if err != nil {
			t.Fatal(err)
		}
	}
	return g.Run(context.Background())
}

// TestExpirySourceAtLeastOnce: the expired port emits each expired key
// with its last value when the connector's input ends; a key is deleted
// only once its event is done, so when the flow fails before, the next
// run emits it again.
func TestExpirySourceAtLeastOnce(t *testing.T) {
	dir := t.TempDir()
	input := []pipeline.Event{
		kvtest.Event(kvtest.M(`"put":"a","expire_at":1000`), `{"v":1}`), // expired at once
		kvtest.Event(kvtest.M(`"put":"b","expire_at":2000`), `2`),
		kvtest.Event(kvtest.M(`"put":"c","ttl":3600`), `3`),
	}
	var (
		mu  sync.Mutex
		got []string
	)
	record := func(fail bool) func([]pipeline.Event) error {
		return func(events []pipeline.Event) error {
			mu.Lock()
			defer mu.Unlock()
			for _, ev := range events {
				got = append(got, string(ev.AppendJSON(nil)))
			}
			if fail {
				return errors.New("sink failed")
			}
			return nil
		}
	}
	want := []string{
		`{"data":{"namespace":"ns","key":"a","value":{"v":1},"expired_at":1000},"meta":{}}`,
		`{"data":{"namespace":"ns","key":"b","value":2,"expired_at":2000},"meta":{}}`,
	}
	err := runExpiryGraph(t, dir, input, record(true))
	if err == nil || !strings.Contains(err.Error(), "sink failed") {
		t.Fatalf("first run: %v", err)
	}
	// Its first pass may run before or after the puts: it emits both
	// keys, or none and then the last pass both.
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("first run emitted:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The events were not handled: the keys are still there, and the next
	// run, with no input, emits them again and then deletes them.
	got = nil
	if err := runExpiryGraph(t, dir, nil, record(false)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("second run emitted:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got = nil
	if err := runExpiryGraph(t, dir, nil, record(false)); err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("third run emitted again: %s", got)
	}
}

// TestExpirySourceOutlivesClose: a source handed out keeps the Backend
// open after the Connector's Close, makes its passes when run, and the
// Backend is closed when the source is closed too.
func TestExpirySourceOutlivesClose(t *testing.T) {
	b := &countingBackend{Backend: openPebble(t, t.TempDir())}
	c, err := kv.New(b, kv.Options{Namespace: "ns", ExpiredEvents: true, ReclaimInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	process(t, c, kvtest.Event(kvtest.M(`"put":"a","expire_at":5`), `1`))
	src := c.ExpirySource()
	if src2 := c.ExpirySource(); src2 != src {
		t.Fatal("ExpirySource returned two sources")
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b.closed.Load() != 0 {
		t.Fatal("Close closed the Backend while the expiry source holds it")
	}
	var got []string
	g := pipeline.New(pipeline.Options{})
	for _, err := range []error{
		g.AddSource("expired", src, kv.PortExpired),
		g.AddProcessor("sink", sinkFunc(func(events []pipeline.Event) error {
			for _, ev := range events {
				got = append(got, string(ev.Data))
			}
			return nil
		})),
		g.Link("expired", kv.PortExpired, "sink"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := `{"namespace":"ns","key":"a","value":1,"expired_at":5}`; strings.Join(got, "\n") != want {
		t.Fatalf("emitted %q, want %s", got, want)
	}
	if b.closed.Load() != 1 {
		t.Fatal("the Backend is still open once the connector and its source are closed")
	}
	c2, err := kv.New(openPebble(t, t.TempDir()), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(context.Background())
	if c2.ExpirySource() != nil {
		t.Error("ExpirySource without ExpiredEvents is not nil")
	}
}
