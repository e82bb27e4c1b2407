package flowrun

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// StoreOptions configure a Store. The zero value is usable: EnsureDefaults
// fills every unset field, and Validate refuses values that make no sense.
// The limits are those of the kv connector of a flow (see docs/kv.md) and
// have the same defaults.
type StoreOptions struct {
	// NoSync releases a write once it is applied, before its write-ahead
	// log record is fsynced: the most recent acknowledged writes are lost
	// on a crash. Default false: a command returns only once its writes
	// are durable on disk.
	NoSync bool
	// MaxKeyLength is the longest key or prefix accepted, in characters.
	// Default kv.DefaultMaxKeyLength (255).
	MaxKeyLength int
	// MaxValueBytes is the largest value accepted, measured on its
	// canonical JSON encoding. Default kv.DefaultMaxValueBytes (4 MiB).
	MaxValueBytes int
	// MaxGetAll is the most entries GetAll returns; a prefix matching more
	// fails with ErrTooManyEntries. Default kv.DefaultMaxGetAll (10000).
	MaxGetAll int
	// MaxScan is the page size of Keys and Scan when the call gives none,
	// and the largest one a call may ask for. Default kv.DefaultMaxScan
	// (10000).
	MaxScan int
	// MaxResultBytes is the budget in bytes read of one command, or of all
	// the commands of one Update. Default kv.DefaultMaxResultBytes (16 MiB).
	MaxResultBytes int
	// MaxKeysVisited is the budget in keys visited of one command, or of
	// all the commands of one Update: it bounds how long one call holds
	// the store's writer. Default kv.DefaultMaxKeysVisited (100,000).
	MaxKeysVisited int
	// ReclaimInterval is how often a background goroutine deletes the
	// expired keys of the namespaces opened with Store.Namespace (expired
	// keys are invisible at once; this only reclaims their space).
	// Default kv.DefaultReclaimInterval (one minute).
	ReclaimInterval time.Duration
	// NoReclaim switches the background reclaiming off: expired keys stay
	// invisible and keep their space until Namespace.Reclaim is called.
	NoReclaim bool
	// OnExpired, when set, is told of the expired keys of every namespace
	// opened with Store.Namespace as the reclaiming (background or
	// Namespace.Reclaim) is about to delete them, and a key is deleted
	// only once it returned nil: an error leaves the keys to be reported
	// again by a later pass (at least once). It is called from the
	// reclaiming goroutine and must not call the Store. Keys written,
	// deleted or cleared after expiring and before a pass are not
	// reported. Default nil.
	OnExpired func(ctx context.Context, keys []ExpiredKey) error
	// Now is the clock deciding expiry. Default time.Now; tests set their
	// own to make expiry deterministic.
	Now func() time.Time
	// OnCommit, when set, is called once per commit group of the store
	// once its outcome is known, from the store's syncer goroutine: how
	// many transactions and calls it held, whether it wrote, how long it
	// took. Metrics use it; it must be quick and must not call the store.
	// Default nil.
	OnCommit func(CommitInfo)
	// Logger receives Pebble's log lines at debug level, store lifecycle
	// events and reclaim failures. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills the unset (zero) fields of o with their defaults.
func (o *StoreOptions) EnsureDefaults() {
	if o.MaxKeyLength == 0 {
		o.MaxKeyLength = kv.DefaultMaxKeyLength
	}
	if o.MaxValueBytes == 0 {
		o.MaxValueBytes = kv.DefaultMaxValueBytes
	}
	if o.MaxGetAll == 0 {
		o.MaxGetAll = kv.DefaultMaxGetAll
	}
	if o.MaxScan == 0 {
		o.MaxScan = kv.DefaultMaxScan
	}
	if o.MaxResultBytes == 0 {
		o.MaxResultBytes = kv.DefaultMaxResultBytes
	}
	if o.MaxKeysVisited == 0 {
		o.MaxKeysVisited = kv.DefaultMaxKeysVisited
	}
	if o.ReclaimInterval == 0 {
		o.ReclaimInterval = kv.DefaultReclaimInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports the first field of o that is negative: there is no
// "unlimited" (raise a limit instead) and no negative interval (set
// NoReclaim instead).
func (o *StoreOptions) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxKeyLength", int64(o.MaxKeyLength)},
		{"MaxValueBytes", int64(o.MaxValueBytes)},
		{"MaxGetAll", int64(o.MaxGetAll)},
		{"MaxScan", int64(o.MaxScan)},
		{"MaxResultBytes", int64(o.MaxResultBytes)},
		{"MaxKeysVisited", int64(o.MaxKeysVisited)},
		{"ReclaimInterval", int64(o.ReclaimInterval)},
	} {
		if f.v < 0 {
			return fmt.Errorf("flowrun: StoreOptions.%s is %d, must be positive (0 means the default)", f.name, f.v)
		}
	}
	return nil
}

// CommitInfo describes one commit group, for StoreOptions.OnCommit.
type CommitInfo = pebblestore.CommitInfo

// pebbleOptions are the options of the store's directory.
func (o *StoreOptions) pebbleOptions() pebblestore.Options {
	return pebblestore.Options{NoSync: o.NoSync, Logger: o.Logger, OnCommit: o.OnCommit}
}

// kvOptions are the connector options of namespace ns.
func (o *StoreOptions) kvOptions(ns string) kv.Options {
	return kv.Options{
		Namespace:       ns,
		MaxKeyLength:    o.MaxKeyLength,
		MaxValueBytes:   o.MaxValueBytes,
		MaxGetAll:       o.MaxGetAll,
		MaxScan:         o.MaxScan,
		MaxResultBytes:  o.MaxResultBytes,
		MaxKeysVisited:  o.MaxKeysVisited,
		Now:             o.Now,
		ReclaimInterval: -1, // the Store reclaims every namespace from one goroutine
		OnExpired:       o.OnExpired,
		Logger:          o.Logger,
	}
}

// Store is a durable key-value store in a directory, the store a flow's kv
// connector uses, opened for direct use from Go. Its keys live in
// namespaces (see Namespace). A Store is safe for concurrent use by many
// goroutines; the commands of concurrent calls are committed together, one
// fsync for a whole group. Close it when done.
type Store struct {
	dir  string
	opts StoreOptions
	// pool holds the store's Pebble instance; flows run with
	// RunOptions.Store open the same directory through it, sharing that
	// instance instead of contending for the directory's lock.
	pool *pebblestore.Pool
	// base is the connector of the default namespace; every Namespace
	// handle runs its commands through a connector derived from it.
	base *kv.Connector

	// mu guards closed and names. Commands hold it shared while they
	// run, so Close waits for the commands in progress.
	mu     sync.RWMutex
	closed bool
	// names are the namespaces handed out, for the background
	// reclaiming: a name costs its bytes and a map entry, not a
	// connector.
	names map[string]struct{}

	stop    context.CancelFunc
	janitor sync.WaitGroup
}

// OpenStore opens the store in dir, creating the directory and the store
// when missing. A directory is opened by one process at a time (Pebble
// locks it), and by one Store of a process at a time. ctx bounds the
// opening only.
func OpenStore(ctx context.Context, dir string, opts StoreOptions) (*Store, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("flowrun: open store %q: %w", dir, err)
	}
	pool := pebblestore.NewPool()
	b, err := pool.Open(dir, opts.pebbleOptions())
	if err != nil {
		return nil, fmt.Errorf("flowrun: %w", err)
	}
	base, err := kv.New(b, opts.kvOptions(kv.DefaultNamespace))
	if err != nil {
		_ = b.Close()
		return nil, fmt.Errorf("flowrun: open store %q: %w", dir, err)
	}
	jctx, stop := context.WithCancel(context.Background())
	s := &Store{dir: dir, opts: opts, pool: pool, base: base, names: map[string]struct{}{}, stop: stop}
	if !opts.NoReclaim {
		s.janitor.Add(1)
		go s.reclaimLoop(jctx)
	}
	return s, nil
}

