package partition

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
)

func TestBoardWatchFollowsServing(t *testing.T) {
	res := component.NewResources()
	b := BoardOf(res, "store")
	if BoardOf(res, "store") != b || BoardOf(res, "other") == b {
		t.Fatal("BoardOf does not share one board per node")
	}
	if err := b.Declare(4); err != nil {
		t.Fatal(err)
	}
	if err := b.Declare(8); err == nil {
		t.Fatal("a second count was accepted")
	}

	type start struct {
		p   int
		ctx context.Context
	}
	starts := make(chan start, 16)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = b.Watch(wctx, func(ctx context.Context, p int) { starts <- start{p, ctx} })
	}()

	next := func() start {
		t.Helper()
		select {
		case s := <-starts:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no start")
			return start{}
		}
	}
	s1ctx, s1cancel := context.WithCancel(context.Background())
	b.Serve(s1ctx, 1)
	s := next()
	if s.p != 1 {
		t.Fatalf("started %d, want 1", s.p)
	}
	if _, ok := b.Serving(1); !ok {
		t.Fatal("partition 1 not serving")
	}
	s1cancel()
	select {
	case <-s.ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("watch context of a partition no longer served did not end")
	}
	// Served again: a second start.
	s2ctx, s2cancel := context.WithCancel(context.Background())
	defer s2cancel()
	b.Serve(s2ctx, 1)
	if s := next(); s.p != 1 || s.ctx.Err() != nil {
		t.Fatalf("second serving: %d %v", s.p, s.ctx.Err())
	}
	select {
	case s := <-starts:
		t.Fatalf("unexpected start of %d", s.p)
	case <-time.After(50 * time.Millisecond):
	}
	wcancel()
	wg.Wait()
}
