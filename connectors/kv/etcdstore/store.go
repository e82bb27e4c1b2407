// Package etcdstore is a kv.Backend on an etcd cluster, so that several
// flowrun processes can share one store with the same command set and
// guarantees as the Pebble backend.
//
// Every TxnFunc runs optimistically: its reads go to etcd at one fixed
// revision R (the revision of the first read of the group it belongs to,
// linearizable or serializable as Options.Reads says; later reads at R are
// served by any member without a quorum round) and are recorded; its writes are buffered in an overlay that later reads
// of the same Update see. The group then commits as one etcd transaction
// whose If part checks that nothing read has changed since R (point keys by
// ModRevision, scanned ranges by "every key's ModRevision < R+1"), so a
// write by another process between the reads and the commit makes the
// compare fail and the group is run again from scratch (bounded by
// Options.MaxRetries). Within one process Update calls are serialised by a
// mutex, as the kv.Backend contract requires.
//
// A group starts by fetching the keys its TxnFuncs are hinted to read
// (kv.ReadHinter, kv.ViewHinter) in one request, and ends before the first
// TxnFunc whose keys that request did not fetch; the next group's request
// is sent as soon as a group has its own (see runGroup). Read-only slices
// run through View, in groups that commit nothing and do not wait for the
// mutex.
//
// Consecutive TxnFuncs of one Update call are grouped into one etcd
// transaction while the group stays within etcd's limits (operations per
// transaction, --max-txn-ops, default 128; request size,
// --max-request-bytes, default 1.5 MiB); a TxnFunc whose own writes exceed
// them fails with an error wrapping ErrTxnTooLarge and writes nothing.
//
// Values are stored with their expiry in front (one flag byte, then an
// 8-byte big-endian Unix-millisecond expiry when set, then the value), the
// same record layout as the Pebble backend: visibility is decided by the
// command layer's clock, to the millisecond. Removal is etcd's: a record
// written with an expiry is attached to a lease that outlives the expiry by
// a little, so etcd deletes the record (and the command layer's expiry
// index entry, written with the same expiry) without any reclaim pass. One
// lease serves every record expiring in the same time bucket (one second
// for near expiries, up to about a sixteenth of the remaining time for far
// ones), so a TTL write costs a lease grant only when it opens a new
// bucket. A write without expiry detaches the key from its lease. Records
// whose expiry has already passed when written, or lies beyond etcd's
// longest lease, get no lease and are left to the reclaim pass.
//
// Known limit: a key deleted by another process inside a range this
// process scanned is detected only while the group's compares fit in
// MaxTxnOps (each scanned key is compared individually on top of the range
// compare); a scan that saw more keys than that detects inserted and
// modified keys in its range but not deleted ones.
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flowrun/flowrun/connectors/kv"
)

var (
	// ErrTxnTooLarge reports a TxnFunc whose writes (or reads to verify)
	// exceed etcd's limit on operations per transaction or on request size.
	ErrTxnTooLarge = errors.New("etcdstore: transaction exceeds etcd's limits")
	// ErrConflict reports a TxnFunc that kept conflicting with writes of
	// other processes for Options.MaxRetries attempts.
	ErrConflict = errors.New("etcdstore: too many conflicting writes")
	// ErrClosed reports use of a Store after Close.
	ErrClosed = errors.New("etcdstore: store is closed")
	// ErrCorruptRecord reports a stored value that does not decode.
	ErrCorruptRecord = kv.ErrCorruptRecord
	// ErrNoEndpoints reports Options without any endpoint.
	ErrNoEndpoints = errors.New("etcdstore: no endpoints given")
	// ErrBadOptions reports Options that cannot be used (see
	// Options.Validate).
	ErrBadOptions = errors.New("etcdstore: bad options")
)

// ReadConsistency is how the first read of each commit group (and of each
// read-only group of View) reaches the cluster; later reads of the group
// are pinned to the revision it returned.
type ReadConsistency string

const (
	// Linearizable reads go through the cluster's leader with a quorum
	// round: a read sees every write acknowledged by any process before
	// it started. The default.
	Linearizable ReadConsistency = "linearizable"
	// Serializable reads are answered by whichever member the client
	// reaches, from its own applied state, without a quorum round. The
	// store still sees every write it committed itself (an answer older
	// than the store's last commit is asked again linearizably), and a
	// group that writes still commits only if nothing it read has changed
	// since; but a read-only command may miss writes of other processes
	// that the member has not applied yet, for as long as it lags (a
	// member cut off from the cluster keeps answering from its old state).
	Serializable ReadConsistency = "serializable"
)

