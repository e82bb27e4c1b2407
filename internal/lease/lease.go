// Package lease gives named, exclusive, expiring leases (the ownership of
// a partition) through a replicated NATS JetStream stream: one subject per
// lease, the stream keeping the last message of each, every change a
// compare-and-set.
//
// A holder acquires a lease by writing its subject, and keeps it by
// renewing (a write expecting the revision it last wrote) more often than
// the lease's TTL. Lapse needs no synchronised clocks: a contender takes a
// lease over only after it has seen the same revision, unchanged, for a
// whole TTL by its own clock, while the holder considers the lease its own
// only until TTL minus a margin after it *sent* its last successful
// renewal. Since a contender's wait starts after that renewal was stored,
// hence after it was sent, the holder's deadline comes before any
// take-over as long as the two clocks run at about the same rate (the
// margin covers the difference). Leases keep owners apart in the normal
// case; a holder paused past its deadline is stopped by fencing (see
// connectors/kv/changelog), not by the lease.
//
// Why not a JetStream key-value bucket: its compare-and-set (Update with a
// revision, the Nats-Expected-Last-Subject-Sequence header) is checked
// before the Raft proposal on clustered streams of servers before 2.9.21
// (nats-server issue 4320), so concurrent updates of one revision can all
// succeed; four concurrent Updates of one revision all did on the 2.9.10
// server CI installs. The stream-wide Nats-Expected-Last-Sequence counts
// the proposals in flight and admits exactly one, so every write here
// reads the stream's last sequence and the lease's last message (from the
// stream leader, never a replica) and publishes expecting that sequence,
// retrying when another lease's write got in between.
package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors of leases.
var (
	// ErrHeld reports a lease held by another holder that has not lapsed
	// (or was just taken by another contender).
	ErrHeld = errors.New("lease is held by another holder")
	// ErrLost reports a lease its holder no longer has: another holder
	// changed it (took it over after it lapsed), or the holder's deadline
	// passed before a renewal. The holder must stop acting as owner.
	ErrLost = errors.New("lease lost")
	// ErrReleased reports use of a lease after Release.
	ErrReleased = errors.New("lease released")
	// errConflict reports a compare-and-set whose expected revision is
	// not the lease's.
	errConflict = errors.New("lease changed")
)

// Defaults for Options.
const (
	// DefaultTTL is how long a lease lives without renewal: failover
	// takes about this long plus a poll, so it is short, but long enough
	// that a loaded machine renews well inside it (every TTL/3).
	DefaultTTL = 5 * time.Second
	// DefaultReplicas keeps the stream available with one server down.
	DefaultReplicas = 3
	// casAttempts bounds the retries of one write when writes of other
	// leases keep moving the stream's last sequence.
	casAttempts = 100
)

