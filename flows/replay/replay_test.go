package replay

import (
	"bytes"
	"context"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

// TestDeterministicOrder runs a graph whose two sinks race each other and
// checks that the captured output is ordered by input line, then sink.
func TestDeterministicOrder(t *testing.T) {
	for run := 0; run < 5; run++ {
		var out bytes.Buffer
		capture := NewCapture(&out)
		inner := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
			for i := 1; i <= 300; i++ {
				emit.Emit(pipeline.PortOut, pipeline.Event{Data: []byte(strconv.Itoa(i))})
				if i%7 == 0 {
					if err := emit.Flush(ctx); err != nil {
						return err
					}
				}
			}
			emit.Emit(pipeline.PortErr, pipeline.Event{Data: []byte(`"bad line"`)})
			return nil
		})
		src := &WindowedSource{Inner: inner, Capture: capture}
		g := pipeline.New(pipeline.Options{})
		jitter := func(ctx context.Context, b []pipeline.Event, e pipeline.Emitter) error {
			if len(b)%2 == 0 {
				time.Sleep(50 * time.Microsecond)
			}
			for _, ev := range b {
				e.Emit(pipeline.PortOut, ev)
			}
			return nil
		}
		must(t, g.AddSource("src", src, pipeline.PortOut, pipeline.PortErr))
		must(t, g.AddProcessor("slow", pipeline.ProcessorFunc(jitter), pipeline.PortOut))
		evens := capture.Sink("evens") // first: orders before "all"
		must(t, g.AddProcessor("evens", evens))
		must(t, g.AddProcessor("all", capture.Sink("all")))
		must(t, g.Link("src", pipeline.PortOut, "slow"))
		must(t, g.Link("src", pipeline.PortErr, "all"))
		must(t, g.Link("slow", pipeline.PortOut, "all"))
		must(t, g.Link("slow", pipeline.PortOut, "evens"))
		must(t, g.Run(context.Background()))
		must(t, capture.Release())

		var want strings.Builder
		for i := 1; i <= 300; i++ {
			want.WriteString(`{"sink":"evens","data":` + strconv.Itoa(i) + `,"meta":{}}` + "\n")
			want.WriteString(`{"sink":"all","data":` + strconv.Itoa(i) + `,"meta":{}}` + "\n")
		}
		want.WriteString(`{"sink":"all","data":"bad line","meta":{}}` + "\n")
		if out.String() != want.String() {
			t.Fatalf("run %d: output not in deterministic order:\n%.400s", run, out.String())
		}
		if capture.Written() != 601 {
			t.Fatalf("Written = %d", capture.Written())
		}
	}
}

