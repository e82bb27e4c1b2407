// Package pebblestore is the Pebble-backed implementation of kv.Backend.
//
// One writer goroutine per store applies transactions in arrival order into
// one Pebble batch per group, so each transaction reads the writes of every
// one before it, and commits a whole group of transactions with one WAL sync.
// Results are released only after that sync (unless Options.NoSync), so a
// caller that saw a result can never lose the write behind it. Three
// goroutines form the pipeline: the writer builds a group while a committer
// applies the one before to the database and the row cache, and a syncer
// waits for the WAL syncs and releases results in order. The writer reads
// the previous group's writes from its Pebble batch until that group is applied
// (point reads by key; a scan or range deletion waits for it), and no later
// group completes before an earlier one has synced.
//
// Point reads go through a row cache of recently read and written records
// (Options.RowCacheBytes) that the committer keeps in step with every group
// it applies, so a read from the cache is exactly as fresh as one from Pebble.
package pebblestore

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/batchrepr"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

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
	// ErrDirIdentity reports a store directory that cannot be identified
	// safely (see dir.go); the error names the paths involved.
	ErrDirIdentity = errors.New("store directory cannot be identified safely")
)

// Defaults for Options.
const (
	DefaultMaxGroup = 8192
	// DefaultCacheBytes is the block cache size. Pebble's own default (8
	// MiB) makes point reads of a store of a few hundred thousand keys go to
	// disk; 64 MiB keeps such a store's hot blocks in memory while leaving
	// a flow well inside a few hundred MiB of RSS.
	DefaultCacheBytes = 64 << 20
	// DefaultMemTableBytes is the size Pebble's memtables grow to. Stream
	// state is rewritten far more than it grows (counters, latest values),
	// and a key rewritten within one memtable is flushed once: with
	// Pebble's default (4 MiB) the same keys are flushed and compacted
	// again and again, while much larger memtables make every insert's
	// skiplist search slower (flowrun bench: 16 MiB did best of 4, 16 and
	// 32 over put, get, increment and cas). Two memtables may be in memory
	// at once (one flushing).
	DefaultMemTableBytes = 16 << 20
	// DefaultPaceWork and DefaultPaceRest are how a store paces Pebble's
	// flushes and compactions (Options.Pace): not at all. Pacing at 2 ms of
	// work and 2 ms of rest took a quarter off the p99 of puts at half the
	// saturated rate on 2 cores, but made that of increments and replay's
	// time worse (docs/performance.md, "Pacing the background work").
	DefaultPaceWork               = 2 * time.Millisecond
	DefaultPaceRest time.Duration = 0
	// DefaultRowCacheBytes is the row cache size: at about 300 bytes per
	// entry of a 100-byte value it holds roughly a hundred thousand hot
	// keys, for a fixed 32 MiB of memory.
	DefaultRowCacheBytes = 32 << 20
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
	// MaxGroup bounds the number of transactions committed as one group:
	// the writer takes queued requests until the group has at least this
	// many, the last one whole (a request, one Update or Submit, is never
	// split), so a group may pass it by up to one request. Larger groups
	// are cheaper per write (BenchmarkStoreSubmitQueued, loaded machine:
	// requests of 5,000 puts in groups of 5,000 took 1.07-1.45x the time
	// per put of groups of 9,000-12,500), so a strict bound at 8192, which would
	// leave the connector's merged slices of ~5,000 events one per group,
	// was not taken. Default DefaultMaxGroup.
	MaxGroup int
	// MaxGroupBuild, when positive, bounds a group by the time the writer
	// spends running its transactions: once that long has passed since
	// the group's first transaction started, the group is committed after
	// the request being run, and the requests already taken start the
	// next group. A request (one Update or Submit) is never split, so a
	// single request runs whole however long it takes. When requests pile
	// up at the writer, it caps each transaction's wait for the rest of its
	// group (a group of 8192 puts costs each of them several milliseconds
	// of build and apply); it does not make groups smaller when nothing is
	// queued. It costs throughput: Pebble inserts a group's sorted records
	// into its memtable faster the more of them there are (the closer
	// consecutive keys, the more of each search's path the one before
	// left in the processor's caches; see sortByKey); with groups of about 2,000
	// instead of 5,000-8,000, a saturated increment workload spent 9% more
	// of its CPU in that insert (CPU profiles, flowrun bench). Default 0:
	// groups are bounded by MaxGroup only.
	MaxGroupBuild time.Duration
	// MaxDelay is how long the writer may wait for more transactions to
	// fill a group before committing it. Default 0: commit what is queued.
	// Groups still form naturally while earlier groups are syncing.
	MaxDelay time.Duration
	// CacheBytes is the size of Pebble's block cache. Default
	// DefaultCacheBytes.
	CacheBytes int64
	// MemTableBytes is the size Pebble's memtables grow to (they start
	// small and double). Default DefaultMemTableBytes.
	MemTableBytes int64
	// Pace bounds the share of a processor each of Pebble's memtable
	// flushes and compactions takes while writing its sstables (pace.go),
	// so that the flow keeps processors while they run: what decides the
	// tail latency of a load below saturation on a machine of few cores.
	// Default: DefaultPaceWork and DefaultPaceRest, no pacing.
	Pace Pace
	// NoPace turns pacing off (Pace is then ignored).
	NoPace bool
	// RowCacheBytes bounds the row cache: recently read or written records
	// (and keys recently found absent) kept by key in front of Pebble, so
	// that reads of hot keys (get, and the read of increment, cas and
	// every read-modify-write command) skip Pebble's memtable and sstable
	// lookups, which dominate those commands' cost. It costs up to this
	// much memory, counted as key and record bytes plus a fixed overhead
	// per entry, entries not read since they were cached evicted first
	// (a second chance for those read again, as CLOCK gives); a write
	// updates a cached key in place and otherwise adds nothing, so
	// write-only workloads pay only a lookup per written key. Reads stay
	// exactly as fresh as without it, and durability is unchanged. Scans
	// do not use it. Default DefaultRowCacheBytes; negative disables it.
	RowCacheBytes int64
	// DiskReserveBytes is the free space a commit must leave on the
	// store's filesystem, beyond its own log records and those of groups
	// still syncing: a group that would leave less is refused with
	// ErrDiskFull, the store fails (ErrFailed), and Open refuses to start
	// with less free. It keeps a store filled by its own writes from
	// running Pebble out of space (see diskfault.go). Default 0: 1% of
	// the filesystem's size, within [MinDiskReserveBytes,
	// MaxDiskReserveBytes]; negative disables the check.
	DiskReserveBytes int64
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
	// AcceptWALLoss opens a store whose write-ahead log holds intact
	// records after a damaged one (ErrWALCorrupt), letting Pebble drop
	// them: each damaged log is first copied to the lost-wal subdirectory
	// of the store and the loss logged at error level. Default false: Open
	// refuses such a store with a *WALLossError and changes nothing.
	AcceptWALLoss bool
	// Replicator, when set, receives the writes of every commit group
	// that wrote, in commit order, just before the group is applied to
	// the database; the position it returns is written in the group's own
	// Pebble batch (Position reads it back), and the group's results are
	// released only after its wait has returned nil (and, unless NoSync,
	// after the WAL sync). A replication failure fails the group and the
	// store (ErrFailed), like a failed WAL sync. A partitioned flow sets
	// it to append every group to its partition's changelog
	// (docs/scaling.md). Default nil.
	Replicator Replicator
	// Partition says dir is the store of one partition of a partitioned
	// kv connector, made and brought up to date by its owner
	// (connectors/kv/owner), which marks it with PartitionMarker. Without
	// it Open refuses such a directory, and one holding partition stores,
	// with ErrPartitionDir: their state lives in the partitions'
	// changelogs and a local copy may be stale or partial. Default false.
	Partition bool

	// beforeApply, when set, is called by the committer before it applies
	// each group: tests slow it down so that groups are built while the
	// one before is still being applied.
	beforeApply func()
	// now, when set, is the writer's clock for MaxGroupBuild; tests set
	// it. Default time.Now.
	now func() time.Time
}

