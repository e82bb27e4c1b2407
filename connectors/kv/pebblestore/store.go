// Package pebblestore is the Pebble-backed implementation of kv.Backend.
//
// One writer goroutine per store applies transactions in arrival order into
// an indexed Pebble batch, so each transaction reads the writes of every one
// before it, and commits a whole group of transactions with one WAL sync.
// Results are released only after that sync (unless Options.NoSync), so a
// caller that saw a result can never lose the write behind it. While one
// group waits for its sync, the writer is already building the next one: the
// group's writes are visible to later reads as soon as they are applied, and
// no later group completes before an earlier one has synced.
package pebblestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Errors returned by the store.
var (
	// ErrLocked reports a store directory held open by another process (or
	// by another Store of this process outside a Pool).
	ErrLocked = errors.New("store directory is in use by another process")
	// ErrClosed reports use of a store after Close.
	ErrClosed = errors.New("store is closed")
	// ErrFailed reports a store that refuses all work after a commit or
	// WAL sync failed; restart the process to recover it.
	ErrFailed = errors.New("store failed an earlier commit; restart to recover")
	// ErrCorruptRecord reports a stored value that does not decode.
	ErrCorruptRecord = kv.ErrCorruptRecord
)

// Defaults for Options.
const (
	DefaultMaxBatch = 8192
	// DefaultCacheBytes is the block cache size. Pebble's own default (8
	// MiB) makes point reads of a store of a few hundred thousand keys go to
	// disk; 64 MiB keeps such a store's hot blocks in memory while leaving
	// a flow well inside a few hundred MiB of RSS.
	DefaultCacheBytes = 64 << 20
)

// Options configure a Store. The zero value gives durable, group-committed
// writes.
type Options struct {
	// NoSync releases results once a group is applied, without waiting for
	// the WAL to be written and fsynced. Pebble buffers recent log records
	// in the process, so the most recent acknowledged writes (hundreds of
	// them under load) are lost on a process crash as well as on a power
	// failure. Default false: every result is durable on disk before it is
	// released.
	NoSync bool
	// MaxBatch bounds the number of transactions committed as one group.
	// Default DefaultMaxBatch.
	MaxBatch int
	// MaxDelay is how long the writer may wait for more transactions to
	// fill a group before committing it. Default 0: commit what is queued.
	// Groups still form naturally while earlier groups are syncing.
	MaxDelay time.Duration
	// CacheBytes is the size of Pebble's block cache. Default
	// DefaultCacheBytes.
	CacheBytes int64
	// Logger receives Pebble's own log lines at debug level and store
	// lifecycle events. Default: slog.Default().
	Logger *slog.Logger
	// Pebble, when set, is called with the Pebble options before the
	// database is opened, for tuning and fault injection in tests.
	Pebble func(*pebble.Options)
	// OnCommit, when set, is called once per commit group when its outcome
	// is known (its writes durable, or its commit failed) and before its
	// Update calls return, from the store's syncer goroutine. It must be quick and must not call back
	// into the store; metrics use it. Default nil: nothing is called.
	OnCommit func(CommitInfo)
}