// Options configures Open. The zero value of each field selects its default.
type Options struct {
	// Endpoints are the client URLs of the etcd cluster (required).
	Endpoints []string
	// Prefix is prepended to every key, so several stores (or other users
	// of the cluster) can share it. Default: none.
	Prefix string
	// DialTimeout bounds connecting to the cluster. Default 5s.
	DialTimeout time.Duration
	// RequestTimeout bounds each request to the cluster. Default 10s.
	RequestTimeout time.Duration
	// CertFile and KeyFile are the client certificate and key for TLS;
	// CAFile is the CA bundle that verifies the servers. TLS is used when
	// any of them is set.
	CertFile, KeyFile, CAFile string
	// MaxTxnOps is the cluster's --max-txn-ops. Default 128 (etcd's).
	MaxTxnOps int
	// MaxRequestBytes is the cluster's --max-request-bytes. Default
	// 1.5 MiB (etcd's). A margin is kept below it for encoding overhead.
	MaxRequestBytes int
	// MaxRetries bounds how often a group is rerun after a conflicting
	// write by another process. Default 100.
	MaxRetries int
	// Reads is the consistency of the first read of each group: Linearizable
	// (the default) or Serializable.
	Reads ReadConsistency
	// Now is the clock lease lifetimes are computed against: it should be
	// the clock of the connectors deciding expiry. Default time.Now.
	Now func() time.Time
}

// EnsureDefaults fills in the default of every zero field.
func (o *Options) EnsureDefaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = 128
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = 3 << 19 // 1.5 MiB
	}
	if o.MaxRetries <= 0 {
		o.MaxRetries = 100
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Reads == "" {
		o.Reads = Linearizable
	}
}

// Validate reports, wrapping ErrBadOptions (or ErrNoEndpoints), the first
// field that cannot be used. It expects defaults to be filled.
func (o *Options) Validate() error {
	if len(o.Endpoints) == 0 {
		return ErrNoEndpoints
	}
	switch o.Reads {
	case Linearizable, Serializable:
	default:
		return fmt.Errorf("%w: Reads %q is neither %q nor %q", ErrBadOptions, o.Reads, Linearizable, Serializable)
	}
	return nil
}

// Store is a kv.Backend on etcd. It is safe for concurrent use; Updates of
// one Store are serialised, Updates of different Stores (processes) are
// isolated by etcd's compare-and-commit.
type Store struct {
	opts   Options
	client *clientv3.Client
	// kv is the client's KV API every read and commit goes through (the
	// seam tests count requests at).
	kv     clientv3.KV
	prefix []byte
	// lastRev is the revision of the store's latest commit: a
	// serializable read older than it is asked again linearizably.
	lastRev atomic.Int64

	mu     sync.Mutex
	closed bool
	leases leaseCache // guarded by mu
	// commitHook, when set (by tests), sees the size of each transaction.
	commitHook func(cmps, ops int)
}

var (
	_ kv.Backend    = (*Store)(nil)
	_ kv.TxnLimiter = (*Store)(nil)
	_ kv.ReadHinter = (*Store)(nil)
	_ kv.Viewer     = (*Store)(nil)
	_ kv.ViewHinter = (*Store)(nil)
)

// Open connects to the cluster and checks that it answers within
// DialTimeout.
func Open(ctx context.Context, opts Options) (*Store, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if opts.CertFile != "" || opts.KeyFile != "" || opts.CAFile != "" {
		info := transport.TLSInfo{CertFile: opts.CertFile, KeyFile: opts.KeyFile, TrustedCAFile: opts.CAFile}
		c, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcdstore: TLS files: %w", err)
		}
		tlsConf = c
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   opts.Endpoints,
		DialTimeout: opts.DialTimeout,
		TLS:         tlsConf,
		Context:     context.WithoutCancel(ctx),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: connecting to %v: %w", opts.Endpoints, err)
	}
	// The client dials lazily: one read proves the cluster answers.
	cctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	defer cancel()
	if _, err := client.Get(cctx, opts.Prefix+"\x00probe", clientv3.WithCountOnly()); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("etcdstore: cluster at %v does not answer: %w", opts.Endpoints, err)
	}
	return &Store{opts: opts, client: client, kv: client.KV, prefix: []byte(opts.Prefix), leases: leaseCache{byEnd: map[int64]lease{}}}, nil
}

// MaxTxnWrites implements kv.TxnLimiter: one TxnFunc may write or delete
// at most the cluster's MaxTxnOps keys.
func (s *Store) MaxTxnWrites() int { return s.opts.MaxTxnOps }

// Close closes the client; every committed write is already durable in
// the cluster.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	return s.client.Close()
}

// Update implements kv.Backend. fns run in order, grouped into as few etcd
// transactions as the cluster's limits allow. When the first transaction
// of the call cannot be committed Update returns the error and no fn took
// effect; when a later one fails, the fns it held (and every later fn)
// get the error in errs while the earlier ones stay committed.
func (s *Store) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return s.UpdateHinted(ctx, fns, nil, errs)
}

