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

// completions records the outcome of every tracked event and fails the test
// when one completes twice.
type completions struct {
	t       *testing.T
	mu      sync.Mutex
	outs    map[int]Outcome
	done    atomic.Int32 // onDone calls
	emitted atomic.Int32 // events emitted by trackedSource
}

func newCompletions(t *testing.T) *completions {
	return &completions{t: t, outs: map[int]Outcome{}}
}

func (c *completions) onEvent(base int) func(i int, o Outcome) {
	return func(i int, o Outcome) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, dup := c.outs[base+i]; dup {
			c.t.Errorf("event %d completed twice", base+i)
		}
		c.outs[base+i] = o
	}
}

// trackedSource emits n events (data: their number), one tracker per slice.
func trackedSource(n, per int, c *completions) Source {
	return SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for b := 0; b < n; b += per {
			k := min(per, n-b)
			tr := NewTracker(k, c.onEvent(b), func() { c.done.Add(1) })
			for i := range k {
				emit.Emit(PortOut, tr.Track(i, Event{Data: []byte(strconv.Itoa(b + i))}))
			}
			c.emitted.Add(int32(k))
			if err := emit.Flush(ctx); err != nil {
				return err
			}
		}
		return nil
	})
}

// dropMultiplesOf3 drops events whose number is a multiple of 3 and emits
// the others twice when they are multiples of 5.
var dropMultiplesOf3 = ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
	for _, ev := range events {
		n, _ := strconv.Atoi(string(ev.Data))
		if n%3 == 0 {
			continue
		}
		emit.Emit(PortOut, ev.Derive(ev.Data, nil))
		if n%5 == 0 {
			emit.Emit(PortOut, ev.Derive(ev.Data, []byte(`{"copy":true}`)))
		}
	}
	return nil
})

func TestTrackerOutcomes(t *testing.T) {
	type want struct {
		sinks     []string
		errored   bool
		unlinkErr bool
		unlinked  bool
		dropped   bool
	}
	tests := []struct {
		name  string
		build func(g *Graph)
		// expect gives the outcome expected for event n.
		expect func(n int) want
	}{
		{
			name: "split to two sinks, err linked",
			build: func(g *Graph) {
				must(t, g.AddProcessor("split", evenOdd, PortOut, PortErr))
				must(t, g.AddProcessor("evens", &collector{}))
				must(t, g.AddProcessor("odds", &collector{}))
				must(t, g.Link("src", PortOut, "split"))
				must(t, g.Link("split", PortOut, "evens"))
				must(t, g.Link("split", PortErr, "odds"))
			},
			expect: func(n int) want {
				if n%2 == 1 {
					return want{sinks: []string{"odds"}, errored: true}
				}
				return want{sinks: []string{"evens"}}
			},
		},
		{
			name: "err unlinked",
			build: func(g *Graph) {
				must(t, g.AddProcessor("split", evenOdd, PortOut, PortErr))
				must(t, g.AddProcessor("evens", &collector{}))
				must(t, g.Link("src", PortOut, "split"))
				must(t, g.Link("split", PortOut, "evens"))
			},
			expect: func(n int) want {
				if n%2 == 1 {
					return want{errored: true, unlinkErr: true}
				}
				return want{sinks: []string{"evens"}}
			},
		},
		{
			name: "fan-out to two sinks, out unlinked after a processor",
			build: func(g *Graph) {
				must(t, g.AddProcessor("a", &collector{}))
				must(t, g.AddProcessor("b", &collector{}))
				must(t, g.AddProcessor("pass", ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
					for _, ev := range events {
						emit.Emit(PortOut, ev)
					}
					return nil
				}), PortOut))
				must(t, g.Link("src", PortOut, "a"))
				must(t, g.Link("src", PortOut, "b"))
				must(t, g.Link("src", PortOut, "pass"))
			},
			expect: func(int) want { return want{sinks: []string{"a", "b"}, unlinked: true} },
		},
		{
			name: "dropped and duplicated",
			build: func(g *Graph) {
				must(t, g.AddProcessor("f", dropMultiplesOf3, PortOut))
				must(t, g.AddProcessor("sink", &collector{}))
				must(t, g.Link("src", PortOut, "f"))
				must(t, g.Link("f", PortOut, "sink"))
			},
			expect: func(n int) want {
				if n%3 == 0 {
					return want{dropped: true}
				}
				return want{sinks: []string{"sink"}}
			},
		},
		{
			name:   "source port unlinked",
			build:  func(*Graph) {},
			expect: func(int) want { return want{unlinked: true} },
		},
	}
	const n, per = 300, 7
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCompletions(t)
			g := New(Options{QueueDepth: 1, Unlinked: func(string, string, Event) {}})
			must(t, g.AddSource("src", trackedSource(n, per, c), PortOut))
			tt.build(g)
			must(t, g.Run(context.Background()))
			if len(c.outs) != n {
				t.Fatalf("%d events completed, want %d", len(c.outs), n)
			}
			if got, want := int(c.done.Load()), (n+per-1)/per; got != want {
				t.Fatalf("onDone called %d times, want %d (once per tracker)", got, want)
			}
			for i := range n {
				o, w := c.outs[i], tt.expect(i)
				var reached []string
				for _, name := range []string{"a", "b", "evens", "odds", "sink"} {
					if id, ok := g.SinkID(name); ok && o.Reached(id) {
						reached = append(reached, name)
					}
				}
				got := want{sinks: reached, errored: o.Errored(), unlinkErr: o.UnlinkedErr(), unlinked: o.Unlinked(), dropped: o.Dropped()}
				if fmt.Sprint(got) != fmt.Sprint(w) || o.Failed() {
					t.Fatalf("event %d: outcome %+v (failed %v), want %+v", i, got, o.Failed(), w)
				}
				if o.Sunk() != (len(w.sinks) > 0) {
					t.Fatalf("event %d: Sunk %v with sinks %v", i, o.Sunk(), w.sinks)
				}
				if node, meta := o.ErrEvent(); w.errored && (node != "split" || string(meta) != `{"p":"err"}`) {
					t.Fatalf("event %d: ErrEvent = %q %s", i, node, meta)
				}
			}
		})
	}
}