// CommitInfo describes one commit group, for OnCommit.
type CommitInfo struct {
	// Dir is the store directory.
	Dir string
	// Transactions is the number of kv.TxnFunc run in the group (failed
	// ones included); Requests the number of Update calls they came in.
	Transactions, Requests int
	// Wrote reports whether the group wrote anything; a group of reads
	// only is released without a commit.
	Wrote bool
	// Latency runs from the writer starting the group to its outcome:
	// applying every transaction, the commit and, unless NoSync, the WAL
	// sync.
	Latency time.Duration
	// Err is the commit or sync error reported to every request of the
	// group, nil on success.
	Err error
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.MaxDelay < 0 {
		o.MaxDelay = 0
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Store is a Pebble database serving kv.Backend transactions. It is safe for
// concurrent use.
type Store struct {
	db   *pebble.DB
	dir  string
	opts Options

	closeMu sync.RWMutex
	closed  bool
	reqs    chan *request
	synced  chan *group
	done    chan struct{} // closed when the syncer has finished
}

var _ kv.Backend = (*Store)(nil)

type request struct {
	fns  []kv.TxnFunc
	errs []error
	done chan error
}

type group struct {
	batch *pebble.Batch // nil when the group wrote nothing
	reqs  []*request
	err   error // commit error, reported to every request
	start time.Time
	wrote bool
}

// Open opens (creating when missing) the Pebble store in dir.
func Open(dir string, opts Options) (*Store, error) {
	opts.EnsureDefaults()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open store %q: %w", dir, err)
	}
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref() // the database holds its own reference
	popts := &pebble.Options{Logger: pebbleLogger{opts.Logger}, Cache: cache}
	if opts.Pebble != nil {
		opts.Pebble(popts)
	}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		if isLockError(err) {
			return nil, fmt.Errorf("open store %q: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("open store %q: %w", dir, err)
	}
	s := &Store{
		db:     db,
		dir:    dir,
		opts:   opts,
		reqs:   make(chan *request, 64),
		synced: make(chan *group, 64),
		done:   make(chan struct{}),
	}
	go s.write()
	go s.sync()
	return s, nil
}

func isLockError(err error) bool {
	// Another process holding the flock surfaces as a bare EAGAIN.
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "lock") &&
		(strings.Contains(msg, "resource temporarily unavailable") || strings.Contains(msg, "held"))
}

// Dir returns the directory the store was opened on.
func (s *Store) Dir() string { return s.dir }

// Update implements kv.Backend. Once the transactions are queued, Update
// waits for their outcome even if ctx is cancelled: returning early would
// report as failed work that may still commit.
func (s *Store) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	if len(fns) != len(errs) {
		return fmt.Errorf("pebblestore: Update given %d funcs and %d error slots", len(fns), len(errs))
	}
	if len(fns) == 0 {
		return nil
	}
	req := &request{fns: fns, errs: errs, done: make(chan error, 1)}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return ErrClosed
	}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return ctx.Err()
	}
	s.closeMu.RUnlock()
	return <-req.done
}

// Close stops accepting transactions, waits for every queued one to commit
// and sync, and closes the database.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return ErrClosed
	}
	s.closed = true
	close(s.reqs)
	s.closeMu.Unlock()
	<-s.done
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %q: %w", s.dir, err)
	}
	return nil
}

// write is the single writer goroutine: it gathers queued requests into a
// group, runs their transactions against one indexed batch, applies it and
// hands it to the syncer.
func (s *Store) write() {
	defer close(s.synced)
	var timer *time.Timer
	for first := range s.reqs {
		reqs := []*request{first}
		n := len(first.fns)
		if s.opts.MaxDelay > 0 && n < s.opts.MaxBatch {
			if timer == nil {
				timer = time.NewTimer(s.opts.MaxDelay)
			} else {
				timer.Reset(s.opts.MaxDelay)
			}
		gather:
			for n < s.opts.MaxBatch {
				select {
				case r, ok := <-s.reqs:
					if !ok {
						break gather
					}
					reqs = append(reqs, r)
					n += len(r.fns)
				case <-timer.C:
					break gather
				}
			}
			timer.Stop()
		} else {
		drain:
			for n < s.opts.MaxBatch {
				select {
				case r, ok := <-s.reqs:
					if !ok {
						break drain
					}
					reqs = append(reqs, r)
					n += len(r.fns)
				default:
					break drain
				}
			}
		}
		s.synced <- s.apply(reqs)
	}
}

// apply runs the transactions of reqs in order and commits their writes.
func (s *Store) apply(reqs []*request) *group {
	var start time.Time
	if s.opts.OnCommit != nil {
		start = time.Now()
	}
	tx := &txn{db: s.db, batch: s.db.NewIndexedBatch()}
	for _, r := range reqs {
		for i, fn := range r.fns {
			markLen, markCount := tx.batch.Len(), tx.batch.Count()
			err := runTxn(fn, tx)
			tx.closeIter()
			r.errs[i] = err
			if err != nil && tx.batch.Len() != markLen {
				if rerr := tx.rollback(markLen, markCount); rerr != nil {
					return &group{reqs: reqs, err: rerr, start: start}
				}
			}
		}
	}
	g := &group{reqs: reqs, start: start}
	if tx.batch.Empty() {
		_ = tx.batch.Close()
		return g
	}
	g.wrote = true
	g.batch = tx.batch
	var err error
	if s.opts.NoSync {
		err = g.batch.Commit(pebble.NoSync)
	} else {
		err = s.db.ApplyNoSyncWait(g.batch, pebble.Sync)
		if err == nil {
			return g // the syncer waits for the fsync
		}
	}
	_ = g.batch.Close()
	g.batch = nil
	if err != nil {
		g.err = fmt.Errorf("commit to store %q: %w", s.dir, err)
	}
	return g
}

// runTxn runs fn, turning a panic into an error so one bad command cannot
// take the store down with it.
func runTxn(fn kv.TxnFunc, tx *txn) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("pebblestore: transaction panicked: %v", p)
		}
	}()
	return fn(tx)
}