// UpdateHinted implements kv.ReadHinter: it is Update, except that each
// group starts by fetching the hinted keys of its fns in one read-only
// transaction, instead of one request per key as the fns read them.
func (s *Store) UpdateHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	if len(fns) != len(errs) {
		return fmt.Errorf("etcdstore: Update given %d funcs and %d error slots", len(fns), len(errs))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	var ahead *readAhead
	for i := 0; i < len(fns); {
		next, nextAhead, err := s.runGroup(ctx, fns, hints, errs, i, false, ahead)
		if err != nil {
			if i == 0 {
				return err
			}
			for j := i; j < len(fns); j++ {
				errs[j] = err
			}
			return nil
		}
		i, ahead = next, nextAhead
	}
	return nil
}

// View implements kv.Viewer: fns run in read-only groups, concurrently
// with Update and other Views, each group reading at one revision (see
// ViewHinted).
func (s *Store) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return s.ViewHinted(ctx, fns, nil, errs)
}

// ViewHinted implements kv.ViewHinter. fns run in order in read-only
// groups; each group starts with one request fetching the hinted keys of
// its fns (as many as one transaction may hold) and its fns read at that
// request's revision, so a group of point reads costs one round trip.
// The group's first read is linearizable or serializable as
// Options.Reads says; either way it sees every write this Store
// committed before. A write fails with kv.ErrReadOnly.
func (s *Store) ViewHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	if len(fns) != len(errs) || (hints != nil && len(hints) != len(fns)) {
		return fmt.Errorf("etcdstore: View given %d funcs, %d hints and %d error slots", len(fns), len(hints), len(errs))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	var ahead *readAhead
	for i := 0; i < len(fns); {
		next, nextAhead, err := s.runGroup(ctx, fns, hints, errs, i, true, ahead)
		if err != nil {
			return err
		}
		i, ahead = next, nextAhead
	}
	return nil
}

// runGroup runs fns from i on as one etcd transaction, retrying on
// conflict, and returns the index of the first fn it did not include. A
// readOnly group refuses writes and commits nothing.
//
// Reads are pipelined with the work of the group before, never commits
// with each other: as soon as a group has its prefetch, the prefetch of
// the next group is sent (a readAhead, returned with next; ahead is this
// group's, from the group before), while this group's fns run and it
// commits. So a stream of groups costs one read round trip after another,
// as it would without flowrun's work in between, and a commit overlaps
// the next read. Commits stay one at a time and in order, so the
// guarantees of Update hold as without read-ahead: a read-ahead that a
// commit overtook is corrected with that commit's own writes (see
// readAhead.apply), and any other change since is caught by the
// compares.
func (s *Store) runGroup(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error, i int, readOnly bool, ahead *readAhead) (int, *readAhead, error) {
	for attempt := 0; ; attempt++ {
		g := newGroup(ctx, s)
		g.readOnly = readOnly
		end := -1 // where the group ends if every fn it prefetched for runs
		switch {
		case attempt == 0 && ahead != nil && ahead.wait() == nil:
			ahead.apply(g)
			end = ahead.end
		case hints != nil:
			end = i + g.prefetch(hints[i:])
		}
		var nextAhead *readAhead
		if g.prefetched != nil && end > i && end < len(fns) {
			nextAhead = s.readAhead(ctx, hints[end:], end)
		}
		// drop forgets the read-ahead: the next group will not start
		// where or as it expected.
		drop := func() {
			if nextAhead != nil {
				_ = nextAhead.wait()
				nextAhead = nil
			}
		}
		next := i
		for next < len(fns) {
			if next > i && hints != nil && !g.covers(hints[next]) {
				// The fn would read keys the prefetch did not fetch,
				// one round trip each: it starts the next group, whose
				// prefetch fetches them with the keys of the fns after.
				break
			}
			mark := g.mark()
			err := run(fns[next], &txn{g: g})
			// A read-only group commits nothing: etcd's limits do not
			// apply to it.
			if err == nil && !g.readOnly {
				if lerr := g.checkLimits(); lerr != nil {
					g.rollback(mark)
					if next > i {
						// Commit what fits without this fn's reads either;
						// it starts the next group.
						g.forgetReads(mark)
						break
					}
					err = lerr
				}
			} else {
				g.rollback(mark)
			}
			if errors.Is(err, errRetry) {
				break
			}
			errs[next] = err
			next++
		}
		if next != end || len(g.tombs) > 0 {
			// A range deletion is not carried over to a read-ahead.
			drop()
		}
		if g.retry == nil {
			ok, err := g.commit()
			if isLeaseNotFound(err) {
				// A cached lease was revoked or expired behind our back:
				// forget them all and rerun the group with fresh ones.
				s.leases.reset()
				ok, err = false, nil
			}
			if err != nil || !ok {
				drop()
			}
			if err != nil {
				return i, nil, err
			}
			if ok {
				if nextAhead != nil && g.commitRev != 0 {
					nextAhead.after = g.overlay
					nextAhead.afterRev = g.commitRev
				}
				return next, nextAhead, nil
			}
		} else {
			drop()
			if !errors.Is(g.retry, errRetry) {
				return i, nil, g.retry
			}
		}
		if attempt+1 >= s.opts.MaxRetries {
			return i, nil, fmt.Errorf("%w: gave up after %d attempts", ErrConflict, attempt+1)
		}
		if err := ctx.Err(); err != nil {
			return i, nil, err
		}
	}
}