// Replicator copies a store's commit groups elsewhere (a partition's
// changelog) before their results are released.
type Replicator interface {
	// Replicate is called by the store's committer goroutine with the
	// writes of each group that wrote, in commit order, just before the
	// group is applied to the database: the writes of its successful
	// transactions, values without the store's expiry encoding, in the
	// order they were made or, in a group of 64 writes or more
	// (minSortedRecords), in key order with only the last write of each
	// key (the group applies atomically, so the state after it is the
	// same; see sortByKey), and input, the highest input position its
	// transactions noted (kv.NoteInput; 0 when none did). writes and
	// their bytes are valid only during the call.
	//
	// pos, when not nil, is the group's position in the copy: the store
	// writes it in the group's own Pebble batch, so that after a crash
	// Position names the last group the database holds. err fails the
	// group before it is applied, and the store. wait is called once by
	// the syncer goroutine, in the same order, before the group's results
	// are released; a non-nil error fails the group and the store. The
	// copy may thus hold a group whose local commit then failed: its
	// commands were reported failed, as after a timeout whose write went
	// through. Replicate must not block for long: the committer waits for
	// it.
	Replicate(writes []kv.Write, input uint64) (pos []byte, wait func() error, err error)
}

// positionKey holds the position of the last group replicated or
// restored (Store.Position). It sorts below every key of the kv layout
// (whose keys start with a letter), is never replicated, and Scan never
// shows it.
var positionKey = []byte("\x00flowrun.position")

// PositionSetter is implemented by the Txn of a Store's Update: a
// restore from a replica (a partition's changelog) records the position
// it restored up to in the same Pebble batch as the writes it applied.
type PositionSetter interface {
	// SetPosition makes pos the store's Position once the transaction's
	// group is committed (the last one set in a group wins, and a
	// Replicator's overrides it); a transaction that fails sets nothing.
	SetPosition(pos []byte) error
}

// Snapshot is a consistent read-only view of a Store at one moment: it
// holds whole commit groups, and the position recorded with the last of
// them. Close it when done: it pins the data it sees.
type Snapshot struct {
	snap *pebble.Snapshot
}

// Snapshot returns a view of the store as of now.
func (s *Store) Snapshot() *Snapshot { return &Snapshot{snap: s.db.NewSnapshot()} }

