package partition

import (
	"context"
	"fmt"
	"sync"

	"github.com/flowrun/flowrun/component"
)

// A Board tells which partitions of one partitioned store this process
// serves right now. The component that owns the partitions (the
// partitioned kv connector) declares the count and marks each partition
// served, with a context that ends when it stops serving it (lease lost,
// store failed, shutdown); the components that consume the partitions'
// input (partitioned bus sources) watch it and run one consumer per served
// partition for as long as that context lasts. It is safe for concurrent
// use.
type Board struct {
	mu      sync.Mutex
	count   int
	serving map[int]context.Context
	changed chan struct{} // closed and replaced at every change
}

// NewBoard returns a board of its own, for a program (or test) not
// sharing it through component.Resources (see BoardOf).
func NewBoard() *Board { return newBoard() }

func newBoard() *Board {
	return &Board{serving: map[int]context.Context{}, changed: make(chan struct{})}
}

// boardsKey holds the boards of a build, by the name of the node owning
// the partitions.
var boardsKey = component.NewKey[*boards]("partition boards")

type boards struct {
	mu sync.Mutex
	m  map[string]*Board
}

// BoardOf returns the board of the partitions owned by node, shared by
// every component of the builds using res: the owner and the consumers
// find the same board whichever is built first.
func BoardOf(res *component.Resources, node string) *Board {
	bs := boardsKey.Shared(res, func() *boards { return &boards{m: map[string]*Board{}} })
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.m[node]
	if !ok {
		b = newBoard()
		bs.m[node] = b
	}
	return b
}

// Declare sets the partition count; the owner calls it once, before
// serving any partition. A second declaration with another count is
// refused.
func (b *Board) Declare(count int) error {
	if err := CheckCount(count); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.count != 0 && b.count != count {
		return fmt.Errorf("partition count declared twice: %d and %d", b.count, count)
	}
	if b.count == 0 {
		b.count = count
		b.notifyLocked()
	}
	return nil
}

// Count returns the declared partition count, 0 before Declare.
func (b *Board) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count
}

// Serve marks partition p served until ctx is done. Serving p again
// before the earlier ctx ended replaces it.
func (b *Board) Serve(ctx context.Context, p int) {
	b.mu.Lock()
	b.serving[p] = ctx
	b.notifyLocked()
	b.mu.Unlock()
	go func() {
		<-ctx.Done()
		b.mu.Lock()
		if b.serving[p] == ctx {
			delete(b.serving, p)
			b.notifyLocked()
		}
		b.mu.Unlock()
	}()
}

// Serving returns the context of partition p while it is served.
func (b *Board) Serving(p int) (context.Context, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ctx, ok := b.serving[p]
	if ok && ctx.Err() != nil {
		return nil, false
	}
	return ctx, ok
}

func (b *Board) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// Watch calls start for every partition served now or later, once per
// serving (once per context given to Serve), with a context that ends
// when the partition stops being served or ctx ends. start is called from
// Watch's goroutine and must not block; it typically starts a consumer.
// Watch returns ctx's error when ctx is done.
func (b *Board) Watch(ctx context.Context, start func(ctx context.Context, p int)) error {
	started := map[int]context.Context{}
	for {
		b.mu.Lock()
		changed := b.changed
		var todo []int
		var ctxs []context.Context
		for p, sctx := range b.serving {
			if started[p] != sctx && sctx.Err() == nil {
				started[p] = sctx
				todo = append(todo, p)
				ctxs = append(ctxs, sctx)
			}
		}
		b.mu.Unlock()
		for i, p := range todo {
			pctx, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(ctxs[i], cancel)
			go func() {
				<-pctx.Done()
				stop()
				cancel()
			}()
			start(pctx, p)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