// readAhead is the prefetch of a group sent before the group before it
// has run and committed.
type readAhead struct {
	done chan struct{}
	keys []string
	end  int // the index of the first fn whose keys it does not hold
	resp *clientv3.TxnResponse
	err  error
	// after and afterRev are the writes of the commit the read raced
	// with and the revision it committed at (0 when the group before
	// committed nothing); set before wait returns.
	after    map[string]write
	afterRev int64
}

// readAhead starts fetching, in the background, the hinted keys of the
// group that will start with hints[0], fns[start], as prefetch would.
func (s *Store) readAhead(ctx context.Context, hints [][][]byte, start int) *readAhead {
	keys, n := s.prefetchKeys(hints)
	a := &readAhead{done: make(chan struct{}), keys: keys, end: start + n}
	if len(a.keys) == 0 {
		a.err = errNothingAhead
		close(a.done)
		return a
	}
	go func() {
		defer close(a.done)
		rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
		defer cancel()
		a.resp, a.err = s.firstRead(rctx, a.keys)
	}()
	return a
}

// errNothingAhead is a readAhead with no key to read.
var errNothingAhead = errors.New("etcdstore: nothing to read ahead")

// wait waits for the read and returns its error.
func (a *readAhead) wait() error {
	<-a.done
	return a.err
}

// apply makes the read g's prefetch. A read answered before the commit
// it raced with (at a lower revision) misses that commit's writes: the
// keys it wrote take their committed record and revision, and the
// group's later reads are pinned to the commit's revision. Its other
// keys keep the older revision, which the group's compares check like any
// read; a group that ends up committing nothing has no compares, so it is
// rerun (group.mixedRevs).
func (a *readAhead) apply(g *group) {
	g.applyPrefetch(a.keys, a.resp)
	if g.rev >= a.afterRev {
		return
	}
	for k, w := range a.after {
		if _, ok := g.prefetched[k]; !ok {
			continue
		}
		if w.deleted {
			g.prefetched[k] = prefetchedRec{}
		} else {
			g.prefetched[k] = prefetchedRec{rec: w.rec, rev: a.afterRev}
		}
	}
	g.rev = a.afterRev
	g.mixedRevs = true
}

// errRetry marks a read that could not be served at the group's revision
// (compacted away): the group is rerun at a new revision.
var errRetry = errors.New("etcdstore: read revision compacted")

func run(fn kv.TxnFunc, tx *txn) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("etcdstore: transaction panicked: %v", p)
		}
	}()
	return fn(tx)
}

// encodeRecord and decodeRecord use the record layout shared with the
// other backends (kv.AppendStoredRecord).
func encodeRecord(value []byte, expireAt int64) []byte {
	return kv.AppendStoredRecord(make([]byte, 0, 9+len(value)), value, expireAt)
}

func decodeRecord(rec []byte) ([]byte, int64, error) { return kv.ParseStoredRecord(rec) }

// span is a key range [start, end) in etcd's key space (prefix included);
// an empty end means no upper bound at all.
type span struct{ start, end string }

func (r span) contains(k string) bool { return k >= r.start && below(k, r.end) }

// empty reports a range with no key in it.
func (r span) empty() bool { return r.end != "" && r.start >= r.end }

// below reports k < end, where an empty end is no bound.
func below(k, end string) bool { return end == "" || k < end }

// etcdEnd is a range end as etcd spells it: "\x00" for no upper bound.
func etcdEnd(end string) string {
	if end == "" {
		return "\x00"
	}
	return end
}

// write is one buffered write of the overlay.
type write struct {
	rec     []byte // encoded record; nil when deleted
	exp     int64  // the record's expiry, Unix ms (0: none)
	deleted bool
}

// undoEntry restores one overlay key to its state before a write.
type undoEntry struct {
	key  string
	prev write
	had  bool
}

// mark is the state a failing fn is rolled back to.
type mark struct {
	undo, points, scanned, ranges int
	tombs                         []span
}

// group is the state of one etcd transaction being built: the read
// revision, what was read, and the writes buffered so far.
type group struct {
	ctx      context.Context
	s        *Store
	rev      int64 // read revision; 0 before the first read
	readOnly bool  // a View group: writes fail with kv.ErrReadOnly
	// mixedRevs reports prefetched records older than rev (a readAhead
	// overtaken by a commit): valid only once compared at commit.
	mixedRevs bool
	commitRev int64 // the revision the group committed at

	points   map[string]int64 // key read by Get -> its ModRevision (0: absent)
	scanned  map[string]int64 // key seen by Scan -> its ModRevision
	pointLog []string         // keys of points, in the order first read
	scanLog  []string         // keys of scanned, in the order first seen
	ranges   []span
	overlay  map[string]write
	tombs    []span // sorted, disjoint range deletions
	undo     []undoEntry
	retry    error             // set when the group must be rerun or failed outright
	readRecs map[string][]byte // etcd records read, by key (nil: absent)
	// prefetched holds records fetched ahead at rev on the fns' hints;
	// they become reads (points) only when a fn Gets them. It is nil when
	// nothing was prefetched (no hints, or the prefetch failed).
	prefetched map[string]prefetchedRec
}