// TestCompletionAfterEveryDerivedEventIsConsumed checks, at the moment each
// event completes, that each sink already holds every event derived from
// it, through a staged processor and coalesced slices.
func TestCompletionAfterEveryDerivedEventIsConsumed(t *testing.T) {
	const n = 2000
	sinkA, sinkB := &collector{}, &collector{}
	count := func(c *collector, d string) int {
		c.mu.Lock()
		defer c.mu.Unlock()
		k := 0
		for _, e := range c.events {
			if string(e.Data) == d {
				k++
			}
		}
		return k
	}
	var bad atomic.Int32
	var completed atomic.Int32
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for b := 0; b < n; b += 50 {
			base := b
			tr := NewTracker(50, func(i int, o Outcome) {
				completed.Add(1)
				d := strconv.Itoa(base + i)
				wantA := 1
				if (base+i)%5 == 0 {
					wantA = 2
				}
				if (base+i)%3 == 0 {
					wantA = 0
				}
				if count(sinkA, d) != wantA || count(sinkB, d) != 1 {
					bad.Add(1)
				}
			}, nil)
			for i := range 50 {
				emit.Emit(PortOut, tr.Track(i, Event{Data: []byte(strconv.Itoa(base + i))}))
			}
			if err := emit.Flush(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	g := New(Options{QueueDepth: 2, MaxCoalesce: 300, StageDepth: 3})
	must(t, g.AddSource("src", src, PortOut))
	must(t, g.AddProcessor("staged", &stager{inner: dropMultiplesOf3}, PortOut))
	must(t, g.AddProcessor("a", sinkA))
	must(t, g.AddProcessor("b", sinkB))
	must(t, g.Link("src", PortOut, "staged"))
	must(t, g.Link("src", PortOut, "b"))
	must(t, g.Link("staged", PortOut, "a"))
	must(t, g.Run(context.Background()))
	if completed.Load() != n || bad.Load() != 0 {
		t.Fatalf("%d of %d events completed, %d before their derived events reached the sinks", completed.Load(), n, bad.Load())
	}
}

// stager is a StagedProcessor whose FinishFunc runs inner.
type stager struct{ inner Processor }

func (s *stager) Process(ctx context.Context, events []Event, emit Emitter) error {
	return s.inner.Process(ctx, events, emit)
}

func (s *stager) Start(_ context.Context, events []Event) (FinishFunc, error) {
	return func(ctx context.Context, emit Emitter) error { return s.inner.Process(ctx, events, emit) }, nil
}

// TestEveryEventCompletesWhenTheGraphFails checks that a failing node does
// not leave tracked events incomplete: those it could not finish complete
// as failed, and none completes twice.
func TestEveryEventCompletesWhenTheGraphFails(t *testing.T) {
	for _, staged := range []bool{false, true} {
		t.Run(fmt.Sprintf("staged=%v", staged), func(t *testing.T) {
			const n = 5000
			c := newCompletions(t)
			boom := errors.New("boom")
			var seen atomic.Int32
			var p Processor = ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
				if seen.Add(int32(len(events))) > n/2 {
					emit.Emit(PortOut, events[0].Derive(nil, nil)) // queued, never flushed
					return boom
				}
				for _, ev := range events {
					emit.Emit(PortOut, ev)
				}
				return nil
			})
			if staged {
				p = &stager{inner: p}
			}
			g := New(Options{QueueDepth: 2})
			must(t, g.AddSource("src", trackedSource(n, 10, c), PortOut))
			must(t, g.AddProcessor("p", p, PortOut))
			must(t, g.AddProcessor("sink", &collector{}))
			must(t, g.Link("src", PortOut, "p"))
			must(t, g.Link("p", PortOut, "sink"))
			if err := g.Run(context.Background()); !errors.Is(err, boom) {
				t.Fatalf("Run = %v, want boom", err)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			failed, sunk := 0, 0
			for _, o := range c.outs {
				if o.Failed() {
					failed++
				} else if o.Sunk() {
					sunk++
				} else {
					t.Fatalf("outcome neither failed nor sunk: %+v", o)
				}
			}
			if failed == 0 || sunk == 0 {
				t.Fatalf("%d failed, %d sunk: want some of each", failed, sunk)
			}
			// Events the source never emitted are not tracked; all that
			// were emitted completed.
			emitted := int(c.emitted.Load())
			if len(c.outs) != emitted || int(c.done.Load()) != emitted/10 {
				t.Fatalf("%d events emitted, %d completed, onDone called %d times", emitted, len(c.outs), c.done.Load())
			}
		})
	}
}

// TestEveryEventCompletesOnShutdown cancels the graph mid-stream: every
// emitted event still completes, none as failed.
func TestEveryEventCompletesOnShutdown(t *testing.T) {
	c := newCompletions(t)
	ctx, cancel := context.WithCancel(context.Background())
	var emitted atomic.Int32
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for b := 0; ctx.Err() == nil; b += 10 {
			tr := NewTracker(10, c.onEvent(b), nil)
			for i := range 10 {
				emit.Emit(PortOut, tr.Track(i, Event{Data: []byte(strconv.Itoa(b + i))}))
			}
			emitted.Add(10)
			if b == 1000 {
				cancel()
			}
			if err := emit.Flush(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	g := New(Options{QueueDepth: 4})
	must(t, g.AddSource("src", src, PortOut))
	must(t, g.AddProcessor("p", evenOdd, PortOut, PortErr))
	must(t, g.AddProcessor("sink", &collector{}))
	must(t, g.Link("src", PortOut, "p"))
	must(t, g.Link("p", PortOut, "sink"))
	must(t, g.Link("p", PortErr, "sink"))
	must(t, g.Run(ctx))
	if int(emitted.Load()) != len(c.outs) {
		t.Fatalf("%d emitted, %d completed", emitted.Load(), len(c.outs))
	}
	for i, o := range c.outs {
		if o.Failed() || !o.Sunk() {
			t.Fatalf("event %d: %+v", i, o)
		}
	}
}

// TestTrackingAllocatesNothingPerEvent: a tracked event's trip through a
// processor costs no allocation beyond its source's tracker.
func TestTrackingAllocatesNothingPerEvent(t *testing.T) {
	g := New(Options{})
	must(t, g.AddSource("src", SourceFunc(func(context.Context, SourceEmitter) error { return nil }), PortOut))
	must(t, g.AddProcessor("sink", &collector{}))
	must(t, g.Link("src", PortOut, "sink"))
	src, sink := g.nodes["src"], g.nodes["sink"]
	em := newEmitter(g, src)
	tr := NewTracker(1000, nil, nil)
	events := make([]Event, 1000)
	for i := range events {
		events[i] = tr.Track(i, Event{})
	}
	em.buf[0] = make([]Event, 0, len(events))
	allocs := testing.AllocsPerRun(20, func() {
		for _, ev := range events {
			em.Emit(PortOut, ev)
		}
		em.buf[0] = em.buf[0][:0]
		sink.releaseAll(events, 0)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 1000 tracked events", allocs)
	}
}

// TestEmitterSizesSlicesByTheLastFlush: after a port flushed n events,
// the next slice for it is allocated once, with room for n (rounded up to
// a size of the graph's pool), and not at all when the slice before was
// given back to the pool.
func TestEmitterSizesSlicesByTheLastFlush(t *testing.T) {
	g := New(Options{})
	must(t, g.AddSource("src", SourceFunc(func(context.Context, SourceEmitter) error { return nil }), PortOut))
	must(t, g.AddProcessor("sink", &collector{}))
	must(t, g.Link("src", PortOut, "sink"))
	src, sink := g.nodes["src"], g.nodes["sink"]
	em := newEmitter(g, src)
	batch := func(giveBack bool) {
		for range 1000 {
			em.Emit(PortOut, Event{})
		}
		got := em.buf[0]
		must(t, em.Flush(context.Background()))
		g.recycle(<-sink.in, giveBack)
		if len(got) != 1000 || cap(got) < 1000 || cap(got) >= 2048 {
			t.Fatalf("slice of %d events with capacity %d, want 1000 and [1000, 2048)", len(got), cap(got))
		}
	}
	batch(false) // grown by append: nothing flushed before
	for _, tt := range []struct {
		giveBack bool
		want     float64
	}{{false, 1}, {true, 0}} {
		if allocs := testing.AllocsPerRun(10, func() { batch(tt.giveBack) }); allocs > tt.want {
			t.Errorf("slices given back %v: %v allocations per slice of 1000 events, want %v", tt.giveBack, allocs, tt.want)
		}
	}
}

// TestEmitterSizesOutputByInput checks that a processor's output slice is
// allocated once, in proportion to the input slice, when input slices vary
// in length: 1:1, a filter keeping one event in four, and a fan-out of
// two events per input event.
func TestEmitterSizesOutputByInput(t *testing.T) {
	tests := []struct {
		name     string
		perInput func(i int) int // events emitted for input event i
		// wantCap is the capacity the slice of the second input (of 300
		// events) should have, after a first of 100 events, before the
		// pool rounds it up to one of its sizes (a power of two).
		wantCap int
	}{
		{name: "one to one", perInput: func(int) int { return 1 }, wantCap: 300},
		{name: "filter", perInput: func(i int) int { return map[bool]int{true: 1}[i%4 == 0] }, wantCap: 75},
		// Larger than both the last output (200) and the input (300):
		// the first allocation is the larger of the two, then append.
		{name: "fan-out", perInput: func(int) int { return 2 }, wantCap: 300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New(Options{})
			must(t, g.AddProcessor("p", &collector{}, PortOut))
			must(t, g.AddProcessor("sink", &collector{}))
			must(t, g.Link("p", PortOut, "sink"))
			em, out := newEmitter(g, g.nodes["p"]), g.nodes["sink"].in
			var caps []int
			for _, n := range []int{100, 300} {
				em.input(n)
				for i := range n {
					for range tt.perInput(i) {
						em.Emit(PortOut, Event{})
						if len(em.buf[0]) == 1 {
							caps = append(caps, cap(em.buf[0]))
						}
					}
				}
				must(t, em.Flush(context.Background()))
				<-out
			}
			if len(caps) != 2 || caps[1] < tt.wantCap || caps[1] >= 2*tt.wantCap {
				t.Errorf("capacities of the output slices when first allocated = %v, want the second in [%d, %d)", caps, tt.wantCap, 2*tt.wantCap)
			}
		})
	}
}

// TestEmitterPorts checks that events go to the port named, whatever the
// port of the event before.
func TestEmitterPorts(t *testing.T) {
	g := New(Options{})
	must(t, g.AddProcessor("p", &collector{}, PortOut, PortErr))
	must(t, g.AddProcessor("out", &collector{}))
	must(t, g.AddProcessor("err", &collector{}))
	must(t, g.Link("p", PortOut, "out"))
	must(t, g.Link("p", PortErr, "err"))
	em := newEmitter(g, g.nodes["p"])
	ports := []string{PortOut, PortErr, PortErr, PortOut, "nope", PortOut}
	for i, port := range ports {
		em.Emit(port, Event{Data: []byte{byte('0' + i)}})
	}
	must(t, em.Flush(context.Background()))
	got := map[string]string{}
	for _, name := range []string{"out", "err"} {
		for _, ev := range <-g.nodes[name].in {
			got[name] += string(ev.Data)
		}
	}
	if got["out"] != "035" || got["err"] != "12" {
		t.Errorf("out got %q, err got %q; want \"035\" and \"12\"", got["out"], got["err"])
	}
}

// BenchmarkEmitterEmit emits 1000 events on one port, then flushes them.
func BenchmarkEmitterEmit(b *testing.B) {
	g := New(Options{})
	if err := g.AddProcessor("p", &collector{}, PortOut, PortErr); err != nil {
		b.Fatal(err)
	}
	if err := g.AddProcessor("sink", &collector{}); err != nil {
		b.Fatal(err)
	}
	if err := g.Link("p", PortOut, "sink"); err != nil {
		b.Fatal(err)
	}
	em, in := newEmitter(g, g.nodes["p"]), g.nodes["sink"].in
	for b.Loop() {
		em.input(1000)
		for range 1000 {
			em.Emit(PortOut, Event{})
		}
		if err := em.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		<-in
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkGraphTracked moves events from a source through one processor
// to a sink, with and without tracking, to show what tracking costs.
func BenchmarkGraphTracked(b *testing.B) {
	for _, tracked := range []bool{false, true} {
		b.Run(fmt.Sprintf("tracked=%v", tracked), func(b *testing.B) {
			const per = 1000
			src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
				for n := 0; n < b.N; n += per {
					k := min(per, b.N-n)
					var tr *Tracker
					if tracked {
						tr = NewTracker(k, nil, nil)
					}
					for i := range k {
						ev := Event{}
						if tracked {
							ev = tr.Track(i, ev)
						}
						emit.Emit(PortOut, ev)
					}
					if err := emit.Flush(ctx); err != nil {
						return err
					}
				}
				return nil
			})
			g := New(Options{})
			must(b, g.AddSource("src", src, PortOut))
			must(b, g.AddProcessor("pass", ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
				for _, ev := range events {
					emit.Emit(PortOut, ev.Derive(ev.Data, ev.Meta))
				}
				return nil
			}), PortOut))
			must(b, g.AddProcessor("sink", ProcessorFunc(func(context.Context, []Event, Emitter) error { return nil })))
			must(b, g.Link("src", PortOut, "pass"))
			must(b, g.Link("pass", PortOut, "sink"))
			b.ResetTimer()
			must(b, g.Run(context.Background()))
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// TestSourceMayWaitForItsEventsWhenTheGraphFails: a source that waits for
// every event it emitted to complete before it ends (as bus sources do)
// is not left waiting by a node that failed with events queued.
func TestSourceMayWaitForItsEventsWhenTheGraphFails(t *testing.T) {
	for _, staged := range []bool{false, true} {
		t.Run(fmt.Sprintf("staged=%v", staged), func(t *testing.T) {
			boom := errors.New("boom")
			var p Processor = ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
				emit.Emit(PortOut, events[0].Derive(nil, nil)) // queued, never flushed
				return boom
			})
			if staged {
				p = &stager{inner: p}
			}
			var wg sync.WaitGroup
			var stuck atomic.Bool
			src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
				tr := NewTracker(3, func(int, Outcome) { wg.Done() }, nil)
				for i := range 3 {
					wg.Add(1)
					emit.Emit(PortOut, tr.Track(i, Event{}))
				}
				if err := emit.Flush(context.WithoutCancel(ctx)); err != nil {
					return err
				}
				done := make(chan struct{})
				go func() { wg.Wait(); close(done) }()
				select {
				case <-done:
					return nil
				case <-time.After(10 * time.Second):
					stuck.Store(true)
					return errors.New("events never completed")
				}
			})
			g := New(Options{})
			must(t, g.AddSource("src", src, PortOut))
			must(t, g.AddProcessor("p", p, PortOut))
			must(t, g.AddProcessor("sink", &collector{}))
			must(t, g.Link("src", PortOut, "p"))
			must(t, g.Link("p", PortOut, "sink"))
			if err := g.Run(context.Background()); !errors.Is(err, boom) || stuck.Load() {
				t.Fatalf("Run = %v (source waited in vain: %v), want boom", err, stuck.Load())
			}
		})
	}
}

// TestAbandonFailsTheTrackedEvent: a processor that abandons an event
// (emitting nothing for it) makes its outcome Failed, not Dropped, so a
// redelivering source gives it back; the other events of the slice are
// unaffected, and Redeliverable tells the source's declaration.
func TestAbandonFailsTheTrackedEvent(t *testing.T) {
	c := newCompletions(t)
	g := New(Options{})
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		tr := NewTracker(4, c.onEvent(0), nil)
		tr.SetRedelivers()
		for i := range 4 {
			emit.Emit(PortOut, tr.Track(i, Event{Data: []byte(strconv.Itoa(i))}))
		}
		c.emitted.Add(4)
		return emit.Flush(ctx)
	})
	var notRedeliverable atomic.Int32
	abandonOdd := ProcessorFunc(func(_ context.Context, events []Event, emit Emitter) error {
		for _, ev := range events {
			if !ev.Redeliverable() {
				notRedeliverable.Add(1)
			}
			if n, _ := strconv.Atoi(string(ev.Data)); n%2 == 1 {
				if !Abandon(ev) {
					t.Errorf("Abandon(%s) = false for a tracked event", ev.Data)
				}
				continue
			}
			emit.Emit(PortOut, ev.Derive(ev.Data, nil))
		}
		return nil
	})
	sink := ProcessorFunc(func(context.Context, []Event, Emitter) error { return nil })
	for _, err := range []error{
		g.AddSource("src", src, PortOut), g.AddProcessor("abandon", abandonOdd, PortOut), g.AddProcessor("sink", sink),
		g.Link("src", PortOut, "abandon"), g.Link("abandon", PortOut, "sink"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := notRedeliverable.Load(); n != 0 {
		t.Errorf("%d events of a redelivering source not Redeliverable", n)
	}
	for i := range 4 {
		o := c.outs[i]
		if o.Failed() != (i%2 == 1) || o.Sunk() == (i%2 == 1) {
			t.Errorf("event %d: failed %v, sunk %v", i, o.Failed(), o.Sunk())
		}
	}
	if Abandon(Event{}) || (Event{}).Redeliverable() {
		t.Error("an untracked event is abandoned or redeliverable")
	}
}