// sync releases groups in order once their writes are durable.
//
// Once a group fails to commit or sync, every later group fails too, reads
// included: its writes were applied to the memtable before the failure was
// known and would otherwise stay visible to later reads of this process,
// and Pebble keeps a failed WAL failed. Restarting the process recovers the
// store to its last durable state.
func (s *Store) sync() {
	defer close(s.done)
	var broken error
	for g := range s.synced {
		err := g.err
		if g.batch != nil {
			if serr := g.batch.SyncWait(); serr != nil && err == nil {
				err = fmt.Errorf("sync store %q: %w", s.dir, serr)
			}
			_ = g.batch.Close()
		}
		switch {
		case err != nil && broken == nil:
			broken = fmt.Errorf("store %q: %w: %w", s.dir, ErrFailed, err)
		case err == nil && broken != nil:
			err = broken
		}
		// Observe before releasing, so that a caller whose Update has
		// returned finds its commit already counted.
		if s.opts.OnCommit != nil {
			s.observe(g, err)
		}
		for _, r := range g.reqs {
			r.done <- err
		}
	}
}

// observe reports a released group to Options.OnCommit.
func (s *Store) observe(g *group, err error) {
	info := CommitInfo{Dir: s.dir, Requests: len(g.reqs), Wrote: g.wrote, Latency: time.Since(g.start), Err: err}
	for _, r := range g.reqs {
		info.Transactions += len(r.fns)
	}
	s.opts.OnCommit(info)
}

// txn implements kv.Txn over an indexed batch. Until the group writes
// anything, reads go straight to the database, which is cheaper than reading
// through an empty batch.
type txn struct {
	db    *pebble.DB
	batch *pebble.Batch
	iter  *pebble.Iterator
	buf   []byte
	val   []byte
}

func (t *txn) reader() pebble.Reader {
	if t.batch.Empty() {
		return t.db
	}
	return t.batch
}

func (t *txn) closeIter() {
	if t.iter != nil {
		_ = t.iter.Close()
		t.iter = nil
	}
}

// rollback drops every write made after the batch had markLen bytes and
// markCount entries, by rebuilding the indexed batch from that prefix.
func (t *txn) rollback(markLen int, markCount uint32) error {
	repr := t.batch.Repr()
	nb := t.db.NewIndexedBatch()
	if markCount > 0 {
		prefix := append([]byte(nil), repr[:markLen]...)
		binary.LittleEndian.PutUint32(prefix[8:12], markCount)
		tmp := t.db.NewBatch()
		if err := tmp.SetRepr(prefix); err != nil {
			return fmt.Errorf("pebblestore: roll back failed transaction: %w", err)
		}
		if err := nb.Apply(tmp, nil); err != nil {
			return fmt.Errorf("pebblestore: roll back failed transaction: %w", err)
		}
		_ = tmp.Close()
	}
	_ = t.batch.Close()
	t.batch = nb
	return nil
}

func (t *txn) Get(key []byte) ([]byte, int64, bool, error) {
	raw, closer, err := t.reader().Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	t.val = append(t.val[:0], raw...)
	_ = closer.Close()
	value, expireAt, err := kv.ParseStoredRecord(t.val)
	if err != nil {
		return nil, 0, false, fmt.Errorf("key %q: %w", key, err)
	}
	return value, expireAt, true, nil
}

func (t *txn) Set(key, value []byte, expireAt int64) error {
	t.buf = kv.AppendStoredRecord(t.buf[:0], value, expireAt)
	return t.batch.Set(key, t.buf, nil)
}

func (t *txn) Delete(key []byte) error {
	return t.batch.Delete(key, nil)
}

func (t *txn) DeleteRange(start, end []byte) error {
	return t.batch.DeleteRange(start, end, nil)
}

func (t *txn) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	t.closeIter()
	iter, err := t.reader().NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return err
	}
	t.iter = iter
	defer t.closeIter()
	for ok := iter.First(); ok; ok = iter.Next() {
		raw, err := iter.ValueAndErr()
		if err != nil {
			return err
		}
		value, expireAt, err := kv.ParseStoredRecord(raw)
		if err != nil {
			return fmt.Errorf("key %q: %w", iter.Key(), err)
		}
		more, err := fn(iter.Key(), value, expireAt)
		if err != nil || !more {
			return err
		}
	}
	return iter.Error()
}

// pebbleLogger sends Pebble's informational logging to slog at debug level.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	os.Exit(1)
}

var _ io.Closer = (*Store)(nil)