type prefetchedRec struct {
	rec []byte // nil: absent
	rev int64  // ModRevision, 0 when absent
}

// prefetch fetches the hinted keys of the fns about to run (see
// prefetchKeys) in one read-only transaction whose revision becomes the
// group's, and returns how many fns it fetched for. A failed prefetch is
// ignored: the fns then read key by key.
func (g *group) prefetch(hints [][][]byte) (fns int) {
	keys, fns := g.s.prefetchKeys(hints)
	if len(keys) == 0 {
		return fns
	}
	ctx, cancel := g.reqCtx()
	defer cancel()
	resp, err := g.s.firstRead(ctx, keys)
	if err != nil {
		return fns
	}
	g.applyPrefetch(keys, resp)
	return fns
}

// prefetchKeys returns the distinct hinted keys (prefix included) of as
// many whole fns, from hints[0] on, as one transaction may read, and at
// least those of the first fn; fns is how many fns they serve.
func (s *Store) prefetchKeys(hints [][][]byte) (keys []string, fns int) {
	seen := map[string]bool{}
	max := s.opts.MaxTxnOps
	for n, h := range hints {
		var fresh []string
		for _, k := range h {
			key := string(s.prefix) + string(k)
			if !seen[key] && !slices.Contains(fresh, key) {
				fresh = append(fresh, key)
			}
		}
		if n > 0 && len(keys)+len(fresh) > max {
			return keys, n
		}
		for _, key := range fresh {
			if len(keys) == max {
				break
			}
			seen[key] = true
			keys = append(keys, key)
		}
	}
	return keys, len(hints)
}

// applyPrefetch makes resp, the answer to reading keys, the group's
// prefetched records, and its revision the group's.
func (g *group) applyPrefetch(keys []string, resp *clientv3.TxnResponse) {
	g.rev = resp.Header.Revision
	g.prefetched = make(map[string]prefetchedRec, len(keys))
	for j, r := range resp.Responses {
		p := prefetchedRec{}
		if rr := r.GetResponseRange(); rr != nil && len(rr.Kvs) == 1 {
			p.rec, p.rev = rr.Kvs[0].Value, rr.Kvs[0].ModRevision
		}
		g.prefetched[keys[j]] = p
	}
}

// covers reports whether every hinted key of a fn is answered without a
// request: prefetched, written or read by the group already. Without a
// prefetch there is nothing to cover with, and it reports true.
func (g *group) covers(hint [][]byte) bool {
	if g.prefetched == nil {
		return true
	}
	for _, k := range hint {
		key := string(g.s.prefix) + string(k)
		if _, ok := g.prefetched[key]; ok {
			continue
		}
		if _, ok := g.overlay[key]; ok {
			continue
		}
		if _, ok := g.readRecs[key]; ok {
			continue
		}
		if g.tombstoned(key) {
			continue
		}
		return false
	}
	return true
}

// firstRead fetches keys, the first read of a group, in one read-only
// transaction with the consistency of Options.Reads. A serializable
// answer older than the store's last commit is asked again linearizably,
// so the store always reads its own writes.
func (s *Store) firstRead(ctx context.Context, keys []string) (*clientv3.TxnResponse, error) {
	ops := make([]clientv3.Op, len(keys))
	if s.opts.Reads == Serializable {
		for i, k := range keys {
			ops[i] = clientv3.OpGet(k, clientv3.WithSerializable())
		}
		resp, err := s.kv.Txn(ctx).Then(ops...).Commit()
		if err == nil && resp.Header.Revision >= s.lastRev.Load() {
			return resp, nil
		}
	}
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	return s.kv.Txn(ctx).Then(ops...).Commit()
}

func newGroup(ctx context.Context, s *Store) *group {
	return &group{
		ctx: ctx, s: s,
		points: map[string]int64{}, scanned: map[string]int64{},
		overlay: map[string]write{}, readRecs: map[string][]byte{},
	}
}

func (g *group) mark() mark {
	return mark{undo: len(g.undo), points: len(g.pointLog), scanned: len(g.scanLog), ranges: len(g.ranges), tombs: g.tombs}
}

// addPoint records a key read by Get and its ModRevision.
func (g *group) addPoint(k string, rev int64) {
	if _, ok := g.points[k]; !ok {
		g.pointLog = append(g.pointLog, k)
	}
	g.points[k] = rev
}

// addScanned records a key seen by Scan and its ModRevision.
func (g *group) addScanned(k string, rev int64) {
	if _, ok := g.scanned[k]; !ok {
		g.scanLog = append(g.scanLog, k)
	}
	g.scanned[k] = rev
}