// Clock reads the time. Only differences between readings matter, so a
// reading with a monotonic component (time.Now) is what a real clock
// gives; tests give a fake one.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// Options configure a Table. Defaults are filled by EnsureDefaults and
// checked by Validate.
type Options struct {
	// TTL is the lifetime of a lease this table acquires or renews,
	// recorded in the lease so that contenders use the holder's TTL.
	// Default DefaultTTL.
	TTL time.Duration
	// Margin is how long before TTL has passed since it sent its last
	// renewal the holder considers its lease gone: it covers clocks that
	// run at slightly different rates. Default TTL/10; must be below TTL.
	Margin time.Duration
	// Replicas is the stream's replica count when Open creates it.
	// Default DefaultReplicas; 1, 3 or 5.
	Replicas int
	// Clock reads the time. Default: the real clock.
	Clock Clock
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.Margin == 0 {
		o.Margin = o.TTL / 10
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
}

// Validate reports the first invalid field, by name.
func (o *Options) Validate() error {
	switch {
	case o.TTL < time.Millisecond:
		return fmt.Errorf("lease: Options.TTL is %v, must be at least 1ms", o.TTL)
	case o.Margin < 0 || o.Margin >= o.TTL:
		return fmt.Errorf("lease: Options.Margin is %v, must be within [0, TTL %v)", o.Margin, o.TTL)
	case o.Replicas != 1 && o.Replicas != 3 && o.Replicas != 5:
		return fmt.Errorf("lease: Options.Replicas is %d, must be 1, 3 or 5", o.Replicas)
	}
	return nil
}

// RenewInterval is how often a holder should renew: a third of the TTL,
// so that two renewals in a row can fail (a stream leader moving) before
// the lease is lost.
func (o *Options) RenewInterval() time.Duration { return o.TTL / 3 }

// RenewInterval is the table's Options.RenewInterval.
func (t *Table) RenewInterval() time.Duration { return t.opts.RenewInterval() }

// value is what a lease's message holds; an empty message is a released
// lease.
type value struct {
	Holder string `json:"holder"`
	TTLms  int64  `json:"ttl_ms"`
}

// observation is the revision of a lease a contender last saw, and when
// it first saw it.
type observation struct {
	rev   uint64
	since time.Time
}

// Table is one holder's view of the leases of one stream. It is safe for
// concurrent use.
type Table struct {
	stream jetstream.Stream
	js     jetstream.JetStream
	prefix string // subjects are prefix + lease name
	holder string
	opts   Options
	val    []byte

	mu   sync.Mutex
	seen map[string]observation
	// casTurn makes the table's writes one at a time (a write holds its
	// one slot; a write whose context ends while it waits gives up);
	// chain is what they know of the stream (see cas).
	casTurn chan struct{}
	chain   chain
	// reads and writes count the stream info reads and the publishes
	// (tests).
	reads, writes atomic.Int64
	// infoMu guards the stream's cached info, which stream.Info updates
	// and message reads consult, without a lock of their own: Info
	// holds it exclusively, reads shared.
	infoMu sync.RWMutex
}

// info reads the stream's state, with the options given.
func (t *Table) info(ctx context.Context, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	t.reads.Add(1)
	t.infoMu.Lock()
	defer t.infoMu.Unlock()
	return t.stream.Info(ctx, opts...)
}

// lastMsg reads the last message of subject from the stream leader.
func (t *Table) lastMsg(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	t.infoMu.RLock()
	defer t.infoMu.RUnlock()
	return t.stream.GetLastMsgForSubject(ctx, subject)
}

// Open returns holder's table of the leases kept in stream (subjects
// "flowrun.lease.STREAM.NAME"), creating the stream when missing: file
// storage, opts.Replicas replicas, the last message of each subject kept,
// reads served by the stream leader only. holder names this process in
// the leases it takes; give each process start its own (host, pid and a
// random part), or a restarted process waits for its own old leases to
// lapse like anyone else.
func Open(ctx context.Context, js jetstream.JetStream, stream, holder string, opts Options) (*Table, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if holder == "" {
		return nil, errors.New("lease: the holder name is empty")
	}
	prefix := "flowrun.lease." + stream + "."
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:              stream,
			Subjects:          []string{prefix + ">"},
			Storage:           jetstream.FileStorage,
			Replicas:          opts.Replicas,
			MaxMsgsPerSubject: 1,
			Discard:           jetstream.DiscardOld,
			DenyDelete:        true,
			// Reads must come from the leader: a replica may lag.
			AllowDirect: false,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("lease: open stream %q: %w", stream, err)
	}
	if cfg := s.CachedInfo().Config; cfg.AllowDirect || len(cfg.Subjects) != 1 || cfg.Subjects[0] != prefix+">" {
		return nil, fmt.Errorf("lease: stream %q is not a lease stream (subjects %q, allow_direct %v)", stream, cfg.Subjects, cfg.AllowDirect)
	}
	val, err := json.Marshal(value{Holder: holder, TTLms: opts.TTL.Milliseconds()})
	if err != nil {
		return nil, err
	}
	return &Table{stream: s, js: js, prefix: prefix, holder: holder, opts: opts, val: val, seen: map[string]observation{},
		casTurn: make(chan struct{}, 1)}, nil
}

// checkName refuses lease names that are not subject tokens.
func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, " \t\r\n*>") || strings.HasPrefix(name, ".") ||
		strings.HasSuffix(name, ".") || strings.Contains(name, "..") {
		return fmt.Errorf("lease: name %q must be dot-separated tokens without spaces, '*' or '>'", name)
	}
	return nil
}

// read returns the lease's last revision (0 when never written) and its
// value (nil when released or never written), from the stream leader.
func (t *Table) read(ctx context.Context, name string) (uint64, *value, error) {
	m, err := t.lastMsg(ctx, t.prefix+name)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("lease %q: read: %w", name, err)
	}
	if len(m.Data) == 0 {
		return m.Sequence, nil, nil
	}
	var v value
	if err := json.Unmarshal(m.Data, &v); err != nil || v.TTLms <= 0 {
		return 0, nil, fmt.Errorf("lease %q: revision %d holds %q, not a lease", name, m.Sequence, m.Data)
	}
	return m.Sequence, &v, nil
}

