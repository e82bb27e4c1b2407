package pipeline

import (
	"context"
	"strconv"
	"testing"
	"time"
)

func TestSlicePool(t *testing.T) {
	var p slicePool
	for _, tt := range []struct{ n, wantCap int }{{0, 16}, {16, 16}, {17, 32}, {1000, 1024}, {4096, 4096}, {8192, 8192}, {8193, 8193}} {
		if s := p.get(tt.n); len(s) != 0 || cap(s) != tt.wantCap {
			t.Errorf("get(%d): len %d cap %d, want 0 and %d", tt.n, len(s), cap(s), tt.wantCap)
		}
	}
	s := append(p.get(100), Event{Data: []byte("x")}, Event{Meta: []byte("y")})
	p.put(s)
	if r := p.get(128); cap(r) != 128 || &r[:1][0] != &s[0] {
		t.Fatalf("get(128) after put of a 128-slice: not the slice given back")
	} else if r[:2][0].Data != nil || r[:2][1].Meta != nil {
		t.Errorf("a slice given back still holds its events: %+v", r[:2])
	}
	// A capacity that is not one of the pool's sizes is not kept.
	p.put(make([]Event, 5, 100))
	if r := p.get(100); cap(r) != 128 {
		t.Errorf("get(100) = cap %d after put of a cap-100 slice, want a new 128", cap(r))
	}
	// grow keeps the events and moves to a pooled size.
	g := p.grow(append(p.get(16), make([]Event, 16)...), 1)
	if len(g) != 16 || cap(g) != 32 {
		t.Errorf("grow: len %d cap %d, want 16 and 32", len(g), cap(g))
	}
}

// orderChecker is a sink that waits on each slice and checks that the
// events arrive numbered 0, 1, 2... as sent: a slice reused by another
// node before this one read it would show other numbers.
type orderChecker struct {
	wait time.Duration
	next int
	bad  int
}

func (c *orderChecker) Process(_ context.Context, events []Event, _ Emitter) error {
	time.Sleep(c.wait)
	for _, ev := range events {
		if string(ev.Data) != strconv.Itoa(c.next) {
			c.bad++
		}
		c.next++
	}
	return nil
}

// gate is a sink that reports its first call and holds it until opened,
// so that the source's next slices queue behind it, and reports its
// second call, by which time the slices queued were merged (when
// coalescing).
type gate struct {
	entered, open, merged chan struct{}
	calls                 int
	got                   int
}

func (c *gate) Process(_ context.Context, events []Event, _ Emitter) error {
	c.calls++
	switch c.calls {
	case 1:
		close(c.entered)
		<-c.open
	case 2:
		close(c.merged)
	}
	c.got += len(events)
	return nil
}

// TestSharedSlicesAreNotReused links one port to two nodes, one that
// goes on at once and one that takes its time: the first must not give a
// slice back to the pool while the other still has it queued, or the
// source's next slices would write over it; neither when it handles the
// slice itself nor when it merges it with the slices queued behind it.
func TestSharedSlicesAreNotReused(t *testing.T) {
	for _, tt := range []struct {
		name        string
		maxCoalesce int
	}{{"handled", 1}, {"merged", 4096}} {
		t.Run(tt.name, func(t *testing.T) {
			g := New(Options{QueueDepth: 64, MaxCoalesce: tt.maxCoalesce})
			fast := &gate{entered: make(chan struct{}), open: make(chan struct{}), merged: make(chan struct{})}
			src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
				for i := range 40 {
					for j := range 16 {
						emit.Emit(PortOut, Event{Data: []byte(strconv.Itoa(i*16 + j))})
					}
					if err := emit.Flush(ctx); err != nil {
						return err
					}
					switch i {
					case 0:
						<-fast.entered // slice 0 alone in the first call
					case 2:
						close(fast.open)
						<-fast.merged
					}
				}
				return nil
			})
			slow := &orderChecker{wait: time.Millisecond}
			must(t, g.AddSource("src", src, PortOut))
			must(t, g.AddProcessor("fast", fast))
			must(t, g.AddProcessor("slow", slow))
			must(t, g.Link("src", PortOut, "fast"))
			must(t, g.Link("src", PortOut, "slow"))
			must(t, g.Run(context.Background()))
			if slow.bad != 0 || slow.next != 640 {
				t.Errorf("slow node: %d of %d events not what was sent in their place", slow.bad, slow.next)
			}
			if fast.got != 640 {
				t.Errorf("fast node got %d events, want 640", fast.got)
			}
		})
	}
}