// forgetReads drops the reads made since m, with their cached records, so
// that a group closed before the fn that made them does not compare them.
// A fn that failed on its own keeps its reads: comparing more is safe.
func (g *group) forgetReads(m mark) {
	for _, k := range g.pointLog[m.points:] {
		delete(g.points, k)
		if _, ok := g.scanned[k]; !ok {
			delete(g.readRecs, k)
		}
	}
	for _, k := range g.scanLog[m.scanned:] {
		delete(g.scanned, k)
		if _, ok := g.points[k]; !ok {
			delete(g.readRecs, k)
		}
	}
	g.pointLog, g.scanLog = g.pointLog[:m.points], g.scanLog[:m.scanned]
	g.ranges = g.ranges[:m.ranges]
}

func (g *group) rollback(m mark) {
	for i := len(g.undo) - 1; i >= m.undo; i-- {
		u := g.undo[i]
		if u.had {
			g.overlay[u.key] = u.prev
		} else {
			delete(g.overlay, u.key)
		}
	}
	g.undo = g.undo[:m.undo]
	g.tombs = m.tombs
}

func (g *group) set(key string, w write) {
	prev, had := g.overlay[key]
	g.undo = append(g.undo, undoEntry{key: key, prev: prev, had: had})
	g.overlay[key] = w
}

func (g *group) tombstoned(k string) bool {
	i := sort.Search(len(g.tombs), func(i int) bool { return below(k, g.tombs[i].end) })
	return i < len(g.tombs) && g.tombs[i].contains(k)
}

// addTomb merges r into the sorted, disjoint tombstones. The slice is
// rebuilt, never edited in place, so marks can keep old versions.
func (g *group) addTomb(r span) {
	out := make([]span, 0, len(g.tombs)+1)
	for _, t := range g.tombs {
		if (t.end != "" && t.end < r.start) || (r.end != "" && t.start > r.end) {
			out = append(out, t)
			continue
		}
		r.start = min(r.start, t.start)
		if r.end != "" && (t.end == "" || t.end > r.end) {
			r.end = t.end
		}
	}
	out = append(out, r)
	slices.SortFunc(out, func(a, b span) int { return compareStrings(a.start, b.start) })
	g.tombs = out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (g *group) reqCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(g.ctx, g.s.opts.RequestTimeout)
}

// readOpts pins a read to the group's revision once it has one. Such a
// read is served by the member it reaches without a quorum round
// (serializable): the data at a revision never changes, so any member that
// has applied it answers exactly as the leader would. Only the group's
// first read is linearizable, which fixes a revision no older than any
// write acknowledged before the group started.
func (g *group) readOpts(serializable bool, opts ...clientv3.OpOption) []clientv3.OpOption {
	if g.rev != 0 {
		opts = append(opts, clientv3.WithRev(g.rev))
		if serializable {
			opts = append(opts, clientv3.WithSerializable())
		}
	}
	return opts
}

func (g *group) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if g.rev == 0 && g.s.opts.Reads == Serializable {
		// The group's first read, served by any member unless its
		// answer predates the store's last commit (see firstRead).
		resp, err := g.s.kv.Get(ctx, key, append(slices.Clip(opts), clientv3.WithSerializable())...)
		if err == nil && resp.Header.Revision >= g.s.lastRev.Load() {
			g.rev = resp.Header.Revision
			return resp, nil
		}
	}
	resp, err := g.s.kv.Get(ctx, key, g.readOpts(true, opts...)...)
	if isFutureRev(err) {
		// The member has not applied the group's revision yet: ask again
		// through the leader.
		resp, err = g.s.kv.Get(ctx, key, g.readOpts(false, opts...)...)
	}
	if err != nil {
		if isCompacted(err) {
			g.retry = errRetry
			return nil, errRetry
		}
		g.retry = fmt.Errorf("etcdstore: reading %q: %w", key, err)
		return nil, g.retry
	}
	if g.rev == 0 {
		g.rev = resp.Header.Revision
	}
	return resp, nil
}

func isFutureRev(err error) bool {
	return err != nil && strings.Contains(err.Error(), "required revision is a future revision")
}

func isCompacted(err error) bool {
	return err != nil && strings.Contains(err.Error(), "required revision has been compacted")
}

// limitMargin is left below MaxRequestBytes for the transaction's framing.
const limitMargin = 64 << 10

// opsPerWrite is the protobuf framing estimated per operation.
const opsPerWrite = 32

func (g *group) checkLimits() error {
	ops, size := g.writeOps()
	if ops > g.s.opts.MaxTxnOps {
		return fmt.Errorf("%w: %d write operations, limit %d", ErrTxnTooLarge, ops, g.s.opts.MaxTxnOps)
	}
	cmps := len(g.points) + len(g.ranges)
	if cmps > g.s.opts.MaxTxnOps {
		return fmt.Errorf("%w: %d keys and ranges read, limit %d", ErrTxnTooLarge, cmps, g.s.opts.MaxTxnOps)
	}
	for k := range g.points {
		size += len(k) + opsPerWrite
	}
	for _, r := range g.ranges {
		size += len(r.start) + len(r.end) + opsPerWrite
	}
	if limit := g.s.opts.MaxRequestBytes - limitMargin; size > limit {
		return fmt.Errorf("%w: about %d bytes, limit %d", ErrTxnTooLarge, size, limit)
	}
	return nil
}