// revision returns the last revision of name (0 when never written),
// whatever it holds, from the stream leader.
func (t *Table) revision(ctx context.Context, name string) (uint64, error) {
	m, err := t.lastMsg(ctx, t.prefix+name)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("lease %q: read: %w", name, err)
	}
	return m.Sequence, nil
}

// cas writes data as the lease's next revision if its revision is still
// expect, and returns the new revision; errConflict when it is not. The
// stream's last sequence is read first, then the lease: publishing
// expecting that sequence succeeds only if nothing at all was written
// since, so the lease is still at the revision read.
//
// A table's writes are made one at a time. Made at once, the renewals of
// the leases of one process (a partition's owner each, and the member
// lease) each read the stream's last sequence, and all but one failed
// on it and read again: n renewals took about n²/2 attempts of three
// round trips, which on a loaded machine outlasted the leases' deadline,
// and lost leases were taken over again and again. One at a time, a
// write also knows what the table's previous write left (see chain): its
// sequence stands for the stream's last one read first (a publish
// expecting it fails if anything was written since), and when that run
// of writes wrote name at expect, the publish is the whole
// compare-and-set.
func (t *Table) cas(ctx context.Context, name string, expect uint64, data []byte) (uint64, error) {
	select {
	case t.casTurn <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("lease %q: waiting for the table's other writes: %w", name, ctx.Err())
	}
	defer func() { <-t.casTurn }()
	for attempt := 0; attempt < casAttempts; attempt++ {
		// last is the stream's last sequence as of a moment before the
		// lease's revision is known: the table's own last write's when
		// its run is unbroken, read from the stream otherwise.
		last := t.chain.seq
		if last == 0 {
			info, err := t.info(ctx)
			if err != nil {
				return 0, fmt.Errorf("lease %q: %w", name, err)
			}
			last = info.State.LastSeq
		}
		if expect == 0 || t.chain.seq == 0 || t.chain.revs[name] != expect {
			rev, err := t.revision(ctx, name)
			if err != nil {
				return 0, err
			}
			if rev != expect {
				return 0, fmt.Errorf("lease %q: %w: revision %d, expected %d", name, errConflict, rev, expect)
			}
		}
		seq, err := t.publish(ctx, name, data, last)
		if errors.Is(err, errWrongLastSeq) {
			t.chain.reset() // something was written since: read again
			continue
		}
		if err != nil {
			t.chain.reset() // written or not: unknown
			return 0, fmt.Errorf("lease %q: write: %w", name, err)
		}
		if last != t.chain.seq {
			t.chain.reset() // a new run, from a read of the stream
		}
		t.chain.extend(name, seq)
		return seq, nil
	}
	return 0, fmt.Errorf("lease %q: write: the stream kept changing over %d attempts", name, casAttempts)
}

// errWrongLastSeq reports a publish refused because the stream's last
// sequence was not the one expected.
var errWrongLastSeq = errors.New("the stream's last sequence is not the one expected")

// publish writes data to name's subject if the stream's last sequence is
// last, and returns the sequence written; errWrongLastSeq if it is not.
func (t *Table) publish(ctx context.Context, name string, data []byte, last uint64) (uint64, error) {
	t.writes.Add(1)
	m := nats.NewMsg(t.prefix + name)
	m.Data = data
	ack, err := t.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequence(last))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return 0, errWrongLastSeq
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// chain is what a table knows of its stream from its own writes: after
// an unbroken run of them, each published expecting the sequence the one
// before was written at, seq is the stream's last sequence as of the last
// (nothing else was written in between), and revs holds the revision
// (the sequence) of each lease the run wrote, as of seq. Nothing in it
// is trusted beyond that: a write that expects seq fails if anything was
// written since.
type chain struct {
	seq  uint64            // 0: no run
	revs map[string]uint64 // lease name → its revision as of seq
}

// extend records a write of name at seq, the run's next.
func (c *chain) extend(name string, seq uint64) {
	if c.revs == nil {
		c.revs = map[string]uint64{}
	}
	c.seq = seq
	c.revs[name] = seq
}

// reset forgets the run: a write failed, or others wrote.
func (c *chain) reset() {
	c.seq = 0
	clear(c.revs)
}