// Position returns the position recorded with the last group the
// snapshot holds (see Store.Position).
func (p *Snapshot) Position() ([]byte, error) {
	v, closer, err := p.snap.Get(positionKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pebblestore: read the position of a snapshot: %w", err)
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

// Scan calls fn for each record of the snapshot with start <= key < end
// (nil end: no bound), in key order, as kv.Txn's Scan does.
func (p *Snapshot) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	t := &txn{}
	return t.scan(p.snap, start, end, fn)
}

// Close releases the snapshot.
func (p *Snapshot) Close() error { return p.snap.Close() }

// Position returns the position recorded with the last group that had
// one (see Replicator and PositionSetter), nil when none was. Call it
// before any Update: a group in flight may change it.
func (s *Store) Position() ([]byte, error) {
	v, closer, err := s.db.Get(positionKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pebblestore: read the position of %q: %w", s.dir, err)
	}
	defer closer.Close()
	return bytes.Clone(v), nil
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
	if o.MaxGroup <= 0 {
		o.MaxGroup = DefaultMaxGroup
	}
	if o.MaxDelay < 0 {
		o.MaxDelay = 0
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = DefaultCacheBytes
	}
	if o.MemTableBytes <= 0 {
		o.MemTableBytes = DefaultMemTableBytes
	}
	if o.RowCacheBytes == 0 {
		o.RowCacheBytes = DefaultRowCacheBytes
	}
	if o.Pace == (Pace{}) {
		o.Pace = Pace{Work: DefaultPaceWork, Rest: DefaultPaceRest}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.now == nil {
		o.now = time.Now
	}
}

// PebbleOptions returns the Pebble options a Store opens its database
// with, on cache (which the caller creates with CacheBytes and releases):
// the same tuning serves a raw Pebble baseline in benchmarks. Options.Pebble,
// when set, has been applied. o must have its defaults filled in.
func (o *Options) PebbleOptions(cache *pebble.Cache) *pebble.Options {
	popts := &pebble.Options{
		Logger:       pebbleLogger{o.Logger},
		Cache:        cache,
		MemTableSize: uint64(o.MemTableBytes),
		// A damaged sstable fails the reads that meet it (see corruption.go).
		EventListener: corruptionListener(o.Logger),
	}
	// Bloom filters on every level: the command set is mostly point reads
	// (get, exists, and the read of every cas, increment and conditional
	// write), and without a filter a Get searches every sstable whose key
	// range covers the key, which for keys spread over the key space is
	// every file of L0 and one per other level. Ten bits per key, about
	// 1% false positives, as CockroachDB and RocksDB use.
	for i := range popts.Levels {
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(bloomBitsPerKey)
	}
	if o.Pebble != nil {
		o.Pebble(popts)
	}
	return popts
}

// Store is a Pebble database serving kv.Backend transactions. It is safe for
// concurrent use.
type Store struct {
	db    *pebble.DB
	dir   string
	where storeDir // what dir is (dir.go)
	lock  *os.File // the directory, flocked until Close; nil without flock
	opts  Options

	closeMu sync.RWMutex
	closed  bool
	reqs    chan *request
	commits chan *group   // from the writer to the committer
	synced  chan *group   // from the committer to the syncer
	done    chan struct{} // closed when the syncer has finished

	unapplied [2]*unappliedIndex // the writer's, used by every other group
	// previousGroupReads counts point reads answered from the previous
	// group's Pebble batch (RowCacheStats.PreviousGroup).
	previousGroupReads atomic.Uint64
	prefetched         atomic.Uint64 // RowCacheStats.Prefetched
	batchSizeHint      int           // the writer's: the last group's Pebble batch size
	cache              *rowCache     // nil when disabled
	pacer              *pacer        // paces flushes and compactions; nil when off
	writerProbe        probeScratch
	probes             sync.Pool // *probeScratch for ViewHinted

	// Read-only transactions (View) bypass the writer; these let them wait
	// for the durability of what they read. applying counts groups that
	// write, numbered before their Pebble batch becomes visible; the syncer
	// advances released (under relMu) as groups reach their outcome.
	applying atomic.Uint64
	relMu    sync.Mutex
	relCond  *sync.Cond
	released uint64
	broken   error // set once a group failed; every later result fails

	stop  *failStop         // the first write error of the store's files
	guard *diskGuard        // free-space check before each group
	bgErr *backgroundErrors // Pebble's background errors
}

var (
	_ kv.Viewer          = (*Store)(nil)
	_ kv.ViewHinter      = (*Store)(nil)
	_ kv.Submitter       = (*Store)(nil)
	_ kv.HintedSubmitter = (*Store)(nil)
)

var _ kv.Backend = (*Store)(nil)

type request struct {
	fns  []kv.TxnFunc
	errs []error
	// hints are the keys each fn is expected to read (SubmitHinted), or
	// nil: the writer prefetches them from the row cache.
	hints [][][]byte
	done  chan error
}

type group struct {
	seq   uint64        // its number in Store.applying; 0 for groups that wrote nothing
	batch *pebble.Batch // nil when the group wrote nothing
	// repr is the Pebble batch's representation as built: Pebble drops a large
	// Pebble batch's contents from the Batch once it is committed.
	repr []byte
	// unapplied indexes the records of repr by key, for reads of the next
	// group; nil when the group indexed its Pebble batch instead.
	unapplied *unappliedIndex
	known     []knownRecord // for each record of repr, the row cache entry the writer read for its key (or nil) and the key's hash
	reqs      []*request
	err       error // build or commit error, reported to every request
	// logBytes counts the group's bytes in diskGuard.unsynced from its
	// admission until the syncer is done with it.
	logBytes int64
	start    time.Time
	wrote    bool
	// awaitSync tells the syncer to wait for the Pebble batch's WAL sync.
	awaitSync bool
	// replicated is the Replicator's wait for the group, nil without one.
	replicated func() error
	// input is the highest input position its transactions noted.
	input uint64
	// committed is closed once the committer is done with the group: its
	// writes are in the database and the row cache, or it failed.
	committed chan struct{}
	// applied is set, before committed is closed, when the group's writes
	// reached the database and the row cache: the next group's reads then
	// find them there and stop searching repr (see txn.Get). A load of
	// applied costs far less than the lookup in repr's index it saves.
	applied atomic.Bool
	// refs counts the holders of the Pebble batch: the writer while reads may search
	// repr, and the committer, whose hold passes to the syncer when there
	// is a sync to wait for. The last one closes it, and Pebble may then
	// reuse its memory.
	refs atomic.Int32
}

// release drops one hold on g's Pebble batch.
func (g *group) release() {
	if g.refs.Add(-1) == 0 {
		_ = g.batch.Close()
	}
}

// Open opens (creating when missing) the Pebble store in dir. A directory
// it creates is private to the user (0700), and so is every file of the
// store (0600). A directory already held open, by another process or by
// another Store of this process under any path, is refused with ErrLocked;
// use a Pool to share one store in a process.
func Open(dir string, opts Options) (*Store, error) {
	opts.EnsureDefaults()
	where, lock, err := lockStoreDir(dir, opts.Logger)
	if err != nil {
		return nil, err
	}
	if !opts.Partition {
		if err := checkNotPartitioned(dir, where.real); err != nil {
			if lock != nil {
				_ = lock.Close()
			}
			return nil, err
		}
	}
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref() // the database holds its own reference
	popts := opts.PebbleOptions(cache)
	// The file-mode wrapper sits beneath the fail-stop one, which must be
	// the outermost filesystem Pebble sees.
	fs := privateFS{FS: cmp.Or(popts.FS, vfs.Default)}
	if !opts.NoPace && opts.Pace.on() {
		fs.pacer = newPacer(opts.Pace)
		l := fs.pacer.listener()
		if popts.EventListener != nil {
			l = pebble.TeeEventListener(l, *popts.EventListener)
		}
		popts.EventListener = &l
	}
	popts.FS = fs
	releaseLock := func() {
		if lock != nil {
			_ = lock.Close()
		}
	}
	stop, guard, bgErr, err := guardFiles(where.real, opts, popts)
	if err != nil {
		releaseLock()
		return nil, fmt.Errorf("open store %q: %w", dir, err)
	}
	if err := checkBeforeReplay(where.real, popts, opts); err != nil {
		releaseLock()
		return nil, err
	}
	db, err := pebble.Open(where.real, popts)
	if err != nil {
		releaseLock()
		if lock != nil && strings.Contains(err.Error(), "held by current process") {
			// Pebble's lock table is keyed by path and the flock by
			// directory: this path's directory was replaced under a
			// store still open on the one before.
			return nil, fmt.Errorf("open store %q: %w: a store of this process is open on the directory that was at %q before it was replaced",
				dir, ErrDirIdentity, where.real)
		}
		if isLockError(err) {
			return nil, fmt.Errorf("open store %q: %w (real path %q)", dir, ErrLocked, where.real)
		}
		return nil, fmt.Errorf("open store %q: %w", dir, err)
	}
	if err := stop.failed(); err != nil {
		// Opening wrote nothing after the failure: the files are as
		// they were, for the next attempt.
		bgErr.stopDelays()
		_ = db.Close()
		return nil, fmt.Errorf("open store %q: %w", dir, fsFailure(dir, err))
	}
	s := &Store{
		db:      db,
		dir:     dir,
		where:   where,
		lock:    lock,
		opts:    opts,
		pacer:   fs.pacer,
		reqs:    make(chan *request, 64),
		commits: make(chan *group, 1),
		synced:  make(chan *group, 64),
		done:    make(chan struct{}),

		stop:  stop,
		guard: guard,
		bgErr: bgErr,
	}
	// One hash seed for the row cache and both unapplied indexes: the
	// writer hashes a key once for its lookups in all three (txn.hash).
	seed := maphash.MakeSeed()
	s.unapplied = [2]*unappliedIndex{newUnappliedIndexSeed(seed), newUnappliedIndexSeed(seed)}
	if opts.RowCacheBytes > 0 {
		s.cache = newRowCacheSeed(opts.RowCacheBytes, seed)
	}
	s.relCond = sync.NewCond(&s.relMu)
	go s.write()
	go s.commit()
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
	req, err := s.enqueue(ctx, fns, nil, errs)
	if err != nil || req == nil {
		return err
	}
	return <-req.done
}

// Submit implements kv.Submitter: the transactions join the writer's queue
// behind everything queued before, and wait reports their outcome. As with
// Update, once queued they are waited for even if ctx is cancelled.
func (s *Store) Submit(ctx context.Context, fns []kv.TxnFunc, errs []error) (wait func() error) {
	return s.SubmitHinted(ctx, fns, nil, errs)
}

// SubmitHinted implements kv.HintedSubmitter: it is Submit, except that
// the writer looks the keys of hints (hints[i] for fns[i], nil for none)
// up in the row cache in batches just before running the fns that read
// them (see rowCache.prefetch), so that those reads find what they need
// in the processor's caches. Hints change only speed.
func (s *Store) SubmitHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) (wait func() error) {
	req, err := s.enqueue(ctx, fns, hints, errs)
	if err != nil || req == nil {
		return func() error { return err }
	}
	return func() error { return <-req.done }
}

// enqueue hands fns, with their read hints or nil, to the writer. It
// returns a nil request, and no error, when there is nothing to do.
func (s *Store) enqueue(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) (*request, error) {
	if len(fns) != len(errs) {
		return nil, fmt.Errorf("pebblestore: Update given %d funcs and %d error slots", len(fns), len(errs))
	}
	if hints != nil && len(hints) != len(fns) {
		return nil, fmt.Errorf("pebblestore: Submit given %d funcs and %d read hints", len(fns), len(hints))
	}
	if len(fns) == 0 {
		return nil, nil
	}
	if s.cache == nil {
		hints = nil
	}
	req := &request{fns: fns, errs: errs, hints: hints, done: make(chan error, 1)}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	select {
	case s.reqs <- req:
		return req, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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
	s.bgErr.stopDelays()
	err := s.db.Close()
	s.bgErr.summary()
	if s.lock != nil {
		_ = s.lock.Close() // after Pebble's lock: the directory is free once both are
	}
	if err != nil {
		return fmt.Errorf("close store %q: %w", s.dir, err)
	}
	// A failed store reports its failure: Pebble, kept from seeing it,
	// closes cleanly.
	s.relMu.Lock()
	broken := s.broken
	s.relMu.Unlock()
	if broken == nil {
		broken = fsFailure(s.dir, s.stop.failed())
	}
	if broken != nil {
		return fmt.Errorf("close store %q: %w", s.dir, broken)
	}
	return nil
}

// write is the single writer goroutine: it gathers queued requests into a
// group, runs their transactions against one Pebble batch and hands the group to
// the committer. It builds the next group while the committer applies the
// previous one: reads of that group's keys are answered from its Pebble batch
// (txn.prev) until it is in the database and the row cache, which the
// writer waits for before building the group after next.
func (s *Store) write() {
	defer close(s.commits)
	var (
		timer   *time.Timer
		prev    *group     // the last group handed to the committer, while reads may need it
		pending []*request // taken from s.reqs, not yet in a group, in arrival order
		queued  int        // transactions in pending
		built   int
	)
	defer func() {
		if prev != nil {
			s.retire(prev)
		}
	}()
	// take adds r, received with ok, to pending; the channel's end is
	// seen again by the receive below once pending is empty.
	take := func(r *request, ok bool) bool {
		if ok {
			pending = append(pending, r)
			queued += len(r.fns)
		}
		return ok
	}
	for {
		if len(pending) == 0 {
			if r, ok := <-s.reqs; !take(r, ok) {
				return
			}
		}
		if s.opts.MaxDelay > 0 && queued < s.opts.MaxGroup {
			if timer == nil {
				timer = time.NewTimer(s.opts.MaxDelay)
			} else {
				timer.Reset(s.opts.MaxDelay)
			}
		gather:
			for queued < s.opts.MaxGroup {
				select {
				case r, ok := <-s.reqs:
					if !take(r, ok) {
						break gather
					}
				case <-timer.C:
					break gather
				}
			}
			timer.Stop()
		} else {
		drain:
			for queued < s.opts.MaxGroup {
				select {
				case r, ok := <-s.reqs:
					if !take(r, ok) {
						break drain
					}
				default:
					break drain
				}
			}
		}
		// Consecutive groups use the two unapplied indexes in turn: the
		// previous group's stays readable while this one is built.
		g := s.build(pending, prev, s.unapplied[built%2])
		built++
		if rest := pending[len(g.reqs):]; len(rest) > 0 {
			// g holds the front of pending: the rest moves to a new
			// slice, which later requests are appended to.
			pending = append([]*request(nil), rest...)
			queued = 0
			for _, r := range pending {
				queued += len(r.fns)
			}
		} else {
			pending, queued = nil, 0
		}
		s.commits <- g
		if prev != nil {
			// The next group reads through g only, so the one before
			// must be in the database by then.
			s.retire(prev)
		}
		switch {
		case g.batch == nil:
			prev = nil // nothing of it for later reads to find
		case g.unapplied == nil:
			// Its Pebble batch cannot be searched by key: later reads must find
			// its writes in the database.
			s.retire(g)
			prev = nil
		default:
			prev = g
		}
	}
}

// retire waits until g's writes are in the database and the row cache (or
// failed to get there), then drops the writer's hold on its Pebble batch.
func (s *Store) retire(g *group) {
	<-g.committed
	g.release()
}

// build runs the transactions of a front part of reqs in order into one
// Pebble batch and numbers the group; g.reqs is that part: every request
// but those left once the group has been built for Options.MaxGroupBuild
// (when set), and always the first. Reads see the writes of earlier transactions of the group
// (unapplied), of prev, the group before it when the committer may not have
// applied it yet, and of the database. unapplied is the index the group
// uses; prev's is the other one.
func (s *Store) build(reqs []*request, prev *group, unapplied *unappliedIndex) *group {
	start := s.opts.now()
	g := &group{reqs: reqs, start: start, committed: make(chan struct{})}
	unapplied.reset()
	tx := &txn{db: s.db, batch: s.db.NewBatchWithSize(s.batchSizeHint), unapplied: unapplied, cache: s.cache, prev: prev}
	defer func() { s.previousGroupReads.Add(tx.prevReads) }()
	fail := func(err error) *group {
		_ = tx.batch.Close()
		g.err = err
		return g
	}
	for k, r := range reqs {
		if k > 0 && s.opts.MaxGroupBuild > 0 && s.opts.now().Sub(start) >= s.opts.MaxGroupBuild {
			g.reqs = reqs[:k:k]
			break
		}
		for i, fn := range r.fns {
			if r.hints != nil && i%prefetchChunk == 0 {
				hs := s.prefetch(r.hints[i:min(i+prefetchChunk, len(r.hints))], &s.writerProbe)
				s.writerProbe.sink ^= tx.prefetchIndexes(hs)
			}
			m := tx.mark()
			err := runTxn(fn, tx)
			tx.closeIter()
			r.errs[i] = err
			if err != nil {
				tx.position, tx.input = m.position, m.input
			}
			if err != nil && tx.changedSince(m) {
				if rerr := tx.rollback(m); rerr != nil {
					return fail(rerr)
				}
			}
		}
	}
	if !tx.indexed && len(tx.unapplied.refs) >= minSortedRecords {
		if err := tx.sortByKey(); err != nil {
			return fail(err)
		}
	}
	if tx.position != nil {
		// Last, after sorting: the row cache's entries index the records
		// before it.
		if err := tx.batch.Set(positionKey, tx.position, nil); err != nil {
			return fail(err)
		}
	}
	g.input = tx.input
	// The next group is likely of about the size of recent ones: giving
	// its Pebble batch the room at once saves growing it by copies as records are
	// added. The hint follows growth at once and shrinkage slowly.
	s.batchSizeHint = min(max(len(tx.batch.Repr()), s.batchSizeHint-s.batchSizeHint/8), maxBatchSizeHint)
	if tx.batch.Empty() {
		_ = tx.batch.Close()
		return g
	}
	g.wrote = true
	g.batch = tx.batch
	g.repr = g.batch.Repr()
	g.known = tx.recordKnown()
	if !tx.indexed {
		g.unapplied = unapplied
	}
	g.refs.Store(2) // the writer's hold and the committer's, passed on to the syncer
	// Numbered before its writes can be seen, so that a View that sees
	// them also sees the number and waits for the group.
	g.seq = s.applying.Add(1)
	return g
}

// commit is the committer goroutine: it applies each group's Pebble batch to the
// database and the row cache, in order, and hands the group to the syncer.
// Once a group has failed, later ones are not applied: they were built on
// its writes, and the syncer fails them all.
func (s *Store) commit() {
	defer close(s.synced)
	failed := false
	for g := range s.commits {
		switch {
		case g.err != nil:
			failed = true
		case g.batch != nil && failed:
			g.release()
		case g.batch != nil:
			if err := s.admit(g); err != nil {
				g.release()
				g.err = fmt.Errorf("commit to store %q: %w", s.dir, err)
				failed = true
				break
			}
			if s.opts.beforeApply != nil {
				s.opts.beforeApply()
			}
			s.apply(g)
			failed = g.err != nil
			g.applied.Store(!failed)
		}
		close(g.committed)
		s.synced <- g
	}
}

// apply commits g's Pebble batch and brings the row cache up to date with it.
func (s *Store) apply(g *group) {
	var err error
	if s.opts.Replicator != nil {
		err = s.replicate(g)
	}
	// The row cache takes the Pebble batch only after it is numbered (build), for
	// the same reason as the database: a View that reads one of its
	// records from the cache loads applying afterwards and so waits for
	// this group's sync. Pebble drops a large Pebble batch's contents from the
	// Batch once it is committed (they live on as a memtable of their
	// own), so the row cache reads the records through g.repr.
	if s.cache != nil {
		s.cache.beginPublish()
	}
	switch {
	case err != nil:
	case s.opts.NoSync:
		err = g.batch.Commit(pebble.NoSync)
	default:
		err = s.db.ApplyNoSyncWait(g.batch, pebble.Sync)
	}
	if s.cache != nil {
		// Before the group reaches the syncer, so that no result of it
		// is released while the cache still holds older records.
		if err == nil {
			s.cache.publish(g.repr, g.known)
		} else {
			// The store is failed from now on; an empty cache cannot
			// disagree with whatever the database kept.
			s.cache.clear()
		}
		s.cache.endPublish()
	}
	if err == nil && !s.opts.NoSync {
		g.awaitSync = true // the syncer waits for the fsync
		return
	}
	g.release()
	if err != nil {
		g.err = fmt.Errorf("commit to store %q: %w", s.dir, err)
	}
}

// replicate hands g's writes to the Replicator and adds the position it
// returns to g's Pebble batch, before the batch is applied. The Pebble
// batch may grow: g.repr keeps the records as built, which is all the
// row cache and the next group's reads need (the position is neither
// cached nor read through a Txn).
func (s *Store) replicate(g *group) error {
	ws, err := decodeWrites(g.repr)
	if err != nil {
		return err
	}
	pos, wait, err := s.opts.Replicator.Replicate(ws, g.input)
	if err != nil {
		return fmt.Errorf("replicate: %w", err)
	}
	g.replicated = wait
	if pos != nil {
		if err := g.batch.Set(positionKey, pos, nil); err != nil {
			return err
		}
	}
	return nil
}

// decodeWrites returns the writes of a Pebble batch representation built
// by txn, with Pebble's own reader (batchrepr), leaving out the position
// (positionKey). The slices point into repr.
func decodeWrites(repr []byte) ([]kv.Write, error) {
	var ws []kv.Write
	if h, ok := batchrepr.ReadHeader(repr); ok {
		ws = make([]kv.Write, 0, h.Count)
	}
	r := batchrepr.Read(repr)
	for {
		kind, key, value, ok, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("decode commit group for replication: %w", err)
		}
		if !ok {
			return ws, nil
		}
		if bytes.Equal(key, positionKey) {
			continue
		}
		switch kind {
		case pebble.InternalKeyKindSet:
			v, exp, err := kv.ParseStoredRecord(value)
			if err != nil {
				return nil, fmt.Errorf("decode commit group for replication: key %q: %w", key, err)
			}
			ws = append(ws, kv.Write{Op: kv.WriteSet, Key: key, Value: v, ExpireAt: exp})
		case pebble.InternalKeyKindDelete:
			ws = append(ws, kv.Write{Op: kv.WriteDelete, Key: key})
		case pebble.InternalKeyKindRangeDelete:
			ws = append(ws, kv.Write{Op: kv.WriteDeleteRange, Key: key, End: value})
		default:
			return nil, fmt.Errorf("decode commit group for replication: key %q: unexpected record kind %v", key, kind)
		}
	}
}

// runTxn runs fn, turning a panic into an error so one bad command cannot
// take the store down with it.
func runTxn(fn kv.TxnFunc, tx kv.Txn) (err error) {
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
		if g.awaitSync {
			if serr := g.batch.SyncWait(); serr != nil && err == nil {
				err = fmt.Errorf("sync store %q: %w", s.dir, serr)
			}
			g.release()
		}
		if g.replicated != nil {
			// Waited for whatever happened before: the Replicator
			// needs every wait called, in order.
			if rerr := g.replicated(); rerr != nil && err == nil {
				err = fmt.Errorf("replicate commit group of store %q: %w", s.dir, rerr)
			}
		}
		if g.logBytes != 0 {
			s.guard.unsynced.Add(-g.logBytes)
		}
		if err == nil && g.wrote {
			// A failed write of the store's files is dropped before
			// Pebble sees it (failStopFS): the sync above may have
			// synced nothing.
			if ferr := s.stop.failed(); ferr != nil {
				err = fmt.Errorf("sync store %q: %w", s.dir, fsFailure(s.dir, ferr))
			}
		}
		switch {
		case broken != nil:
			// Failed after the store did, whether or not this group met
			// an error of its own (a write after a failed WAL sync fails
			// its own sync): reported as the store's failure, which names
			// the first cause.
			err = broken
		case err != nil:
			broken = fmt.Errorf("store %q: %w: %w", s.dir, ErrFailed, err)
		}
		// Observe before releasing, so that a caller whose Update has
		// returned finds its commit already counted.
		if s.opts.OnCommit != nil {
			s.observe(g, err)
		}
		if g.seq != 0 || err != nil {
			s.relMu.Lock()
			s.released = max(s.released, g.seq)
			s.broken = broken
			s.relMu.Unlock()
			s.relCond.Broadcast()
		}
		for _, r := range g.reqs {
			r.done <- err
		}
	}
}