// writeOps counts the operations commit would send and their size.
func (g *group) writeOps() (ops, size int) {
	puts := 0
	for k, w := range g.overlay {
		if w.deleted && g.tombstoned(k) {
			continue
		}
		if !w.deleted {
			puts++
		}
		ops++
		size += len(k) + len(w.rec) + opsPerWrite
	}
	// Each put inside a tombstone splits it in two.
	ops += len(g.tombs)
	for _, t := range g.tombs {
		size += len(t.start) + len(t.end) + opsPerWrite
	}
	if len(g.tombs) > 0 && puts > 0 {
		for k, w := range g.overlay {
			if !w.deleted && g.tombstoned(k) {
				ops++
				size += 2*len(k) + opsPerWrite
			}
		}
	}
	return ops, size
}

// commit sends the group as one etcd transaction. ok is false when a
// compare failed: another process wrote something the group read.
func (g *group) commit() (ok bool, err error) {
	var then []clientv3.Op
	var putKeys []string
	for k, w := range g.overlay {
		if w.deleted {
			if !g.tombstoned(k) {
				then = append(then, clientv3.OpDelete(k))
			}
			continue
		}
		var opts []clientv3.OpOption
		if w.exp != 0 {
			id, err := g.s.leaseFor(g.ctx, w.exp)
			if err != nil {
				return false, err
			}
			if id != clientv3.NoLease {
				opts = append(opts, clientv3.WithLease(id))
			}
		}
		// A put without a lease detaches the key from any lease it had.
		then = append(then, clientv3.OpPut(k, string(w.rec), opts...))
		putKeys = append(putKeys, k)
	}
	// etcd refuses a transaction whose puts fall inside its range
	// deletions, so each tombstone is cut around the keys put in it.
	slices.Sort(putKeys)
	for _, t := range g.tombs {
		start := t.start
		i, _ := slices.BinarySearch(putKeys, t.start)
		for ; i < len(putKeys) && below(putKeys[i], t.end); i++ {
			if start < putKeys[i] {
				then = append(then, clientv3.OpDelete(start, clientv3.WithRange(putKeys[i])))
			}
			start = putKeys[i] + "\x00"
		}
		if below(start, t.end) {
			then = append(then, clientv3.OpDelete(start, clientv3.WithRange(etcdEnd(t.end))))
		}
	}
	if len(then) == 0 {
		// Read-only: consistent at g.rev, nothing to commit, unless some
		// reads are older (mixedRevs): then it is rerun on a fresh read.
		return !g.mixedRevs, nil
	}
	var cmps []clientv3.Cmp
	if g.rev != 0 {
		for k, rev := range g.points {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
		}
		for _, r := range g.ranges {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r.start), "<", g.rev+1).WithRange(etcdEnd(r.end)))
		}
		// Scanned keys compared one by one catch deletions inside ranges,
		// as far as the limit allows.
		if len(cmps)+len(g.scanned) <= g.s.opts.MaxTxnOps {
			for k, rev := range g.scanned {
				if _, dup := g.points[k]; !dup {
					cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
				}
			}
		}
	}
	if g.s.commitHook != nil {
		g.s.commitHook(len(cmps), len(then))
	}
	ctx, cancel := g.reqCtx()
	defer cancel()
	resp, err := g.s.kv.Txn(ctx).If(cmps...).Then(then...).Commit()
	if err != nil {
		return false, fmt.Errorf("etcdstore: committing %d writes (outcome unknown if the request timed out): %w", len(then), err)
	}
	if resp.Succeeded {
		g.commitRev = resp.Header.Revision
		g.s.noteCommit(g.commitRev)
	}
	return resp.Succeeded, nil
}

// noteCommit records rev, the revision of a commit of this store, as the
// oldest a serializable read may answer from.
func (s *Store) noteCommit(rev int64) {
	for {
		last := s.lastRev.Load()
		if rev <= last || s.lastRev.CompareAndSwap(last, rev) {
			return
		}
	}
}

// txn is the kv.Txn view of a group for one TxnFunc.
type txn struct{ g *group }

func (t *txn) key(k []byte) string {
	return string(t.g.s.prefix) + string(k)
}

// end maps a Scan or DeleteRange bound to etcd's key space: nil is the end
// of the store's prefix ("" when there is none: no upper bound at all).
func (t *txn) end(e []byte) string {
	if e != nil {
		return t.key(e)
	}
	if end := clientv3.GetPrefixRangeEnd(string(t.g.s.prefix)); end != "\x00" {
		return end
	}
	return ""
}

