package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countSource emits n events whose data is their index, flushing every
// per events.
func countSource(n, per int) Source {
	return SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for i := 0; i < n; i++ {
			if ctx.Err() != nil {
				return nil
			}
			emit.Emit(PortOut, Event{Data: []byte(strconv.Itoa(i))})
			if (i+1)%per == 0 {
				if err := emit.Flush(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// collector is a sink recording what it receives.
type collector struct {
	mu     sync.Mutex
	events []Event
	closed bool
}

func (c *collector) Process(_ context.Context, events []Event, _ Emitter) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, events...)
	return nil
}

func (c *collector) Close(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *collector) datas() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		out = append(out, string(e.Data))
	}
	return out
}

// evenOdd routes even numbers to out and odd ones to err.
var evenOdd = ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
	for _, ev := range events {
		n, _ := strconv.Atoi(string(ev.Data))
		port := PortOut
		if n%2 == 1 {
			port = PortErr
		}
		emit.Emit(port, ev.Derive(ev.Data, []byte(`{"p":"`+port+`"}`)))
	}
	return nil
})

func TestLinearAndFanOut(t *testing.T) {
	g := New(Options{QueueDepth: 1})
	evens, odds, all := &collector{}, &collector{}, &collector{}
	must(t, g.AddSource("src", countSource(1000, 7), PortOut))
	must(t, g.AddProcessor("split", evenOdd, PortOut, PortErr))
	must(t, g.AddProcessor("evens", evens))
	must(t, g.AddProcessor("odds", odds))
	must(t, g.AddProcessor("all", all))
	must(t, g.Link("src", PortOut, "split"))
	must(t, g.Link("split", PortOut, "evens"))
	must(t, g.Link("split", PortErr, "odds"))
	must(t, g.Link("split", PortOut, "all"))
	must(t, g.Link("split", PortErr, "all"))
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(evens.events) != 500 || len(odds.events) != 500 || len(all.events) != 1000 {
		t.Fatalf("got %d evens, %d odds, %d all", len(evens.events), len(odds.events), len(all.events))
	}
	for i, d := range evens.datas() {
		if d != strconv.Itoa(2*i) {
			t.Fatalf("evens[%d] = %s: order not kept", i, d)
		}
	}
	if !evens.closed || !odds.closed || !all.closed {
		t.Fatal("sinks not closed")
	}
	counts := map[string]uint64{}
	for _, c := range g.Counts() {
		counts[c.Node+"/"+c.Port] = c.Events
	}
	if counts["src/out"] != 1000 || counts["split/in"] != 1000 || counts["split/err"] != 500 || counts["all/in"] != 1000 {
		t.Fatalf("counts = %v", counts)
	}
}

func TestFanInKeepsPerSourceOrder(t *testing.T) {
	g := New(Options{})
	sink := &collector{}
	must(t, g.AddSource("a", countSource(2000, 3), PortOut))
	must(t, g.AddSource("b", countSource(2000, 5), PortOut))
	must(t, g.AddProcessor("tagA", tag("a"), PortOut))
	must(t, g.AddProcessor("tagB", tag("b"), PortOut))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("a", PortOut, "tagA"))
	must(t, g.Link("b", PortOut, "tagB"))
	must(t, g.Link("tagA", PortOut, "sink"))
	must(t, g.Link("tagB", PortOut, "sink"))
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	next := map[string]int{}
	for _, e := range sink.events {
		src := string(e.Meta)
		if string(e.Data) != strconv.Itoa(next[src]) {
			t.Fatalf("source %s: got %s, want %d", src, e.Data, next[src])
		}
		next[src]++
	}
	if next["a"] != 2000 || next["b"] != 2000 {
		t.Fatalf("received %v", next)
	}
}

func tag(name string) Processor {
	return ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
		for _, ev := range events {
			emit.Emit(PortOut, ev.Derive(ev.Data, []byte(name)))
		}
		return nil
	})
}