// observe reports a released group to Options.OnCommit.
func (s *Store) observe(g *group, err error) {
	info := CommitInfo{Dir: s.dir, Requests: len(g.reqs), Wrote: g.wrote, Latency: s.opts.now().Sub(g.start), Err: err}
	for _, r := range g.reqs {
		info.Transactions += len(r.fns)
	}
	s.opts.OnCommit(info)
}

// RowCacheStats reports the row cache's counters and size, zero when
// Options.RowCacheBytes disabled it, and the reads answered by the
// previous commit group.
func (s *Store) RowCacheStats() RowCacheStats {
	var st RowCacheStats
	if s.cache != nil {
		st = s.cache.stats()
	}
	st.PreviousGroup = s.previousGroupReads.Load()
	st.Prefetched = s.prefetched.Load()
	return st
}

// View implements kv.Viewer. The reads run in the caller's goroutine
// against the database, which already holds every group whose Update has
// returned: a group's Pebble batch is applied (and visible) before its results
// are released. They may also see groups applied but not yet synced; View
// then waits for those to be released, and fails if one of them failed, so
// no read result outlives a write that was lost. Point reads answered by
// the row cache obey the same rules: it never holds a record older than
// the database's once a group is released, and a record it got from a
// group is visible there only after the group is numbered.
func (s *Store) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return s.ViewHinted(ctx, fns, nil, errs)
}

