// Package owner runs one partition's state for as long as this process
// holds the partition's lease: it acquires the lease, fences the previous
// owner, brings the local Pebble store up to date with the partition's
// changelog (replaying only the records after the store's position when
// the changelog continues it, else wiping it and restoring from the
// start), serves the store with every commit group replicated to the
// changelog, renews the lease, and stops serving when the lease is lost.
// See docs/scaling.md ("Recovery").
package owner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/changelog"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/lease"
)

// markerFile marks a directory as a partition store this package may
// wipe: a store the changelog does not continue is rebuilt from scratch
// at a take-over, and nothing else may be deleted by mistake. Direct
// openings of the store (flowrun kv, the Go API) refuse it.
const markerFile = pebblestore.PartitionMarker

// ErrNotPartitionDir reports a non-empty directory without the marker of a
// partition store: it is not wiped.
var ErrNotPartitionDir = errors.New("directory is not a partition store")

// Options configure Run. Dir, Log, Leases and Lease are required.
type Options struct {
	// Dir is the local directory of the partition's Pebble store. At each
	// take-over the store replays the changelog's records after its
	// position, or, when the changelog does not continue it (a fresh
	// directory, a local group whose append was refused, records purged),
	// is wiped and restored from the start; a non-empty directory not made
	// by Run is refused.
	Dir string
	// Log is the partition's changelog.
	Log *changelog.Log
	// Leases is this process's lease table and Lease the partition's
	// lease name in it ("p.017").
	Leases *lease.Table
	Lease  string
	// Store are the options of the Pebble store; Replicator is set by
	// Run.
	Store pebblestore.Options
	// Poll is how often Run tries to acquire a lease held by another
	// process, and RenewEvery how often it renews the lease it holds.
	// Defaults: the lease table's renew interval (a third of its TTL).
	Poll, RenewEvery time.Duration
	// Acquired, when set, is called once the lease is acquired, before
	// the restore, with the lease's epoch: a caller balancing partitions
	// counts the partition as its own from then on.
	Acquired func(epoch uint64)

	// CheckpointEvery is the log volume (bytes of changelog records
	// appended by this owner) after which it writes a checkpoint of the
	// store and purges the log below it (changelog.Writer.Checkpoint).
	// Default changelog.DefaultCheckpointEvery; negative disables
	// checkpoints.
	CheckpointEvery int64
	// OnCheckpoint, when set, is called after each checkpoint attempt
	// with its outcome (metrics, logs, tests).
	OnCheckpoint func(changelog.Checkpointed, error)

	// abandon, when set, makes Run return without releasing the lease,
	// as a killed process would (tests).
	abandon bool
	// renewalsPaused, when set and true, makes the renewer skip its
	// ticks, as if the process were stopped (tests of fencing).
	renewalsPaused func() bool
}

// Restored is what the take-over restored, handed to the serve function.
type Restored = changelog.Restored

// Run blocks until ctx is done or serve returns. It waits for the lease
// (trying every Poll), fences the previous owner and brings the store up
// to date (Restored.After is 0 after a full restore, the store's position
// when only the records after it were replayed), then calls serve with the store and a context that is cancelled as soon
// as the lease is lost (a renewal refused, or its deadline passed without
// one). When serve returns, Run closes the store and releases the lease.
// Writes serve makes after another owner took over fail with
// changelog.ErrFenced. Run returns serve's error, or the reason the lease
// was lost (lease.ErrLost) when serve returned after its context was
// cancelled for it, or ctx's error.
func Run(ctx context.Context, opts Options, serve func(ctx context.Context, b kv.Backend, r Restored) error) error {
	if opts.Dir == "" || opts.Log == nil || opts.Leases == nil || opts.Lease == "" {
		return errors.New("owner: Options.Dir, Log, Leases and Lease are required")
	}
	l, err := acquire(ctx, opts)
	if err != nil {
		return err
	}
	if opts.Acquired != nil {
		opts.Acquired(l.Epoch())
	}
	defer func() {
		if opts.abandon {
			return
		}
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Release(rctx)
	}()
	sopts := opts.Store
	// The writer is created by Fence, after the store: the store's
	// Replicator forwards to it.
	fwd := &forward{}
	sopts.Replicator = fwd
	sopts.Partition = true
	store, from, err := open(opts.Dir, sopts)
	if err != nil {
		return fmt.Errorf("owner: partition %q: %w", opts.Lease, err)
	}
	defer func() {
		if store != nil {
			_ = store.Close()
		}
	}()
	w, err := opts.Log.Fence(ctx, l.Epoch())
	if err != nil {
		return fmt.Errorf("owner: partition %q: %w", opts.Lease, err)
	}
	// The restore writes through Update: nothing of it is replicated
	// (fwd has no writer yet), it is already in the changelog.
	res, err := w.CatchUp(ctx, store, from)
	if errors.Is(err, changelog.ErrDiverged) || errors.Is(err, changelog.ErrGap) {
		// The store holds writes the changelog does not, or the records
		// after its position are gone: start afresh.
		cerr := store.Close()
		store = nil
		if cerr != nil {
			return fmt.Errorf("owner: partition %q: %w", opts.Lease, cerr)
		}
		if err := wipe(opts.Dir); err != nil {
			return err
		}
		if store, err = pebblestore.Open(opts.Dir, sopts); err != nil {
			store = nil
			return fmt.Errorf("owner: partition %q: %w", opts.Lease, err)
		}
		res, err = w.CatchUp(ctx, store, changelog.Position{})
	}
	if err != nil {
		return fmt.Errorf("owner: partition %q: %w", opts.Lease, err)
	}
	fwd.w.Store(w)
	if err := l.Err(); err != nil {
		// The restore outlasted the lease: another owner may be on.
		return err
	}

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	renewed, checkpointed := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(renewed)
		keep(sctx, l, opts, cancel)
	}()
	go func() {
		defer close(checkpointed)
		checkpoints(sctx, w, store, opts)
	}()
	err = serve(sctx, store, res)
	cancel(nil)
	<-renewed
	<-checkpointed
	if cause := context.Cause(sctx); errors.Is(cause, lease.ErrLost) && (err == nil || errors.Is(err, context.Canceled)) {
		return cause
	}
	return err
}