// TestCancelDrains cancels while events are queued behind a slow sink and
// checks that every event the source flushed is still delivered.
func TestCancelDrains(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var flushed atomic.Int64
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for i := 0; ; i++ {
			if ctx.Err() != nil {
				return nil
			}
			emit.Emit(PortOut, Event{Data: []byte(strconv.Itoa(i))})
			if err := emit.Flush(ctx); err != nil {
				return err
			}
			flushed.Add(1)
			if i == 50 {
				cancel()
			}
		}
	})
	slow := &collector{}
	g := New(Options{QueueDepth: 4})
	must(t, g.AddSource("src", src, PortOut))
	must(t, g.AddProcessor("slow", ProcessorFunc(func(ctx context.Context, b []Event, e Emitter) error {
		time.Sleep(time.Millisecond)
		if ctx.Err() != nil {
			return fmt.Errorf("processor saw cancelled context during drain: %w", ctx.Err())
		}
		return slow.Process(ctx, b, e)
	}), PortOut))
	must(t, g.AddProcessor("sink", &collector{}))
	must(t, g.Link("src", PortOut, "slow"))
	must(t, g.Link("slow", PortOut, "sink"))
	if err := g.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if int64(len(slow.events)) != flushed.Load() {
		t.Fatalf("flushed %d events, processed %d", flushed.Load(), len(slow.events))
	}
}

func TestNodeFailureStopsGraph(t *testing.T) {
	boom := errors.New("boom")
	g := New(Options{QueueDepth: 1})
	must(t, g.AddSource("src", countSource(1_000_000, 1), PortOut))
	must(t, g.AddProcessor("bad", ProcessorFunc(func(_ context.Context, b []Event, _ Emitter) error {
		for _, ev := range b {
			if string(ev.Data) == "10" {
				return boom
			}
		}
		return nil
	})))
	must(t, g.Link("src", PortOut, "bad"))
	done := make(chan error)
	go func() { done <- g.Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Fatalf("Run = %v, want boom", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("graph did not stop after a node failed")
	}
}

func TestBuildErrors(t *testing.T) {
	g := New(Options{})
	must(t, g.AddSource("src", countSource(1, 1), PortOut))
	must(t, g.AddProcessor("a", evenOdd, PortOut, PortErr))
	must(t, g.AddProcessor("b", evenOdd, PortOut))
	tests := []struct {
		from, port, to string
		want           error
	}{
		{"nope", PortOut, "a", ErrUnknownNode},
		{"src", PortOut, "nope", ErrUnknownNode},
		{"src", "sideways", "a", ErrUnknownPort},
		{"a", PortOut, "src", ErrUnknownPort},
	}
	for _, tt := range tests {
		if err := g.Link(tt.from, tt.port, tt.to); !errors.Is(err, tt.want) {
			t.Errorf("Link(%s/%s -> %s) = %v, want %v", tt.from, tt.port, tt.to, err, tt.want)
		}
	}
	if err := g.AddProcessor("a", evenOdd); !errors.Is(err, ErrDuplicateNode) {
		t.Errorf("duplicate = %v", err)
	}
	must(t, g.Link("src", PortOut, "a"))
	must(t, g.Link("a", PortOut, "b"))
	must(t, g.Link("b", PortOut, "a"))
	if err := g.Run(context.Background()); !errors.Is(err, ErrCycle) {
		t.Fatalf("Run with cycle = %v", err)
	}
}

func TestUnlinkedErrIsReported(t *testing.T) {
	var mu sync.Mutex
	var unlinked []string
	g := New(Options{Unlinked: func(node, port string, ev Event) {
		mu.Lock()
		unlinked = append(unlinked, node+"/"+port+":"+string(ev.Data))
		mu.Unlock()
	}})
	must(t, g.AddSource("src", countSource(2, 1), PortOut))
	must(t, g.AddProcessor("split", evenOdd, PortOut, PortErr))
	must(t, g.AddProcessor("sink", &collector{}))
	must(t, g.Link("src", PortOut, "split"))
	must(t, g.Link("split", PortOut, "sink"))
	must(t, g.Run(context.Background()))
	if fmt.Sprint(unlinked) != "[split/err:1]" {
		t.Fatalf("unlinked = %v", unlinked)
	}
}

func TestCompletionBeforeNextEvent(t *testing.T) {
	// A source that waits for each event's completion before emitting the
	// next finds everything derived from it already at the sink.
	g := New(Options{})
	sink := &collector{}
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for i := 0; i < 20; i++ {
			done := make(chan struct{})
			tr := NewTracker(1, nil, func() { close(done) })
			emit.Emit(PortOut, tr.Track(0, Event{Data: []byte(strconv.Itoa(i))}))
			if err := emit.Flush(ctx); err != nil {
				return err
			}
			<-done
			if n := len(sink.datas()); n != i+1 {
				return fmt.Errorf("after completion of event %d the sink has %d events", i, n)
			}
		}
		return nil
	})
	must(t, g.AddSource("src", src, PortOut))
	must(t, g.AddProcessor("slow", ProcessorFunc(func(_ context.Context, b []Event, e Emitter) error {
		time.Sleep(200 * time.Microsecond)
		for _, ev := range b {
			e.Emit(PortOut, ev)
		}
		return nil
	}), PortOut))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", PortOut, "slow"))
	must(t, g.Link("slow", PortOut, "sink"))
	must(t, g.Run(context.Background()))
}

