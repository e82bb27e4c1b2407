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

// slowChecker is a sink that, for each slice, waits and then checks that
// the events still carry what they carried when the slice arrived: a
// slice reused by another node while it waits would show other data.
type slowChecker struct {
	t       *testing.T
	wait    time.Duration
	changed int
}

func (c *slowChecker) Process(_ context.Context, events []Event, _ Emitter) error {
	before := make([]string, len(events))
	for i, ev := range events {
		before[i] = string(ev.Data)
	}
	time.Sleep(c.wait)
	for i, ev := range events {
		if string(ev.Data) != before[i] {
			c.changed++
		}
	}
	return nil
}

// TestSharedSlicesAreNotReused links one port to two nodes, one fast and
// one slow: the fast one must not give the slice back to the pool while
// the slow one still reads it, or the source's next slices would write
// over it.
func TestSharedSlicesAreNotReused(t *testing.T) {
	g := New(Options{QueueDepth: 64, MaxCoalesce: 1})
	src := SourceFunc(func(ctx context.Context, emit SourceEmitter) error {
		for i := range 40 {
			for j := range 16 {
				emit.Emit(PortOut, Event{Data: []byte(strconv.Itoa(i*16 + j))})
			}
			if err := emit.Flush(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	slow := &slowChecker{t: t, wait: time.Millisecond}
	fast := &collector{}
	must(t, g.AddSource("src", src, PortOut))
	must(t, g.AddProcessor("fast", fast))
	must(t, g.AddProcessor("slow", slow))
	must(t, g.Link("src", PortOut, "fast"))
	must(t, g.Link("src", PortOut, "slow"))
	must(t, g.Run(context.Background()))
	if slow.changed != 0 {
		t.Errorf("%d events changed under the slow node while it held their slice", slow.changed)
	}
	if got := len(fast.datas()); got != 640 {
		t.Errorf("fast node got %d events, want 640", got)
	}
}
