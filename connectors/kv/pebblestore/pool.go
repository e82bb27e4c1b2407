package pebblestore

import (
	"context"
	"errors"
	"fmt"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/internal/sharing"
)

// Pool shares one Store per directory among the kv connectors of a process,
// so that flows with different namespaces can use one store directory (one
// Pebble instance underneath). Its zero value is not usable; use NewPool.
type Pool struct {
	stores        sharing.Pool[*Store]
	onCommit      func(CommitInfo)
	memTableBytes int64 // Options.MemTableBytes when Open's Options leave it 0
}

// NewPool returns an empty pool.
func NewPool() *Pool {
	return &Pool{}
}

// NewObservedPool returns an empty pool whose stores report every commit
// group to onCommit (see Options.OnCommit), unless the Options given to Open
// set their own. A process serving metrics uses it so that every store its
// flows open is observed without the flows knowing. onCommit also gets one
// empty CommitInfo (Dir only) when a store opens, so that the store is
// known before its first commit group.
func NewObservedPool(onCommit func(CommitInfo)) *Pool {
	return &Pool{onCommit: onCommit}
}

// SetMemTableBytes makes the stores this pool opens from now on grow their
// memtables to n bytes (Options.MemTableBytes) when the Options given to
// Open leave it unset; 0 restores DefaultMemTableBytes. It must be called
// before the pool is shared (before the first Open). The memtable size only
// decides when writes move from memory to sstables: every write is in the
// write-ahead log, synced as the Options say, before its result is
// released, whatever the size. flowrun replay, a batch job whose input is
// known to end, uses it to trade flush frequency for memory.
func (p *Pool) SetMemTableBytes(n int64) { p.memTableBytes = n }

// Open returns a handle on the store in dir, opening it on first use.
// Stores are shared by what their directory is (its device and inode),
// not by how dir is spelled: a symlink or "x/../state" reaching an open
// store's directory shares that store. A directory that cannot be
// identified safely (see dir.go), such as an open store's directory
// reached under another real path (a bind mount), is refused with
// ErrDirIdentity and an error naming both paths. The options of the first
// Open of a directory apply; a later Open asking for a different sync
// policy is refused rather than silently weakened. Closing the handle
// releases it; the store closes when its last handle does.
func (p *Pool) Open(dir string, opts Options) (kv.Backend, error) {
	where, err := resolveDir(dir)
	if err != nil {
		return nil, err
	}
	check := func(s *Store) error {
		if s.where.real != where.real {
			return fmt.Errorf("open store %q: %w: it is the directory of store %q open in this process (%s), "+
				"reached under another real path (%q, not %q); use one path for both",
				dir, ErrDirIdentity, s.dir, s.where.id, where.real, s.where.real)
		}
		if s.opts.NoSync != opts.NoSync {
			return fmt.Errorf("open store %q: already open with sync=%t, asked for sync=%t",
				dir, !s.opts.NoSync, !opts.NoSync)
		}
		return nil
	}
	opened, observed := false, opts.OnCommit == nil && p.onCommit != nil
	s, ref, err := p.stores.Acquire(where.key(), check, func() (*Store, error) {
		opened = true
		if opts.OnCommit == nil {
			opts.OnCommit = p.onCommit
		}
		if opts.MemTableBytes == 0 {
			opts.MemTableBytes = p.memTableBytes
		}
		s, err := Open(dir, opts)
		if err != nil {
			return nil, err
		}
		if s.where.key() != where.key() {
			_ = s.Close()
			return nil, fmt.Errorf("open store %q: %w: it was %s, then %s (changed while opening)",
				dir, ErrDirIdentity, where.id, s.where.id)
		}
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	if opened && observed {
		// An empty report (no transactions, nothing written), so that an
		// observer knows the store from its opening on: its failure
		// counter is exported at 0 before any commit.
		p.onCommit(CommitInfo{Dir: s.dir})
	}
	return &handle{store: s, ref: ref}, nil
}

// handle is one user's reference to a pooled store.
type handle struct {
	store *Store
	ref   *sharing.Ref
}

func (h *handle) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.Update(ctx, fns, errs)
}

// View implements kv.Viewer, so flows sharing a store keep the read path
// that bypasses the writer.
func (h *handle) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.View(ctx, fns, errs)
}

// Submit implements kv.Submitter, so a kv connector on a pooled store
// keeps overlapping one slice's sync with the next slice's start.
func (h *handle) Submit(ctx context.Context, fns []kv.TxnFunc, errs []error) func() error {
	return h.store.Submit(ctx, fns, errs)
}

// ViewHinted implements kv.ViewHinter, so flows sharing a store keep the
// row cache's batched probe of a slice's reads.
func (h *handle) ViewHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	return h.store.ViewHinted(ctx, fns, hints, errs)
}

// SubmitHinted implements kv.HintedSubmitter, as ViewHinted does
// kv.ViewHinter.
func (h *handle) SubmitHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) func() error {
	return h.store.SubmitHinted(ctx, fns, hints, errs)
}

func (h *handle) Close() error {
	err := h.ref.Release()
	if errors.Is(err, sharing.ErrReleased) {
		return ErrClosed
	}
	return err
}