func TestEventJSON(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{`{"data":{"a":1},"meta":{"kv":{"get":"x"}}}`, `{"data":{"a":1},"meta":{"kv":{"get":"x"}}}`, false},
		{`{"data":"x"}`, `{"data":"x","meta":{}}`, false},
		{`{"meta":null}`, `{"data":null,"meta":{}}`, false},
		{`{"data":1,"meta":[1]}`, "", true},
		{`{"data":`, "", true},
		{`[1]`, "", true},
	}
	for _, tt := range tests {
		var ev Event
		err := ev.UnmarshalJSON([]byte(tt.in))
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: err = %v", tt.in, err)
			continue
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("%s: err %v is not ErrInvalidEvent", tt.in, err)
			}
			continue
		}
		if got := string(ev.AppendJSON(nil)); got != tt.want {
			t.Errorf("%s: round trip = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCancelDuringFanOutFlushDeliversOnce cancels a source while its flush
// is blocked on the second of two linked nodes, and checks both nodes still
// receive every event exactly once.
func TestCancelDuringFanOutFlushDeliversOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for i := 0; i < 10; i++ {
			emit.Emit(PortOut, Event{Data: []byte(strconv.Itoa(i))})
		}
		go func() { time.Sleep(20 * time.Millisecond); cancel(); close(release) }()
		return emit.Flush(ctx)
	})
	fast, slow := &collector{}, &collector{}
	g := New(Options{QueueDepth: 1})
	must(t, g.AddSource("src", src, PortOut))
	// "block" holds the only slot of slow's queue until after the cancel,
	// so the source's flush to slow is blocked when ctx ends.
	must(t, g.AddProcessor("fast", fast))
	must(t, g.AddProcessor("slow", ProcessorFunc(func(ctx context.Context, b []Event, e Emitter) error {
		<-release
		return slow.Process(ctx, b, e)
	})))
	must(t, g.AddSource("blocker", SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		emit.Emit(PortOut, Event{Data: []byte(`"b1"`)})
		if err := emit.Flush(context.Background()); err != nil {
			return err
		}
		emit.Emit(PortOut, Event{Data: []byte(`"b2"`)})
		return emit.Flush(context.Background())
	}), PortOut))
	must(t, g.Link("blocker", PortOut, "slow"))
	must(t, g.Link("src", PortOut, "fast"))
	must(t, g.Link("src", PortOut, "slow"))
	must(t, g.Run(ctx))
	if len(fast.events) != 10 {
		t.Fatalf("fast got %d events, want 10", len(fast.events))
	}
	if len(slow.events) != 12 {
		t.Fatalf("slow got %d events, want 12 (10 + 2 from blocker)", len(slow.events))
	}
}