// Acquire takes the lease name if it is free (never written or released)
// or has lapsed: its revision has not changed for its holder's TTL since
// this table first saw it. Otherwise it fails with ErrHeld, naming the
// holder; a contender calls Acquire again, every RenewInterval or so, to
// see the lease lapse. Of contenders acquiring the same lease at once,
// exactly one succeeds.
func (t *Table) Acquire(ctx context.Context, name string) (*Lease, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	sent := t.opts.Clock.Now()
	rev, v, err := t.read(ctx, name)
	if err != nil {
		return nil, err
	}
	if v != nil {
		ttl := time.Duration(v.TTLms) * time.Millisecond
		t.mu.Lock()
		o, ok := t.seen[name]
		if !ok || o.rev != rev {
			o = observation{rev: rev, since: sent}
			t.seen[name] = o
		}
		t.mu.Unlock()
		if waited := sent.Sub(o.since); waited < ttl {
			return nil, fmt.Errorf("lease %q: %w %q (lapses in %v unless renewed)", name, ErrHeld, v.Holder, ttl-waited)
		}
	}
	next, err := t.cas(ctx, name, rev, t.val)
	if errors.Is(err, errConflict) {
		return nil, fmt.Errorf("lease %q: %w (renewed or taken just now)", name, ErrHeld)
	}
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	delete(t.seen, name)
	t.mu.Unlock()
	return &Lease{t: t, name: name, epoch: next, rev: next, deadline: sent.Add(t.opts.TTL - t.opts.Margin)}, nil
}

// State is one lease as Survey saw it.
type State struct {
	// Name is the lease's name ("p.017").
	Name string
	// Holder names the holder; "" when the lease is free (released, or
	// never written).
	Holder string
	// Revision is the lease's last revision (0 when never written).
	Revision uint64
	// Lapsed reports a held lease whose revision this table has seen
	// unchanged for its holder's TTL: Acquire would take it over.
	Lapsed bool
}

// Free reports whether the lease can be acquired now: free or lapsed.
func (s State) Free() bool { return s.Holder == "" || s.Lapsed }

// Survey returns every lease whose name starts with prefix, which must
// end with a dot ("p.", "m."), in name order, read from the stream
// leader. Each held lease's revision is recorded as Acquire records it, so
// a lease is reported Lapsed once this table has seen the same revision
// for its holder's TTL, by Survey or Acquire calls alike: survey about
// every RenewInterval to see leases lapse.
func (t *Table) Survey(ctx context.Context, prefix string) ([]State, error) {
	if !strings.HasSuffix(prefix, ".") || checkName(strings.TrimSuffix(prefix, ".")) != nil {
		return nil, fmt.Errorf("lease: survey prefix %q must be dot-separated tokens ending with a dot", prefix)
	}
	now := t.opts.Clock.Now()
	info, err := t.info(ctx, jetstream.WithSubjectFilter(t.prefix+prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("lease: survey %q: %w", prefix, err)
	}
	names := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		names = append(names, strings.TrimPrefix(subj, t.prefix))
	}
	sort.Strings(names)
	out := make([]State, 0, len(names))
	for _, name := range names {
		rev, v, err := t.read(ctx, name)
		if err != nil {
			return nil, err
		}
		st := State{Name: name, Revision: rev}
		if v != nil {
			st.Holder = v.Holder
			t.mu.Lock()
			o, ok := t.seen[name]
			if !ok || o.rev != rev {
				o = observation{rev: rev, since: now}
				t.seen[name] = o
			}
			t.mu.Unlock()
			st.Lapsed = now.Sub(o.since) >= time.Duration(v.TTLms)*time.Millisecond
		}
		out = append(out, st)
	}
	return out, nil
}

// Settle writes data under name if nothing was ever written there, and
// returns what name holds then: data, or what an earlier Settle wrote
// (the first writer wins, by the same compare-and-set as leases). A flow
// records settings every member must agree on this way (the partition
// count). The name must not be used as a lease.
func (t *Table) Settle(ctx context.Context, name string, data []byte) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("lease: settle %q: empty value", name)
	}
	for attempt := 0; attempt < casAttempts; attempt++ {
		m, err := t.lastMsg(ctx, t.prefix+name)
		if err == nil {
			return m.Data, nil
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("lease: settle %q: read: %w", name, err)
		}
		_, err = t.cas(ctx, name, 0, data)
		if err == nil {
			return data, nil
		}
		if !errors.Is(err, errConflict) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("lease: settle %q: the value kept changing over %d attempts", name, casAttempts)
}

// Value returns what name holds, written by Settle or Replace, and nil
// when nothing was ever written there.
func (t *Table) Value(ctx context.Context, name string) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	m, err := t.lastMsg(ctx, t.prefix+name)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease: read %q: %w", name, err)
	}
	return m.Data, nil
}

