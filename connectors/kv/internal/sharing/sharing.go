// Package sharing lets the kv connectors of one process share a store: one
// store per key (a directory, a cluster and prefix), opened by its first
// user and closed when its last user lets go. The store packages build
// their pools on it.
package sharing

import (
	"errors"
	"io"
	"sync"
)

// ErrReleased reports a Ref released a second time.
var ErrReleased = errors.New("already released")

// Pool holds one store per key with the number of its users. Its zero
// value is ready to use.
type Pool[S io.Closer] struct {
	mu      sync.Mutex
	entries map[string]*entry[S]
}

type entry[S io.Closer] struct {
	store S
	refs  int
}

// Acquire returns the store of key and the caller's hold on it. A store
// already open is first given to check (nil: accepted), whose error
// refuses it; otherwise open makes the store. Open runs under the pool's
// lock, so two users of one key never open it twice.
func (p *Pool[S]) Acquire(key string, check func(S) error, open func() (S, error)) (S, *Ref, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.entries[key]; ok {
		if check != nil {
			if err := check(e.store); err != nil {
				var zero S
				return zero, nil, err
			}
		}
		e.refs++
		return e.store, p.ref(key), nil
	}
	s, err := open()
	if err != nil {
		var zero S
		return zero, nil, err
	}
	if p.entries == nil {
		p.entries = map[string]*entry[S]{}
	}
	p.entries[key] = &entry[S]{store: s, refs: 1}
	return s, p.ref(key), nil
}

func (p *Pool[S]) ref(key string) *Ref {
	return &Ref{release: func() error { return p.release(key) }}
}

// release drops one user of key, closing the store with its last one.
func (p *Pool[S]) release(key string) error {
	p.mu.Lock()
	e := p.entries[key]
	e.refs--
	if e.refs > 0 {
		p.mu.Unlock()
		return nil
	}
	delete(p.entries, key)
	p.mu.Unlock()
	return e.store.Close()
}

// Ref is one user's hold on a pooled store.
type Ref struct {
	mu       sync.Mutex
	released bool
	release  func() error
}

// Release lets go of the store, closing it when no other user holds it.
// A second call returns ErrReleased and does nothing.
func (r *Ref) Release() error {
	r.mu.Lock()
	if r.released {
		r.mu.Unlock()
		return ErrReleased
	}
	r.released = true
	r.mu.Unlock()
	return r.release()
}
