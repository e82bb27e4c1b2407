package pebblestore

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Pool shares one Store per directory among the kv connectors of a process,
// so that flows with different namespaces can use one store directory (one
// Pebble instance underneath). Its zero value is not usable; use NewPool.
type Pool struct {
	mu       sync.Mutex
	stores   map[string]*pooled
	onCommit func(CommitInfo)
}

type pooled struct {
	store *Store
	refs  int
}

// NewPool returns an empty pool.
func NewPool() *Pool {
	return &Pool{stores: map[string]*pooled{}}
}

// NewObservedPool returns an empty pool whose stores report every commit
// group to onCommit (see Options.OnCommit), unless the Options given to Open
// set their own. A process serving metrics uses it so that every store its
// flows open is observed without the flows knowing.
func NewObservedPool(onCommit func(CommitInfo)) *Pool {
	return &Pool{stores: map[string]*pooled{}, onCommit: onCommit}
}

// Open returns a handle on the store in dir, opening it on first use. The
// options of the first Open of a directory apply; a later Open asking for a
// different sync policy is refused rather than silently weakened. Closing
// the handle releases it; the store closes when its last handle does.
func (p *Pool) Open(dir string, opts Options) (kv.Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %q: %w", dir, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.stores[abs]; ok {
		if e.store.opts.NoSync != opts.NoSync {
			return nil, fmt.Errorf("open store %q: already open with sync=%t, asked for sync=%t",
				dir, !e.store.opts.NoSync, !opts.NoSync)
		}
		e.refs++
		return &handle{pool: p, key: abs, store: e.store}, nil
	}
	if opts.OnCommit == nil {
		opts.OnCommit = p.onCommit
	}
	s, err := Open(abs, opts)
	if err != nil {
		return nil, err
	}
	p.stores[abs] = &pooled{store: s, refs: 1}
	return &handle{pool: p, key: abs, store: s}, nil
}

func (p *Pool) release(key string) error {
	p.mu.Lock()
	e, ok := p.stores[key]
	if !ok {
		p.mu.Unlock()
		return ErrClosed
	}
	e.refs--
	if e.refs > 0 {
		p.mu.Unlock()
		return nil
	}
	delete(p.stores, key)
	p.mu.Unlock()
	return e.store.Close()
}

// handle is one user's reference to a pooled store.
type handle struct {
	pool   *Pool
	key    string
	store  *Store
	mu     sync.Mutex
	closed bool
}

func (h *handle) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.Update(ctx, fns, errs)
}

// View implements kv.Viewer, so flows sharing a store keep the read path
// that bypasses the writer.
func (h *handle) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.View(ctx, fns, errs)
}

func (h *handle) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	h.closed = true
	h.mu.Unlock()
	return h.pool.release(h.key)
}