// ErrChanged reports a Replace whose expected value is not the one name
// holds.
var ErrChanged = errors.New("settled value changed")

// Replace writes data under name, a name written by Settle, if name
// still holds old (compared byte for byte), by the same compare-and-set
// as leases: of writers replacing one value at once, exactly one
// succeeds. It fails with ErrChanged when name holds something else (or
// nothing). Offline tools change a recorded setting this way (the
// partition count, by flowrun repartition).
func (t *Table) Replace(ctx context.Context, name string, old, data []byte) error {
	if err := checkName(name); err != nil {
		return err
	}
	if len(data) == 0 {
		return fmt.Errorf("lease: replace %q: empty value", name)
	}
	for attempt := 0; attempt < casAttempts; attempt++ {
		m, err := t.lastMsg(ctx, t.prefix+name)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("lease: replace %q: %w: nothing recorded, expected %q", name, ErrChanged, old)
		}
		if err != nil {
			return fmt.Errorf("lease: replace %q: read: %w", name, err)
		}
		if !bytes.Equal(m.Data, old) {
			return fmt.Errorf("lease: replace %q: %w: it holds %q, expected %q", name, ErrChanged, m.Data, old)
		}
		_, err = t.cas(ctx, name, m.Sequence, data)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errConflict) {
			return err
		}
	}
	return fmt.Errorf("lease: replace %q: the value kept changing over %d attempts", name, casAttempts)
}

// Lease is a lease this table holds. It is safe for concurrent use.
type Lease struct {
	t     *Table
	name  string
	epoch uint64

	mu       sync.Mutex
	rev      uint64
	deadline time.Time
	lost     error
}

// Name returns the lease's name.
func (l *Lease) Name() string { return l.name }

// Epoch returns the revision at which the lease was acquired: it grows
// with every acquisition of the same lease, by anyone, and stays the same
// across renewals.
func (l *Lease) Epoch() uint64 { return l.epoch }

// Deadline returns the time, by the table's clock, until which the holder
// may act as owner unless it renews.
func (l *Lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// Valid reports whether the holder may still act as owner: the lease was
// not lost or released and its deadline has not passed.
func (l *Lease) Valid() bool {
	return l.Err() == nil
}

// Err returns why the lease is no longer valid (ErrLost, ErrReleased), or
// nil while it is.
func (l *Lease) Err() error {
	now := l.t.opts.Clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil && !now.Before(l.deadline) {
		l.lost = fmt.Errorf("lease %q: %w: deadline passed without a renewal", l.name, ErrLost)
	}
	return l.lost
}

// Renew extends the lease to TTL − Margin from now, by a compare-and-set
// on the revision the holder last wrote. It fails with ErrLost, for good,
// when the deadline has passed or another holder changed the lease; other
// errors (the stream unreachable) leave the lease valid until its
// deadline, and Renew may be tried again.
func (l *Lease) Renew(ctx context.Context) error {
	if err := l.Err(); err != nil {
		return err
	}
	sent := l.t.opts.Clock.Now()
	l.mu.Lock()
	rev := l.rev
	l.mu.Unlock()
	next, err := l.t.cas(ctx, l.name, rev, l.t.val)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case errors.Is(err, errConflict):
		l.lost = fmt.Errorf("lease %q: %w: changed by another holder since revision %d", l.name, ErrLost, rev)
		return l.lost
	case err != nil:
		return fmt.Errorf("lease %q: renew: %w", l.name, err)
	case l.lost != nil:
		return l.lost
	}
	l.rev = next
	l.deadline = sent.Add(l.t.opts.TTL - l.t.opts.Margin)
	return nil
}

// Release gives the lease up at once, so another holder can acquire it
// without waiting for it to lapse: it writes an empty revision if the
// lease still has the holder's last one. The lease is invalid afterwards,
// whatever the outcome.
func (l *Lease) Release(ctx context.Context) error {
	l.mu.Lock()
	rev, lost := l.rev, l.lost
	if l.lost == nil {
		l.lost = fmt.Errorf("lease %q: %w", l.name, ErrReleased)
	}
	l.mu.Unlock()
	if errors.Is(lost, ErrReleased) {
		return nil
	}
	if _, err := l.t.cas(ctx, l.name, rev, nil); err != nil && !errors.Is(err, errConflict) {
		return fmt.Errorf("lease %q: release: %w", l.name, err)
	}
	return nil // released, or changed by another holder: not ours any more
}