func TestQueueDepths(t *testing.T) {
	g := New(Options{QueueDepth: 2})
	release := make(chan struct{})
	sink := ProcessorFunc(func(ctx context.Context, _ []Event, _ Emitter) error {
		<-release
		return nil
	})
	if got := g.QueueDepths(); len(got) != 0 {
		t.Fatalf("empty graph: %+v", got)
	}
	must(t, g.AddSource("src", countSource(10, 1), PortOut)) // more than the sink can take in one coalesced call
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", PortOut, "sink"))
	if got := g.QueueDepths(); len(got) != 1 || got[0] != (QueueDepth{Node: "sink", Capacity: 2}) {
		t.Fatalf("before Run: %+v", got)
	}
	done := make(chan error, 1)
	go func() { done <- g.Run(context.Background()) }()
	// The sink holds what it took (at most the queue plus one slice), so
	// the remaining slices fill its queue.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := g.QueueDepths()
		if got[0].Slices == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue never filled: %+v", got)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := g.QueueDepths(); got[0].Slices != 0 {
		t.Fatalf("after Run: %+v", got)
	}
}

// TestCoalesceMergesQueuedSlices holds a node back while small slices
// queue up, then checks it receives them merged, in order, within the cap.
func TestCoalesceMergesQueuedSlices(t *testing.T) {
	release := make(chan struct{})
	var sizes []int
	var got []string
	g := New(Options{QueueDepth: 64, MaxCoalesce: 10})
	must(t, g.AddSource("src", countSource(40, 1), PortOut))
	must(t, g.AddProcessor("sink", ProcessorFunc(func(_ context.Context, b []Event, _ Emitter) error {
		<-release
		sizes = append(sizes, len(b))
		for _, ev := range b {
			got = append(got, string(ev.Data))
		}
		return nil
	})))
	must(t, g.Link("src", PortOut, "sink"))
	done := make(chan error, 1)
	go func() { done <- g.Run(context.Background()) }()
	// Wait until the source has flushed all 40 one-event slices: the
	// sink's first Process call is blocked, so the rest wait in its queue.
	deadline := time.Now().Add(10 * time.Second)
	for sourceFlushed(g, "src") < 40 {
		if time.Now().After(deadline) {
			t.Fatal("source never flushed its events")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	must(t, <-done)
	for i, d := range got {
		if d != strconv.Itoa(i) {
			t.Fatalf("event %d is %s: order lost", i, d)
		}
	}
	if len(got) != 40 {
		t.Fatalf("got %d events", len(got))
	}
	if len(sizes) > 6 {
		t.Fatalf("40 queued events arrived in %d Process calls %v, want them merged (cap 10)", len(sizes), sizes)
	}
	for _, n := range sizes {
		if n > 10 {
			t.Fatalf("slice of %d exceeds MaxCoalesce 10: %v", n, sizes)
		}
	}
}

func sourceFlushed(g *Graph, node string) uint64 {
	for _, c := range g.Counts() {
		if c.Node == node && c.Port == PortOut {
			return c.Events
		}
	}
	return 0
}

// closeFails passes its events on and fails to close.
type closeFails struct{ err error }

func (p closeFails) Process(_ context.Context, events []Event, emit Emitter) error {
	for _, ev := range events {
		emit.Emit(PortOut, ev)
	}
	return nil
}

func (p closeFails) Close(context.Context) error { return p.err }

// slowCollector is a collector taking a while over each slice, so that
// slices queue up in front of it.
type slowCollector struct{ collector }

func (c *slowCollector) Process(ctx context.Context, events []Event, emit Emitter) error {
	time.Sleep(2 * time.Millisecond)
	return c.collector.Process(ctx, events, emit)
}

// TestCloseFailureDeliversWhatWasEmitted checks that a node failing to
// close fails the graph without discarding what it emitted before: the
// events queued downstream of it are still delivered.
func TestCloseFailureDeliversWhatWasEmitted(t *testing.T) {
	boom := errors.New("close failed")
	g := New(Options{QueueDepth: 64, MaxCoalesce: 1})
	sink := &slowCollector{}
	must(t, g.AddSource("src", countSource(1000, 10), PortOut))
	must(t, g.AddProcessor("mid", closeFails{boom}, PortOut))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", PortOut, "mid"))
	must(t, g.Link("mid", PortOut, "sink"))
	if err := g.Run(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the close failure", err)
	}
	if n := len(sink.datas()); n != 1000 {
		t.Fatalf("sink received %d of 1000 events emitted before the close failure", n)
	}
}