func (t *txn) Get(key []byte) ([]byte, int64, bool, error) {
	g := t.g
	if g.retry != nil {
		return nil, 0, false, g.retry
	}
	k := t.key(key)
	if w, ok := g.overlay[k]; ok {
		if w.deleted {
			return nil, 0, false, nil
		}
		return decodeAt(k, w.rec)
	}
	if g.tombstoned(k) {
		return nil, 0, false, nil
	}
	rec, cached := g.readRecs[k]
	if p, ok := g.prefetched[k]; ok && !cached {
		rec, cached = p.rec, true
		g.readRecs[k] = rec
		g.addPoint(k, p.rev)
	} else if !cached {
		ctx, cancel := g.reqCtx()
		defer cancel()
		resp, err := g.get(ctx, k)
		if err != nil {
			return nil, 0, false, err
		}
		var rev int64
		if len(resp.Kvs) == 1 {
			rec = resp.Kvs[0].Value
			rev = resp.Kvs[0].ModRevision
		}
		g.readRecs[k] = rec
		g.addPoint(k, rev)
	} else if _, ok := g.points[k]; !ok {
		g.addPoint(k, g.scanned[k])
	}
	if rec == nil {
		return nil, 0, false, nil
	}
	return decodeAt(k, rec)
}

func decodeAt(k string, rec []byte) ([]byte, int64, bool, error) {
	v, exp, err := decodeRecord(rec)
	if err != nil {
		return nil, 0, false, fmt.Errorf("key %q: %w", k, err)
	}
	return v, exp, true, nil
}

func (t *txn) Set(key, value []byte, expireAt int64) error {
	if t.g.retry != nil {
		return t.g.retry
	}
	if t.g.readOnly {
		return kv.ErrReadOnly
	}
	t.g.set(t.key(key), write{rec: encodeRecord(value, expireAt), exp: expireAt})
	return nil
}

func (t *txn) Delete(key []byte) error {
	if t.g.retry != nil {
		return t.g.retry
	}
	if t.g.readOnly {
		return kv.ErrReadOnly
	}
	t.g.set(t.key(key), write{deleted: true})
	return nil
}

func (t *txn) DeleteRange(start, end []byte) error {
	g := t.g
	if g.retry != nil {
		return g.retry
	}
	if g.readOnly {
		return kv.ErrReadOnly
	}
	r := span{t.key(start), t.end(end)}
	if r.empty() {
		return nil
	}
	// Buffered writes in the range are superseded by the deletion.
	for k := range g.overlay {
		if r.contains(k) {
			g.set(k, write{deleted: true})
		}
	}
	g.addTomb(r)
	return nil
}

// Scans read etcd in pages: the first of firstScanPage records (most
// scans stop early: a scan with a small limit, a prefix with few keys),
// each next one four times larger, up to scanPage.
const (
	firstScanPage = 16
	scanPage      = 256
)

func (t *txn) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	g := t.g
	if g.retry != nil {
		return g.retry
	}
	r := span{t.key(start), t.end(end)}
	if r.empty() {
		return nil
	}
	g.ranges = append(g.ranges, r)
	// Overlay keys in range, sorted, merged with etcd's pages below.
	var ov []string
	for k := range g.overlay {
		if r.contains(k) {
			ov = append(ov, k)
		}
	}
	slices.Sort(ov)
	plen := len(g.s.prefix)
	emit := func(k string, rec []byte) (bool, error) {
		v, exp, err := decodeRecord(rec)
		if err != nil {
			return false, fmt.Errorf("key %q: %w", k, err)
		}
		return fn([]byte(k[plen:]), v, exp)
	}
	emitOverlay := func(upTo string, all bool) (bool, error) {
		for len(ov) > 0 && (all || ov[0] < upTo) {
			k := ov[0]
			ov = ov[1:]
			if w := g.overlay[k]; !w.deleted {
				if more, err := emit(k, w.rec); err != nil || !more {
					return false, err
				}
			}
		}
		return true, nil
	}
	from := r.start
	for page := int64(firstScanPage); ; page = min(4*page, scanPage) {
		ctx, cancel := g.reqCtx()
		resp, err := g.get(ctx, from, clientv3.WithRange(etcdEnd(r.end)), clientv3.WithLimit(page))
		cancel()
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			k := string(kv.Key)
			g.addScanned(k, kv.ModRevision)
			if _, ok := g.readRecs[k]; !ok {
				g.readRecs[k] = kv.Value
			}
			if more, err := emitOverlay(k, false); err != nil || !more {
				return err
			}
			if _, shadowed := g.overlay[k]; shadowed {
				if len(ov) > 0 && ov[0] == k {
					if more, err := emitOverlay(k+"\x00", false); err != nil || !more {
						return err
					}
				}
				continue
			}
			if g.tombstoned(k) {
				continue
			}
			if more, err := emit(k, kv.Value); err != nil || !more {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	_, err := emitOverlay("", true)
	return err
}