// forward is the store's Replicator: the changelog writer once the
// take-over made one, nothing before (the restore's own writes).
type forward struct {
	w atomic.Pointer[changelog.Writer]
}

func (f *forward) Replicate(ws []kv.Write, input uint64) ([]byte, func() error, error) {
	w := f.w.Load()
	if w == nil {
		return nil, nil, nil
	}
	return w.Replicate(ws, input)
}

// open opens the partition store in dir and returns its position: the
// zero Position, after wiping it, for a store that has none (fresh, or
// made before stores recorded positions).
func open(dir string, opts pebblestore.Options) (*pebblestore.Store, changelog.Position, error) {
	if err := claim(dir); err != nil {
		return nil, changelog.Position{}, err
	}
	store, err := pebblestore.Open(dir, opts)
	if err != nil {
		return nil, changelog.Position{}, err
	}
	raw, err := store.Position()
	var pos changelog.Position
	if err == nil {
		pos, err = changelog.ParsePosition(raw)
	}
	if err == nil && pos.Seq != 0 {
		return store, pos, nil
	}
	// Nothing to resume from: an empty store is the only safe start.
	if cerr := store.Close(); cerr != nil {
		return nil, changelog.Position{}, cerr
	}
	if err := wipe(dir); err != nil {
		return nil, changelog.Position{}, err
	}
	store, err = pebblestore.Open(dir, opts)
	return store, changelog.Position{}, err
}

// claim makes dir a partition store directory (creating it, with the
// marker file, when missing or empty); a non-empty directory without the
// marker is refused.
func claim(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist) || err == nil && len(entries) == 0:
		return wipe(dir)
	case err != nil:
		return fmt.Errorf("owner: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, markerFile)); err != nil {
		return fmt.Errorf("owner: %w: %s is not empty and has no %s file; remove it or choose another directory",
			ErrNotPartitionDir, dir, markerFile)
	}
	return nil
}

// checkpointPoll is how often the owner compares the log written since
// its last checkpoint with CheckpointEvery: a lock and a comparison.
const checkpointPoll = 100 * time.Millisecond

// checkpoints writes a checkpoint of store each time w has appended
// CheckpointEvery bytes since the last one, until ctx is done. A failed
// checkpoint is tried again at the next poll; one failed because the
// writer failed (fenced) fails nothing else: the store's own groups fail.
func checkpoints(ctx context.Context, w *changelog.Writer, store *pebblestore.Store, opts Options) {
	every := opts.CheckpointEvery
	if every == 0 {
		every = changelog.DefaultCheckpointEvery
	}
	if every < 0 {
		return
	}
	t := time.NewTicker(checkpointPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if w.LogBytes() < every {
			continue
		}
		snap := store.Snapshot()
		c, err := w.Checkpoint(ctx, snap, time.Now())
		_ = snap.Close()
		if opts.OnCheckpoint != nil {
			opts.OnCheckpoint(c, err)
		}
		if errors.Is(err, changelog.ErrWriterFailed) || errors.Is(err, changelog.ErrFenced) {
			return
		}
	}
}

// acquire tries the lease every Poll until it gets it or ctx is done.
func acquire(ctx context.Context, opts Options) (*lease.Lease, error) {
	poll := opts.Poll
	if poll <= 0 {
		poll = opts.Leases.RenewInterval()
	}
	for {
		// A held lease and an unreachable stream alike: try again.
		if l, err := opts.Leases.Acquire(ctx, opts.Lease); err == nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(poll):
		}
	}
}

// keep renews l at once and then every RenewEvery until ctx is done, and
// cancels with the reason once the lease is lost or its deadline passes.
//
// The first renewal is made at once because the take-over (fence and
// restore) renews nothing: the lease's deadline still counts from its
// acquisition. Waiting RenewEvery after a take-over of T left
// TTL − Margin − T − RenewEvery for the first renewal; in scalebench runs
// on a loaded machine (docs/scaling.md) take-overs of 1.5-2.5 s left
// under a second, and owners lost partitions they had just taken, took
// them again (256 more fence messages each) and lost them again.
func keep(ctx context.Context, l *lease.Lease, opts Options, cancel context.CancelCauseFunc) {
	every := opts.RenewEvery
	if every <= 0 {
		every = opts.Leases.RenewInterval()
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if opts.renewalsPaused == nil || !opts.renewalsPaused() {
			rctx, rcancel := context.WithTimeout(ctx, every)
			err := l.Renew(rctx)
			rcancel()
			if err != nil {
				if lerr := l.Err(); lerr != nil {
					cancel(lerr)
					return
				}
				if errors.Is(err, lease.ErrLost) {
					cancel(err)
					return
				}
				// Unreachable: try again at the next tick, until the
				// deadline.
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// wipe empties dir for a restore, creating it when missing; a non-empty
// directory without the marker is refused.
func wipe(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("owner: %w", err)
	case len(entries) > 0:
		if _, err := os.Stat(filepath.Join(dir, markerFile)); err != nil {
			return fmt.Errorf("owner: %w: %s is not empty and has no %s file; remove it or choose another directory",
				ErrNotPartitionDir, dir, markerFile)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("owner: wipe %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("owner: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, markerFile), []byte("a partition store, brought up to date from its changelog at each take-over\n"), 0o600)
}