// ViewHinted implements kv.ViewHinter: it is View, except that the keys of
// hints (hints[i] for fns[i], nil for none) are looked up in the row cache
// in batches just before the fns that read them run (see
// rowCache.prefetch), so that those reads find what they need in the
// processor's caches. Hints change only speed.
func (s *Store) ViewHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	if len(fns) != len(errs) {
		return fmt.Errorf("pebblestore: View given %d funcs and %d error slots", len(fns), len(errs))
	}
	if hints != nil && len(hints) != len(fns) {
		return fmt.Errorf("pebblestore: View given %d funcs and %d read hints", len(fns), len(hints))
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	var probe *probeScratch
	if hints != nil && s.cache != nil {
		probe, _ = s.probes.Get().(*probeScratch)
		if probe == nil {
			probe = new(probeScratch)
		}
		defer s.probes.Put(probe)
	}
	tx := &readTxn{txn: txn{db: s.db, cache: s.cache}}
	for i, fn := range fns {
		if probe != nil && i%prefetchChunk == 0 {
			s.prefetch(hints[i:min(i+prefetchChunk, len(hints))], probe)
		}
		errs[i] = runTxn(fn, tx)
		tx.closeIter()
	}
	// Loaded after the reads: any group they saw was numbered before it
	// became visible.
	seen := s.applying.Load()
	s.relMu.Lock()
	defer s.relMu.Unlock()
	for s.released < seen && s.broken == nil {
		s.relCond.Wait()
	}
	return s.broken
}

// prefetchChunk is how many transactions' read hints are prefetched at a
// time: enough for the processor to overlap many cache misses, few enough
// that what they bring in stays in its caches until the reads use it
// (a few hundred lines of 64 bytes).
const prefetchChunk = 128

// prefetch runs the row cache's batched probe (rowCache.prefetch) over
// the keys of hints, with sc's memory, and returns the keys' hashes
// (rowHash with the store's seed), valid until sc is used again.
func (s *Store) prefetch(hints [][][]byte, sc *probeScratch) []uint64 {
	keys := sc.keys[:0]
	for _, h := range hints {
		keys = append(keys, h...)
	}
	if len(keys) == 0 {
		return nil
	}
	hs := s.cache.prefetch(keys, sc)
	s.prefetched.Add(uint64(len(keys)))
	clear(keys) // the hints belong to the caller
	sc.keys = keys[:0]
	return hs
}

// prefetchIndexes loads, for each key hash of hs, the slot where the
// group's unapplied index and the previous group's would look it up
// first, so that the reads and writes of the coming transactions find
// them in the processor's caches (the tables of a large group outgrow
// the fastest ones). It returns what it read, for the caller to keep so
// that the loads are not dropped.
func (t *txn) prefetchIndexes(hs []uint64) byte {
	var sink byte
	if t.indexed {
		return 0
	}
	sink ^= t.unapplied.heads.touch(hs)
	if p := t.prev; p != nil && !p.applied.Load() {
		sink ^= p.unapplied.heads.touch(hs)
	}
	return sink
}

// readTxn is the Txn of View: reads go straight to the database.
type readTxn struct{ txn }

func (t *readTxn) Get(key []byte) ([]byte, int64, bool, error) {
	raw, found, err := t.read(key)
	if err != nil || !found {
		return nil, 0, false, err
	}
	value, expireAt, err := kv.ParseStoredRecord(raw)
	if err != nil {
		return nil, 0, false, fmt.Errorf("key %q: %w", key, err)
	}
	return value, expireAt, true, nil
}