// Dir returns the directory the store was opened on.
func (s *Store) Dir() string { return s.dir }

// Close waits for the commands in progress, stops the background
// reclaiming and closes the store; every acknowledged write is durable
// (unless NoSync). Calls after the first, and every later command, fail
// with ErrClosed.
func (s *Store) Close() error {
	// The janitor stops first: it takes mu itself.
	s.stop()
	s.janitor.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	if err := s.base.Close(context.Background()); err != nil {
		return fmt.Errorf("flowrun: close store %q: %w", s.dir, err)
	}
	return nil
}

// Namespace returns a handle on namespace name ("" is kv.DefaultNamespace,
// the namespace of a kv connector given none): the keys of one namespace
// are invisible to every other, as the keys of two flows sharing a store
// directory are, and a flow's kv connector with namespace: name sees the
// same keys. A handle is cheap (no I/O, no goroutine, a few hundred bytes
// freed with it), and two handles of one name are interchangeable, so a
// program may take one per request. The Store remembers each name handed
// out, for the background reclaiming of expired keys, until it is closed.
func (s *Store) Namespace(name string) *Namespace {
	if name == "" {
		name = kv.DefaultNamespace
	}
	s.mu.Lock()
	if !s.closed {
		s.names[name] = struct{}{}
	}
	s.mu.Unlock()
	return &Namespace{st: s, name: name, conn: s.base.WithNamespace(name)}
}

// reclaimLoop deletes the expired keys of every open namespace every
// ReclaimInterval until ctx is done.
func (s *Store) reclaimLoop(ctx context.Context) {
	defer s.janitor.Done()
	t := time.NewTicker(s.opts.ReclaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.RLock()
		names := make([]string, 0, len(s.names))
		for n := range s.names {
			names = append(names, n)
		}
		s.mu.RUnlock()
		for _, name := range names {
			if _, err := s.base.WithNamespace(name).Reclaim(ctx); err != nil && ctx.Err() == nil {
				s.opts.Logger.Warn("flowrun: reclaiming expired keys failed", "dir", s.dir, "namespace", name, "error", err)
			}
		}
	}
}