func TestAppendLineEscapesSinkName(t *testing.T) {
	got := string(AppendLine(nil, "a\"b\\c\n", pipeline.Event{Data: []byte(`1`), Meta: []byte(`{"x":2}`)}))
	want := `{"sink":"a\"b\\c\n","data":1,"meta":{"x":2}}` + "\n"
	if got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

// TestCaptureEscapesSinkName checks the lines a capture writes for a sink
// whose name needs escaping in JSON: the start of its lines is escaped
// once, when the sink is made, as AppendLine escapes it for every line.
func TestCaptureEscapesSinkName(t *testing.T) {
	var out bytes.Buffer
	capture := NewCapture(&out)
	const name = "a\"b\\c\n"
	ev := pipeline.Event{Data: []byte(`1`), Meta: []byte(`{"x":2}`)}
	sink := capture.Sink(name)
	must(t, sink.Process(context.Background(), []pipeline.Event{ev}, nil))
	must(t, capture.Release())
	if want := string(AppendLine(nil, name, ev)); out.String() != want {
		t.Fatalf("got %s want %s", out.String(), want)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestSourceWaitsForRoom checks that the replay's source does not run
// ahead of the flow by more than MaxUnwritten input events (plus the
// slice it is emitting), however deep the graph's queues are.
func TestSourceWaitsForRoom(t *testing.T) {
	const limit, slice, total = 2048, 256, 40_000
	var out bytes.Buffer
	capture := NewCapture(&out)
	inner := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for i := 1; i <= total; i++ {
			emit.Emit(pipeline.PortOut, pipeline.Event{Data: []byte(strconv.Itoa(i))})
			if i%slice == 0 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	})
	src := &WindowedSource{Inner: inner, Capture: capture, MaxUnwritten: limit}
	g := pipeline.New(pipeline.Options{QueueDepth: 1024})
	var most uint64
	var slots int // most slots of the capture's queue of unwritten events
	slow := func(_ context.Context, b []pipeline.Event, e pipeline.Emitter) error {
		most = max(most, capture.unwrittenCount())
		capture.mu.Lock()
		slots = max(slots, len(capture.unwritten.buf))
		capture.mu.Unlock()
		time.Sleep(20 * time.Microsecond)
		for _, ev := range b {
			e.Emit(pipeline.PortOut, ev)
		}
		return nil
	}
	must(t, g.AddSource("src", src, pipeline.PortOut))
	must(t, g.AddProcessor("slow", pipeline.ProcessorFunc(slow), pipeline.PortOut))
	must(t, g.AddProcessor("all", capture.Sink("all")))
	must(t, g.Link("src", pipeline.PortOut, "slow"))
	must(t, g.Link("slow", pipeline.PortOut, "all"))
	must(t, g.Run(context.Background()))
	must(t, capture.Release())
	if capture.Written() != total {
		t.Fatalf("Written = %d, want %d", capture.Written(), total)
	}
	if most > limit+trackChunk {
		t.Errorf("%d input events were in the flow at once, want at most %d", most, limit+trackChunk)
	}
	// The capture's queue of unwritten input events reuses its slots: it
	// grows to the most in flight at once (doubling), not with the input.
	if slots > 2*(limit+trackChunk) {
		t.Errorf("the capture's queue grew to %d slots for at most %d input events in flight", slots, limit+trackChunk)
	}
	// The source is woken when there is room, not at every write: once
	// per wait (a signal left over from a wait that found room by itself
	// may add one).
	if capture.wakeups > capture.waits+1 {
		t.Errorf("the source waited %d times and was woken %d times", capture.waits, capture.wakeups)
	}
	t.Logf("at most %d input events in the flow; %d waits, %d wakeups", most, capture.waits, capture.wakeups)
}

// TestSourceDoubleBuffers checks the default bound on unwritten events
// with a source flushing slices of SliceEvents, as flowrun replay's does:
// each slice reaches the flow whole (a kv store gets it as one request),
// and the source waits while two slices are in the flow, so that at most
// those two and the one being emitted are unwritten.
func TestSourceDoubleBuffers(t *testing.T) {
	const total = 20 * SliceEvents
	var out bytes.Buffer
	capture := NewCapture(&out)
	inner := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for i := 1; i <= total; i++ {
			emit.Emit(pipeline.PortOut, pipeline.Event{Data: []byte(strconv.Itoa(i))})
			if i%SliceEvents == 0 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	})
	src := &WindowedSource{Inner: inner, Capture: capture}
	g := pipeline.New(pipeline.Options{QueueDepth: 64, MaxCoalesce: 1})
	var most uint64
	var sizes []int
	slow := func(_ context.Context, b []pipeline.Event, e pipeline.Emitter) error {
		most = max(most, capture.unwrittenCount())
		sizes = append(sizes, len(b))
		time.Sleep(time.Millisecond)
		for _, ev := range b {
			e.Emit(pipeline.PortOut, ev)
		}
		return nil
	}
	must(t, g.AddSource("src", src, pipeline.PortOut))
	must(t, g.AddProcessor("slow", pipeline.ProcessorFunc(slow), pipeline.PortOut))
	must(t, g.AddProcessor("all", capture.Sink("all")))
	must(t, g.Link("src", pipeline.PortOut, "slow"))
	must(t, g.Link("slow", pipeline.PortOut, "all"))
	must(t, g.Run(context.Background()))
	must(t, capture.Release())
	if capture.Written() != total {
		t.Fatalf("Written = %d, want %d", capture.Written(), total)
	}
	for i, n := range sizes {
		if n != SliceEvents {
			t.Fatalf("slice %d of the flow holds %d events, want %d", i, n, SliceEvents)
		}
	}
	if most > 3*SliceEvents {
		t.Errorf("%d input events were unwritten at once, want at most %d (three slices)", most, 3*SliceEvents)
	}
}

// TestOrderAcrossTrackers feeds several trackers' worth of input events
// through a processor that reverses each slice it gets, so that a sink's
// slice holds events of two trackers, interleaved, and checks that the
// output is still in input order.
func TestOrderAcrossTrackers(t *testing.T) {
	const total = 3*trackChunk + 100
	for _, flushEvery := range []int{trackChunk / 3, trackChunk, 2*trackChunk + 1} {
		var out bytes.Buffer
		capture := NewCapture(&out)
		inner := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
			for i := 1; i <= total; i++ {
				emit.Emit(pipeline.PortOut, pipeline.Event{Data: []byte(strconv.Itoa(i))})
				if i%flushEvery == 0 {
					if err := emit.Flush(ctx); err != nil {
						return err
					}
				}
			}
			return nil
		})
		src := &WindowedSource{Inner: inner, Capture: capture, MaxUnwritten: 4 * trackChunk}
		g := pipeline.New(pipeline.Options{})
		spanned := false
		reverse := func(_ context.Context, b []pipeline.Event, e pipeline.Emitter) error {
			if len(b) > 1 && b[0].Origin().Tracker() != b[len(b)-1].Origin().Tracker() {
				spanned = true
			}
			for i := len(b) - 1; i >= 0; i-- {
				e.Emit(pipeline.PortOut, b[i])
			}
			return nil
		}
		must(t, g.AddSource("src", src, pipeline.PortOut))
		must(t, g.AddProcessor("reverse", pipeline.ProcessorFunc(reverse), pipeline.PortOut))
		must(t, g.AddProcessor("all", capture.Sink("all")))
		must(t, g.Link("src", pipeline.PortOut, "reverse"))
		must(t, g.Link("reverse", pipeline.PortOut, "all"))
		must(t, g.Run(context.Background()))
		must(t, capture.Release())

		var want strings.Builder
		for i := 1; i <= total; i++ {
			want.WriteString(`{"sink":"all","data":` + strconv.Itoa(i) + `,"meta":{}}` + "\n")
		}
		if out.String() != want.String() {
			t.Fatalf("flush every %d: output not in input order:\n%.400s", flushEvery, out.String())
		}
		if flushEvery > trackChunk && !spanned {
			t.Errorf("flush every %d: no slice held events of two trackers; the test does not test what it says", flushEvery)
		}
	}
}

