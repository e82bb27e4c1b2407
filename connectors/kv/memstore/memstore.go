// Package memstore is an in-memory kv.Backend for tests and ephemeral
// flows. It is deliberately simple: one mutex serialises Update, every
// write of a TxnFunc is recorded in an undo log so a failing (or panicking)
// TxnFunc is rolled back, and sorted order is rebuilt lazily for scans.
// Nothing survives Close.
package memstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/flowrun/flowrun/connectors/kv"
)

// ErrClosed reports use of a Store after Close.
var ErrClosed = errors.New("memstore: store is closed")

type entry struct {
	value    []byte
	expireAt int64
}

// undo restores one key to its state before a write.
type undo struct {
	key     string
	prev    entry
	existed bool
}

// Store is an in-memory kv.Backend. It is safe for concurrent use.
type Store struct {
	mu     sync.Mutex
	closed bool
	m      map[string]entry
	// sorted holds keys in byte order, possibly including deleted ones;
	// added holds keys inserted since it was last rebuilt.
	sorted []string
	added  []string
	dirty  bool
}

var _ kv.Backend = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return &Store{m: map[string]entry{}}
}

// Len returns the number of records stored, expired or not.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Update implements kv.Backend: fns run in order under the store's lock;
// a fn that fails or panics has its writes undone and its error in errs.
func (s *Store) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	if len(fns) != len(errs) {
		return fmt.Errorf("memstore: Update given %d funcs and %d error slots", len(fns), len(errs))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for i, fn := range fns {
		tx := &txn{s: s}
		errs[i] = run(fn, tx)
		if errs[i] != nil {
			tx.rollback()
		}
	}
	return nil
}

func run(fn kv.TxnFunc, tx *txn) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("memstore: transaction panicked: %v", p)
		}
	}()
	return fn(tx)
}

// Close discards the data; later Updates fail with ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	s.m = nil
	return nil
}

// keys returns every live key in byte order, rebuilding the index when
// writes changed it.
func (s *Store) keys() []string {
	if !s.dirty {
		return s.sorted
	}
	slices.Sort(s.added)
	merged := make([]string, 0, len(s.m))
	a, b := s.sorted, s.added
	push := func(k string) {
		if _, ok := s.m[k]; !ok {
			return
		}
		if n := len(merged); n > 0 && merged[n-1] == k {
			return
		}
		merged = append(merged, k)
	}
	for len(a) > 0 || len(b) > 0 {
		if len(b) == 0 || len(a) > 0 && a[0] <= b[0] {
			push(a[0])
			a = a[1:]
		} else {
			push(b[0])
			b = b[1:]
		}
	}
	s.sorted, s.added, s.dirty = merged, nil, false
	return s.sorted
}

type txn struct {
	s   *Store
	log []undo
}

func (t *txn) record(k string) {
	prev, ok := t.s.m[k]
	t.log = append(t.log, undo{key: k, prev: prev, existed: ok})
}

func (t *txn) rollback() {
	for i := len(t.log) - 1; i >= 0; i-- {
		u := t.log[i]
		if u.existed {
			t.s.put(u.key, u.prev)
		} else {
			delete(t.s.m, u.key)
			t.s.dirty = true
		}
	}
	t.log = nil
}

func (s *Store) put(k string, e entry) {
	if _, ok := s.m[k]; !ok {
		s.added = append(s.added, k)
		s.dirty = true
	}
	s.m[k] = e
}

// Get implements kv.Txn.
func (t *txn) Get(key []byte) ([]byte, int64, bool, error) {
	e, ok := t.s.m[string(key)]
	return e.value, e.expireAt, ok, nil
}

// Set implements kv.Txn.
func (t *txn) Set(key, value []byte, expireAt int64) error {
	k := string(key)
	t.record(k)
	t.s.put(k, entry{value: slices.Clone(value), expireAt: expireAt})
	return nil
}

// Delete implements kv.Txn.
func (t *txn) Delete(key []byte) error {
	k := string(key)
	if _, ok := t.s.m[k]; !ok {
		return nil
	}
	t.record(k)
	delete(t.s.m, k)
	t.s.dirty = true
	return nil
}

// DeleteRange implements kv.Txn.
func (t *txn) DeleteRange(start, end []byte) error {
	keys := t.s.keys()
	i, _ := slices.BinarySearch(keys, string(start))
	for ; i < len(keys) && (end == nil || keys[i] < string(end)); i++ {
		k := keys[i]
		if _, ok := t.s.m[k]; !ok {
			continue
		}
		t.record(k)
		delete(t.s.m, k)
	}
	t.s.dirty = true
	return nil
}

// Scan implements kv.Txn. It iterates over a snapshot of the key order, so
// the callback may write; keys it deletes are skipped, keys it adds are not
// visited.
func (t *txn) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	keys := t.s.keys()
	i, _ := slices.BinarySearch(keys, string(start))
	for ; i < len(keys); i++ {
		k := keys[i]
		if end != nil && strings.Compare(k, string(end)) >= 0 {
			return nil
		}
		e, ok := t.s.m[k]
		if !ok {
			continue
		}
		more, err := fn([]byte(k), e.value, e.expireAt)
		if err != nil || !more {
			return err
		}
	}
	return nil
}