func (t *readTxn) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	return t.scan(t.db, start, end, fn)
}

func (t *readTxn) Set([]byte, []byte, int64) error { return kv.ErrReadOnly }
func (t *readTxn) SetPosition([]byte) error        { return kv.ErrReadOnly }
func (t *readTxn) Delete([]byte) error             { return kv.ErrReadOnly }
func (t *readTxn) DeleteRange([]byte, []byte) error {
	return kv.ErrReadOnly
}

// txn implements kv.Txn over the group's Pebble batch.
//
// A group starts with a plain Pebble batch: most groups only write (puts), and
// keeping Pebble's batch index up to date costs a skiplist insertion per
// write that such a group never uses. Reads see the group's own writes
// through unapplied, a hash index of where each key's latest write sits in
// the Pebble batch; a key with no unapplied write is read from the database, which
// already holds every earlier group. A range deletion or a scan over a
// non-empty Pebble batch needs Pebble's own merging of the Pebble batch and the database, so the
// txn then copies the Pebble batch into an indexed one once and stays indexed
// until the group ends.
type txn struct {
	db        *pebble.DB
	batch     *pebble.Batch
	indexed   bool
	unapplied *unappliedIndex // unused once indexed
	cache     *rowCache       // nil when disabled
	// prev is the group built before this one while the committer may
	// not have applied it yet: point reads of keys it wrote are answered
	// from its Pebble batch; anything else that reads the database waits for it
	// (settle). nil for View, once settled, and once Get finds it applied. The writer passes only
	// groups with an unapplied index (write).
	prev      *group
	prevReads uint64 // point reads answered by prev
	// lastRead is the cache entry of the key the writer read last, kept
	// with the record when the transaction then writes that key (the
	// read-modify-write of cas, increment and the like), so that publish
	// updates the entry without looking the key up again.
	lastRead *rowEntry
	// lastKey and lastHash are the key the writer's last point read
	// looked up (a copy) and its hash, which the write of the same key
	// that usually follows reuses (see hash).
	lastKey  []byte
	lastHash uint64
	iter     *pebble.Iterator
	buf      []byte
	val      []byte
	// position is the last position set (SetPosition), input the highest
	// input position noted (NoteInput), by the group's transactions.
	position []byte
	input    uint64
}

// mark is a savepoint: the Pebble batch's size and entry count, and the unapplied
// index's length, before a transaction ran.
type mark struct {
	len       int
	count     uint32
	unapplied int
	position  []byte
	input     uint64
}

func (t *txn) mark() mark {
	return mark{len: t.batch.Len(), count: t.batch.Count(), unapplied: len(t.unapplied.refs),
		position: t.position, input: t.input}
}

// changedSince reports whether anything was written after m.
func (t *txn) changedSince(m mark) bool { return t.batch.Len() != m.len }

// settle waits until the previous group is in the database and the row
// cache, for reads that go to the database other than by key.
func (t *txn) settle() {
	if t.prev != nil {
		<-t.prev.committed
		t.prev = nil
	}
}

func (t *txn) closeIter() {
	if t.iter != nil {
		_ = t.iter.Close()
		t.iter = nil
	}
}

// index switches the txn to an indexed Pebble batch holding everything written so
// far, for reads that the unapplied index cannot answer.
func (t *txn) index() error {
	t.settle() // the indexed Pebble batch reads through to the database
	nb := t.db.NewIndexedBatch()
	if err := nb.Apply(t.batch, nil); err != nil {
		_ = nb.Close()
		return fmt.Errorf("pebblestore: index the group's writes: %w", err)
	}
	_ = t.batch.Close()
	t.batch, t.indexed = nb, true
	t.unapplied.reset()
	return nil
}

// rollback drops every write made after m, by rebuilding the Pebble batch from the
// prefix it had at m.
func (t *txn) rollback(m mark) error {
	repr := t.batch.Repr()
	var nb *pebble.Batch
	if t.indexed {
		nb = t.db.NewIndexedBatch()
	} else {
		nb = t.db.NewBatch()
		t.unapplied.truncate(m.unapplied)
	}
	if m.count > 0 {
		prefix := append([]byte(nil), repr[:m.len]...)
		binary.LittleEndian.PutUint32(prefix[8:12], m.count)
		var err error
		if t.indexed {
			tmp := t.db.NewBatch()
			if err = tmp.SetRepr(prefix); err == nil {
				err = nb.Apply(tmp, nil)
			}
			_ = tmp.Close()
		} else {
			err = nb.SetRepr(prefix)
		}
		if err != nil {
			_ = nb.Close()
			return fmt.Errorf("pebblestore: roll back failed transaction: %w", err)
		}
	}
	_ = t.batch.Close()
	t.batch = nb
	return nil
}

func (t *txn) Get(key []byte) ([]byte, int64, bool, error) {
	var raw []byte
	switch {
	case !t.indexed:
		// One hash of key serves the group's index, the previous
		// group's and the row cache (they share a seed), and the write
		// of key that usually follows.
		h := rowHash(t.unapplied.seed, key)
		t.lastKey, t.lastHash = append(t.lastKey[:0], key...), h
		if rec, del, hit := t.unapplied.lookupHash(t.batch.Repr(), key, h); hit {
			if del {
				return nil, 0, false, nil
			}
			raw = rec // valid until the next write, as Txn allows
			break
		}
		if p := t.prev; p != nil && p.applied.Load() {
			// The committer is done with p: the database and the row
			// cache hold its writes, as they would after settle.
			t.prev = nil
		}
		if p := t.prev; p != nil {
			if rec, del, hit := p.unapplied.lookupHash(p.repr, key, h); hit {
				if t.cache != nil {
					// The cache cannot take p's record before p is
					// published; a write of the key by this group
					// caches it then, as a read from the cache or the
					// database would have.
					t.lastRead = newRowEntry(key, nil, true) // nil for a key too long to cache
					if t.lastRead != nil {
						t.lastRead.fresh = true
					}
				}
				if del {
					return nil, 0, false, nil
				}
				t.prevReads++
				raw = rec // the writer holds p's Pebble batch until p is retired
				break
			}
		}
		// No write of this group touched key: the database (or the row
		// cache, which agrees with it outside a publish) has its latest
		// value.
		rec, found, err := t.writerRead(key, h)
		if err != nil || !found {
			return nil, 0, false, err
		}
		raw = rec
	default:
		// The indexed Pebble batch merges the group's writes with the database
		// itself; the row cache, which knows nothing of the group's
		// writes, is bypassed until the group ends.
		v, closer, err := t.batch.Get(key)
		if err != nil {
			return t.getErr(err)
		}
		t.val = append(t.val[:0], v...)
		_ = closer.Close()
		raw = t.val
	}
	value, expireAt, err := kv.ParseStoredRecord(raw)
	if err != nil {
		return nil, 0, false, fmt.Errorf("key %q: %w", key, err)
	}
	return value, expireAt, true, nil
}

// read returns key's stored record as the database holds it, from the row
// cache when it has the key and otherwise from the database, offering what
// it read to the cache; for a reader outside the writer goroutine (View).
// The record is valid until the next read.
func (t *txn) read(key []byte) (rec []byte, found bool, err error) {
	c := t.cache
	if c == nil {
		return t.readDB(key)
	}
	rec, absent, hit := c.get(key, t.val[:0])
	if hit {
		t.val = rec
		return rec, !absent, nil
	}
	epoch := c.beginRead() // before the database read: see rowCache
	if _, found, err = t.readDB(key); err != nil {
		return nil, false, err
	}
	t.val, absent = c.fill(key, t.val, !found, epoch, t.val[:0])
	return t.val, !absent, nil
}

// writerRead is read for the writer goroutine, for a key neither this
// group nor the previous one wrote, whose record therefore cannot change
// while the group is built: a cached record is returned as the cache holds
// it, not copied (see writerGet), and the entry is kept in lastRead.
func (t *txn) writerRead(key []byte, h uint64) (rec []byte, found bool, err error) {
	c := t.cache
	if c == nil {
		return t.readDB(key)
	}
	if e := c.writerGet(key, h); e != nil {
		t.lastRead = e
		return e.rec(), !e.absent, nil
	}
	if _, found, err = t.readDB(key); err != nil {
		return nil, false, err
	}
	t.lastRead = c.writerFillHash(key, h, t.val, !found)
	return t.val, found, nil
}