// TestRing checks the queue of unwritten entries against a slice doing the
// same, across growth and wrap-around.
func TestRing(t *testing.T) {
	var r ring
	var model []int
	next := 0
	for step := range 20_000 {
		switch {
		case step%7 < 4: // add an entry a little ahead of the last one
			k := len(model) + step%3
			for len(model) <= k {
				model = append(model, -1)
			}
			model[k] = next
			r.at(k).first.sink = next
			r.at(k).n = 1
			next++
		case len(model) > 0:
			if got := r.at(0); got.n == 1 && got.first.sink != model[0] || got.n == 0 && model[0] != -1 {
				t.Fatalf("step %d: entry 0 holds %d (n %d), want %d", step, got.first.sink, got.n, model[0])
			}
			r.pop()
			model = model[1:]
		}
		if r.n != len(model) {
			t.Fatalf("step %d: %d entries, want %d", step, r.n, len(model))
		}
	}
	t.Logf("buffer of %d entries", len(r.buf))
}

// BenchmarkCapture replays events through a source and one capture sink,
// with no other node: the cost of tracking, ordering and writing.
func BenchmarkCapture(b *testing.B) {
	capture := NewCapture(io.Discard)
	data := []byte(`{"v":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	meta := []byte(`{"kv":{"op":"put","key":"k000001"},"correlation":1}`)
	inner := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for i := range b.N {
			emit.Emit(pipeline.PortOut, pipeline.Event{Data: data, Meta: meta})
			if i%1024 == 1023 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	})
	g := pipeline.New(pipeline.Options{})
	must(b, g.AddSource("src", &WindowedSource{Inner: inner, Capture: capture}, pipeline.PortOut))
	must(b, g.AddProcessor("all", capture.Sink("all")))
	must(b, g.Link("src", pipeline.PortOut, "all"))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	must(b, g.Run(context.Background()))
	must(b, capture.Release())
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	if capture.Written() != uint64(b.N) {
		b.Fatalf("Written = %d, want %d", capture.Written(), b.N)
	}
}
