package pipeline

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stagedRecorder is a StagedProcessor that records the order of its
// stages and can hold a slice's finish until a later slice has started.
type stagedRecorder struct {
	mu       sync.Mutex
	log      []string // "start N" / "finish N", N the first Data of the slice
	overlap  int      // if > 0: finish of a slice not ending at overlap-1 waits for the next slice's start
	failAt   int      // Start fails on the slice holding this number (-1: never)
	finishes atomic.Int64
	starts   atomic.Int64
}

func (s *stagedRecorder) record(what string, first int) {
	s.mu.Lock()
	s.log = append(s.log, what+" "+strconv.Itoa(first))
	s.mu.Unlock()
}

func (s *stagedRecorder) Process(ctx context.Context, events []Event, emit Emitter) error {
	f, err := s.Start(ctx, events)
	if err != nil {
		return err
	}
	return f(ctx, emit)
}

func (s *stagedRecorder) Start(_ context.Context, events []Event) (FinishFunc, error) {
	first, _ := strconv.Atoi(string(events[0].Data))
	last, _ := strconv.Atoi(string(events[len(events)-1].Data))
	if first <= s.failAt && s.failAt <= last {
		return nil, errors.New("start refused")
	}
	nth := s.starts.Add(1)
	s.record("start", first)
	return func(ctx context.Context, emit Emitter) error {
		defer s.finishes.Add(1)
		if s.overlap > 0 && last < s.overlap-1 {
			// More events follow, so the next slice must be able to
			// start while this one is unfinished.
			deadline := time.Now().Add(5 * time.Second)
			for s.starts.Load() == nth {
				if time.Now().After(deadline) {
					return errors.New("the next slice did not start while this one was unfinished")
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
		s.record("finish", first)
		for _, ev := range events {
			emit.Emit(PortOut, ev)
		}
		return nil
	}, nil
}

func TestStagedProcessorOverlapsAndKeepsOrder(t *testing.T) {
	const n, per = 1000, 10
	proc := &stagedRecorder{overlap: n, failAt: -1}
	// QueueDepth 1 and no coalescing limit changes: slices may merge,
	// which the recorder allows (it checks order by first and last).
	g := New(Options{QueueDepth: 1, StageDepth: 3})
	sink := &collector{}
	must(t, g.AddSource("src", countSource(n, per), PortOut))
	must(t, g.AddProcessor("staged", proc, PortOut))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", PortOut, "staged"))
	must(t, g.Link("staged", PortOut, "sink"))
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := sink.datas()
	if len(got) != n {
		t.Fatalf("sink got %d events, want %d", len(got), n)
	}
	for i, d := range got {
		if d != strconv.Itoa(i) {
			t.Fatalf("event %d is %q: output out of order", i, d)
		}
	}
	if s, f := proc.starts.Load(), proc.finishes.Load(); s != f || s == 0 {
		t.Fatalf("%d slices started, %d finished", s, f)
	}
}

func TestStagedProcessorStageDepthOneRunsProcess(t *testing.T) {
	// With one stage in flight the graph calls Process; a finish that
	// waited for the next start would time out, so overlap stays off and
	// the log must alternate start/finish.
	proc := &stagedRecorder{failAt: -1}
	g := New(Options{StageDepth: 1})
	must(t, g.AddSource("src", countSource(100, 10), PortOut))
	must(t, g.AddProcessor("staged", proc, PortOut))
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, entry := range proc.log {
		want := "start"
		if i%2 == 1 {
			want = "finish"
		}
		if entry[:len(want)] != want {
			t.Fatalf("log %v: entry %d is %q, want %s", proc.log, i, entry, want)
		}
	}
}

func TestStagedProcessorStartErrorStopsGraphAndFinishesStarted(t *testing.T) {
	proc := &stagedRecorder{failAt: 500}
	g := New(Options{QueueDepth: 1, StageDepth: 4})
	sink := &collector{}
	must(t, g.AddSource("src", countSource(100000, 10), PortOut))
	must(t, g.AddProcessor("staged", proc, PortOut))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", PortOut, "staged"))
	must(t, g.Link("staged", PortOut, "sink"))
	err := g.Run(context.Background())
	if err == nil || g.Err() == nil || err.Error() != g.Err().Error() {
		t.Fatalf("Run = %v, Err = %v; want the Start error", err, g.Err())
	}
	if s, f := proc.starts.Load(), proc.finishes.Load(); s != f {
		t.Fatalf("%d slices started, %d finished: every started slice must finish", s, f)
	}
	for i, d := range sink.datas() {
		if d != strconv.Itoa(i) {
			t.Fatalf("event %d is %q: output out of order", i, d)
		}
	}
}