// readDB reads key's record from the database into t.val.
func (t *txn) readDB(key []byte) (rec []byte, found bool, err error) {
	v, closer, err := t.db.Get(key)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		t.val = t.val[:0]
		return t.val, false, nil
	case err != nil:
		return nil, false, err
	}
	t.val = append(t.val[:0], v...)
	_ = closer.Close()
	return t.val, true, nil
}

// readEntry returns the cache entry the writer last read if it is key's.
func (t *txn) readEntry(key []byte) *rowEntry {
	if e := t.lastRead; e != nil && e.key() == string(key) {
		return e
	}
	return nil
}

// recordKnown returns, for each record of the Pebble batch in order, the cache
// entry the writer read for its key (see lastRead) or nil, and the key's
// hash, which the row cache shares; nil when the txn no longer tracks its
// records (indexed).
func (t *txn) recordKnown() []knownRecord {
	if t.indexed || t.cache == nil {
		return nil
	}
	known := t.unapplied.known[:0]
	for i := range t.unapplied.refs {
		r := &t.unapplied.refs[i]
		known = append(known, knownRecord{entry: r.entry, hash: r.hash})
	}
	t.unapplied.known = known
	return known
}

// hash returns key's hash for the unapplied index, reusing the last
// read's when key is the key it read.
func (t *txn) hash(key []byte) uint64 {
	if bytes.Equal(key, t.lastKey) {
		return t.lastHash
	}
	return rowHash(t.unapplied.seed, key)
}

func (t *txn) getErr(err error) ([]byte, int64, bool, error) {
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, 0, false, nil
	}
	return nil, 0, false, err
}

func (t *txn) Set(key, value []byte, expireAt int64) error {
	t.buf = kv.AppendStoredRecord(t.buf[:0], value, expireAt)
	if err := t.batch.Set(key, t.buf, nil); err != nil {
		return err
	}
	if !t.indexed {
		t.unapplied.addHash(t.batch.Repr(), len(key), len(t.buf), false, t.readEntry(key), t.hash(key))
	}
	return nil
}

func (t *txn) Delete(key []byte) error {
	if err := t.batch.Delete(key, nil); err != nil {
		return err
	}
	if !t.indexed {
		t.unapplied.addHash(t.batch.Repr(), len(key), 0, true, t.readEntry(key), t.hash(key))
	}
	return nil
}

// SetPosition implements PositionSetter.
func (t *txn) SetPosition(pos []byte) error {
	t.position = bytes.Clone(pos)
	return nil
}

// NoteInput implements kv.InputNoter: the group's Replicator is given the
// highest input position noted by its successful transactions.
func (t *txn) NoteInput(pos uint64) { t.input = max(t.input, pos) }

func (t *txn) DeleteRange(start, end []byte) error {
	// The unapplied index cannot answer reads of keys inside a deleted
	// range; range deletions are rare (clear), so index instead.
	if !t.indexed {
		if err := t.index(); err != nil {
			return err
		}
	}
	return t.batch.DeleteRange(start, end, nil)
}

func (t *txn) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	t.settle()
	var r pebble.Reader = t.db
	if !t.batch.Empty() {
		if !t.indexed {
			if err := t.index(); err != nil {
				return err
			}
		}
		r = t.batch
	}
	return t.scan(r, start, end, fn)
}

func (t *txn) scan(r pebble.Reader, start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	t.closeIter()
	iter, err := r.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
	if err != nil {
		return err
	}
	t.iter = iter
	defer t.closeIter()
	// Only a scan from below the position key can meet it.
	hide := bytes.Compare(start, positionKey) <= 0
	for ok := iter.First(); ok; ok = iter.Next() {
		if hide && bytes.Equal(iter.Key(), positionKey) {
			continue
		}
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

// bloomBitsPerKey sizes the sstables' bloom filters.
const bloomBitsPerKey = 10

// maxBatchSizeHint caps the room a group's Pebble batch is given in advance, so
// that one group of large values does not make every later Pebble batch large.
const maxBatchSizeHint = 1 << 20

// minSortedRecords is the smallest group whose records are put in key
// order before the commit.
const minSortedRecords = 64

// sortByKey rewrites the group's plain Pebble batch with its records in key
// order, keeping only the last record of each key. Pebble inserts a
// Pebble batch into the memtable's skiplist record by record; an insert
// reuses the previous one's position only when no node of the memtable
// lies between the two keys, so most are searches from the skiplist's top
// (arenaskl's findSplice). In key order consecutive searches run down the
// same nodes, which the processor's caches then hold, where random order
// misses on most of them, and that search is most of the cost of a write.
// The Pebble batch commits atomically under one sequence range, so the order
// of different keys inside it is invisible to readers, and so is a record
// of a key that a later record of the same group overwrites: Pebble would
// keep both in the memtable (and flush both until a compaction drops the
// older), the row cache would copy both, for a state no reader can see.
// A group of read-modify-writes over 100,000 keys, ~10,000 per group,
// writes about 5% of its keys twice or more.
func (t *txn) sortByKey() error {
	repr := t.batch.Repr()
	refs := t.unapplied.refs
	key := func(r *unappliedRef) []byte { return repr[r.keyOff : r.keyOff+r.keyLen] }
	increasing := true
	for i := 1; i < len(refs) && increasing; i++ {
		increasing = bytes.Compare(key(&refs[i-1]), key(&refs[i])) < 0
	}
	if increasing {
		return nil // nothing to reorder, no key written twice
	}
	keys := sortRefsByKey(repr, refs, t.unapplied.sortKeys)
	t.unapplied.sortKeys = keys
	order := t.unapplied.sortBuf[:0]
	dropped := 0 // bytes of the records left out
	for n, k := range keys {
		r := &refs[k.i]
		if n+1 < len(keys) {
			if next := &refs[keys[n+1].i]; next.hash == r.hash && bytes.Equal(key(next), key(r)) {
				// next, a later record of the key, replaces r. The entry
				// the writer read for the key goes with the record kept
				// (a later read of a key the group wrote finds it in
				// the group and keeps none).
				if next.entry == nil {
					next.entry = r.entry
				}
				dropped += r.size()
				continue
			}
		}
		order = append(order, *r)
	}
	t.unapplied.sortBuf = order
	// The records are rewritten in place, from a copy: the Pebble batch keeps
	// its buffer (no allocation, no new Pebble batch). A permutation of its
	// records leaves everything Pebble derived from them (count, memtable
	// size) as it was; when records were left out, the header's count is
	// set and Pebble derives the rest again (SetRepr).
	orig := append(t.unapplied.reprBuf[:0], repr...)
	t.unapplied.reprBuf = orig
	w := batchHeaderLen
	for i := range order {
		r := &order[i]
		start := int(r.keyOff) - 1 - uvarintLen(uint64(r.keyLen))
		end := start + r.size()
		r.keyOff = uint32(w + int(r.keyOff) - start)
		w += copy(repr[w:], orig[start:end])
	}
	if w+dropped != len(repr) {
		return fmt.Errorf("pebblestore: sorting a group's writes: %d bytes became %d", len(repr)-dropped, w)
	}
	if len(order) < len(refs) {
		binary.LittleEndian.PutUint32(repr[8:batchHeaderLen], uint32(len(order)))
		if err := t.batch.SetRepr(repr[:w]); err != nil {
			return fmt.Errorf("pebblestore: sorting a group's writes: %w", err)
		}
	}
	t.unapplied.reindex(order)
	return nil
}

// refSortKey is what sortRefsByKey sorts: eight bytes of a record's key
// taken where the group's keys start to differ, big-endian so that they
// compare as the bytes do, and the record's index.
type refSortKey struct {
	prefix uint64
	i      int32
}

// sortRefsByKey returns the order of refs, records of repr in Pebble batch
// order, by key, keeping the Pebble batch order of records of the same key: the
// index into refs of the first record in key order, then of the second,
// and so on. It reuses scratch. Keys of one store share a long prefix (the
// namespace), so the eight bytes after the group's common prefix usually
// decide: a group of radixSortMin records or more is sorted by them with
// a least-significant-byte-first radix sort (stable, so records with equal
// bytes stay in Pebble batch order, and a byte equal in every record
// costs one counting pass), a smaller one with a comparison sort; only
// records whose eight bytes are equal then compare their whole keys.
func sortRefsByKey(repr []byte, refs []unappliedRef, scratch []refSortKey) []refSortKey {
	key := func(r *unappliedRef) []byte { return repr[r.keyOff : r.keyOff+r.keyLen] }
	first := key(&refs[0])
	common := len(first)
	for i := 1; i < len(refs) && common > 0; i++ {
		k := key(&refs[i])
		n := min(common, len(k))
		j := 0
		for j < n && k[j] == first[j] {
			j++
		}
		common = j
	}
	n := len(refs)
	scratch = slices.Grow(scratch[:0], 2*n)[:2*n]
	keys, tmp := scratch[:n:n], scratch[n:]
	for i := range refs {
		var b [8]byte
		copy(b[:], key(&refs[i])[common:])
		keys[i] = refSortKey{prefix: binary.BigEndian.Uint64(b[:]), i: int32(i)}
	}
	whole := func(a, b refSortKey) int {
		if c := bytes.Compare(key(&refs[a.i])[common:], key(&refs[b.i])[common:]); c != 0 {
			return c
		}
		return cmp.Compare(a.i, b.i)
	}
	if n < radixSortMin {
		slices.SortFunc(keys, func(a, b refSortKey) int {
			if a.prefix != b.prefix {
				return cmp.Compare(a.prefix, b.prefix)
			}
			return whole(a, b)
		})
		return scratch[:n]
	}
	src, dst := keys, tmp
	for shift := 0; shift < 64; shift += 8 {
		var count [256]int32
		for _, k := range src {
			count[byte(k.prefix>>shift)]++
		}
		if count[byte(src[0].prefix>>shift)] == int32(n) {
			continue // every record has this byte: nothing to reorder
		}
		var at int32
		for b, c := range count {
			count[b] = at
			at += c
		}
		for _, k := range src {
			b := byte(k.prefix >> shift)
			dst[count[b]] = k
			count[b]++
		}
		src, dst = dst, src
	}
	if &src[0] != &keys[0] {
		copy(keys, src)
	}
	for i := 0; i < n; {
		j := i + 1
		for j < n && keys[j].prefix == keys[i].prefix {
			j++
		}
		if j-i > 1 {
			slices.SortFunc(keys[i:j], whole)
		}
		i = j
	}
	return scratch[:n]
}

// radixSortMin is the smallest group sortRefsByKey sorts by radix: below
// it the radix sort's counting passes cost more than comparisons.
const radixSortMin = 256

// batchHeaderLen is the size of a Pebble batch representation's header
// (sequence number and count).
const batchHeaderLen = 12

// unappliedIndex maps each key written by the group's plain Pebble batch to its
// latest record in the Pebble batch representation, without copying keys or
// values: entries are offsets into the Pebble batch. It belongs to the writer
// goroutine and is reused from group to group.
type unappliedIndex struct {
	seed  maphash.Seed
	heads hashHeads // key hash -> newest entry with that hash
	refs  []unappliedRef

	sortBuf  []unappliedRef // sortByKey's scratch
	sortKeys []refSortKey   // sortByKey's scratch
	reprBuf  []byte         // sortByKey's scratch
	known    []knownRecord  // recordKnown's scratch
}

type unappliedRef struct {
	hash   uint64
	prev   int32 // older entry with the same hash, -1 for none
	keyOff uint32
	keyLen uint32
	valLen uint32 // the value ends where the record ends
	del    bool
	entry  *rowEntry // the key's row cache entry as the writer read it, or nil
}

// size returns the length of r's record in the Pebble batch: kind, uvarint
// key length, key and, for a set, uvarint value length and value.
func (r *unappliedRef) size() int {
	n := 1 + uvarintLen(uint64(r.keyLen)) + int(r.keyLen)
	if !r.del {
		n += uvarintLen(uint64(r.valLen)) + int(r.valLen)
	}
	return n
}

func newUnappliedIndex() *unappliedIndex { return newUnappliedIndexSeed(maphash.MakeSeed()) }

// newUnappliedIndexSeed returns an index hashing keys with seed (rowHash).
func newUnappliedIndexSeed(seed maphash.Seed) *unappliedIndex {
	return &unappliedIndex{seed: seed}
}

func (p *unappliedIndex) reset() {
	p.heads.reset()
	p.refs = p.refs[:0]
}

// add indexes the record that ends repr: a set of a keyLen-byte key to a
// valLen-byte value, or a deletion. Pebble lays a record out as kind,
// uvarint key length, key and, for a set, uvarint value length and value.
func (p *unappliedIndex) add(repr []byte, keyLen, valLen int, del bool, entry *rowEntry) {
	end := len(repr)
	if !del {
		end -= valLen + uvarintLen(uint64(valLen))
	}
	p.addHash(repr, keyLen, valLen, del, entry, rowHash(p.seed, repr[end-keyLen:end]))
}

// addHash is add for a caller that has hashed the record's key already
// (rowHash with the index's seed).
func (p *unappliedIndex) addHash(repr []byte, keyLen, valLen int, del bool, entry *rowEntry, h uint64) {
	end := len(repr)
	if !del {
		end -= valLen + uvarintLen(uint64(valLen))
	}
	keyOff := end - keyLen
	prev, _ := p.heads.get(h)
	p.heads.set(h, int32(len(p.refs)))
	p.refs = append(p.refs, unappliedRef{hash: h, prev: prev, keyOff: uint32(keyOff), keyLen: uint32(keyLen), valLen: uint32(valLen), del: del, entry: entry})
}

// reindex makes refs, the records of a rewritten Pebble batch in their new order
// with their new offsets, the index's contents; the old refs become the
// sort scratch.
func (p *unappliedIndex) reindex(refs []unappliedRef) {
	p.heads.reset()
	for i := range refs {
		r := &refs[i]
		r.prev, _ = p.heads.get(r.hash)
		p.heads.set(r.hash, int32(i))
	}
	p.refs, p.sortBuf = refs, p.refs
}

// lookup returns the latest record the Pebble batch holds for key: its value (a
// stored record aliasing repr) or that it was deleted.
func (p *unappliedIndex) lookup(repr, key []byte) (rec []byte, del, hit bool) {
	return p.lookupHash(repr, key, rowHash(p.seed, key))
}

// lookupHash is lookup for a caller that has hashed key already (rowHash
// with the index's seed).
func (p *unappliedIndex) lookupHash(repr, key []byte, h uint64) (rec []byte, del, hit bool) {
	if len(p.refs) == 0 {
		return nil, false, false
	}
	i, ok := p.heads.get(h)
	if !ok {
		return nil, false, false
	}
	for ; i >= 0; i = p.refs[i].prev {
		r := &p.refs[i]
		if r.hash != h || !bytes.Equal(repr[r.keyOff:r.keyOff+r.keyLen], key) {
			continue
		}
		if r.del {
			return nil, true, true
		}
		valOff := int(r.keyOff+r.keyLen) + uvarintLen(uint64(r.valLen))
		return repr[valOff : valOff+int(r.valLen) : valOff+int(r.valLen)], false, true
	}
	return nil, false, false
}

// truncate forgets the entries added after the first n, newest first, so
// each hash points again at the entry it pointed at before.
func (p *unappliedIndex) truncate(n int) {
	for i := len(p.refs) - 1; i >= n; i-- {
		r := p.refs[i]
		p.heads.set(r.hash, r.prev) // -1: no older entry, as if never added
	}
	p.refs = p.refs[:n]
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
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
