package kv

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/tidwall/gjson"
)

// Session is the view of a Connector's namespace that one function given to
// Run has: each method runs the kv command of the same name with the same
// checks, limits, errors and expiry handling as the command carried by an
// event, inside the function's single transaction. Values are JSON bytes;
// returned slices belong to the caller. A Session is valid only during the
// function it was passed to.
//
// The calls of one function share the budgets of one event
// (Options.MaxResultBytes, Options.MaxKeysVisited): a call crossing one
// fails with ErrBudgetExceeded, and so do the later ones; long reads stop
// with the context's error when the ctx given to Run is done.
type Session struct {
	x execer
	// inWriter is set when the function runs in the backend's Update (the
	// store's writer), not in the optimistic phase; began is when the
	// writer began the Run's first function.
	inWriter bool
	began    time.Time
}

// WriterHeld returns how long the Run this function belongs to has held
// the store's writer so far: since the writer began its first function,
// including time spent waiting for the optimistic phase and applying its
// results. It is 0 outside the writer.
func (s *Session) WriterHeld() time.Duration {
	if !s.InWriter() {
		return 0
	}
	return time.Since(s.began)
}

// InWriter reports whether the function runs in the backend's Update,
// where it holds the store's writer, rather than optimistically in the
// caller's goroutine (false for a nil Session). A function that has held
// the writer long enough may return ErrDeferred there.
func (s *Session) InWriter() bool { return s != nil && s.inWriter }

// ErrDeferred, returned (or wrapped) by a function running in the writer
// (Session.InWriter), defers it and every later function of the same Run
// call: their errs are ErrDeferred, nothing of theirs is applied, and the
// caller runs them again in a later Run. It lets a caller bound how long
// one Run holds the store's writer without reordering its functions.
var ErrDeferred = errors.New("kv: deferred to a later Run")

// Run runs each fn inside its own TxnFunc of one Backend.Update, so the
// backend commits them as a group. Every Session call a fn makes is atomic
// with the others of that fn: when fn returns an error, none of its writes
// are kept and errs[i] holds the error. A non-nil error means the commit
// failed and no fn took effect (it wraps ErrCommit).
//
// With Options.Optimistic and a Backend that is a Viewer, fns first run
// optimistically in the caller's goroutine, their reads recorded and
// their writes buffered, for as long as the Update waits for the writer;
// inside the writer Run then only checks that what a fn read is
// unchanged and applies its writes, and runs fn again there when it is not
// or when the optimistic run did not reach it (see optimistic.go). So fn
// may be called more than once, and it must have no effect other than
// through its Session and its return value, or undo such effects when
// called again: only the last call's Session calls and result count.
// Calls are never concurrent: optimistic ones in the caller's goroutine,
// the others in the writer once the caller has stopped calling fns. A fn
// using Keys, GetAll, Count or Clear is always run again in the writer.
func (c *Connector) Run(ctx context.Context, fns []func(s *Session) error) (errs []error, err error) {
	return c.run(ctx, fns, nil)
}

// runHooks let tests observe and disturb Run.
type runHooks struct {
	// sequential submits the Update only after the whole optimistic
	// phase, so that which fns run where does not depend on timing;
	// between, when set, runs in that gap.
	sequential bool
	between    func()
	// Counted in the writer: fns whose optimistic run was kept, fns run
	// again after a failed validation, fns run in the writer only.
	kept, reruns, pessimistic int
}

func (c *Connector) run(ctx context.Context, fns []func(s *Session) error, h *runHooks) (errs []error, err error) {
	errs = make([]error, len(fns))
	txs := make([]TxnFunc, len(fns))
	sessions := make([]Session, len(fns)) // one allocation, not one per fn
	v, ok := c.b.(Viewer)
	if !ok || !c.opts.Optimistic || len(fns) == 0 {
		deferred := false // see ErrDeferred
		var began time.Time
		for i, fn := range fns {
			txs[i] = func(tx Txn) error {
				if deferred {
					return ErrDeferred
				}
				if i == 0 {
					began = time.Now()
				}
				s := &sessions[i]
				*s = Session{x: execer{c: c, tx: tx, now: c.opts.Now().UnixMilli(), ctx: ctx}, inWriter: true, began: began}
				err := fn(s)
				if errors.Is(err, ErrDeferred) {
					deferred = true
				}
				return err
			}
		}
		if err := c.b.Update(ctx, txs, errs); err != nil {
			return errs, fmt.Errorf("%w: %w", ErrCommit, err)
		}
		return errs, nil
	}

	ph := &optPhase{opt: make([]optRun, len(fns))}
	ph.cond.L = &ph.mu
	// deferred is set, in the writer, once a fn has returned ErrDeferred:
	// every later fn is deferred too, its optimistic run not applied, so
	// that the caller's later Run keeps the order of fns.
	deferred := false
	var began time.Time
	for i, fn := range fns {
		txs[i] = func(tx Txn) error {
			if deferred {
				return ErrDeferred
			}
			if i == 0 {
				began = time.Now()
			}
			if ph.take(i) {
				r := &ph.opt[i]
				if r.validate(tx) {
					if h != nil {
						h.kept++
					}
					if r.err != nil {
						return r.err
					}
					return r.apply(tx)
				}
				if h != nil {
					h.reruns++
				}
			} else if h != nil {
				h.pessimistic++
			}
			// fn runs here, in the writer: it needs the caller's goroutine
			// to have stopped calling fns.
			ph.exclusive()
			s := &sessions[i]
			*s = Session{x: execer{c: c, tx: tx, now: c.opts.Now().UnixMilli(), ctx: ctx}, inWriter: true, began: began}
			err := fn(s)
			if errors.Is(err, ErrDeferred) {
				deferred = true
			}
			return err
		}
	}
	// The Update is submitted once the View runs the optimistic phase, so
	// that the phase runs while the Update waits for the writer (see
	// take). It is not submitted before: a Viewer whose reads wait for
	// the writer would then wait for a writer that waits for them.
	done := make(chan error, 1)
	submitted := false
	submit := func() {
		submitted = true
		go func() {
			err := c.b.Update(ctx, txs, errs)
			ph.abandon() // no more results are needed
			done <- err
		}()
	}
	if h != nil && h.sequential {
		submit = func() {} // submitted after the phase, below
	}
	c.optimistic(ctx, v, fns, sessions, ph, submit)
	if !submitted {
		if h != nil && h.between != nil {
			h.between()
		}
		submit = func() {
			submitted = true
			go func() { done <- c.b.Update(ctx, txs, errs) }()
		}
		submit()
	}
	if err := <-done; err != nil {
		return errs, fmt.Errorf("%w: %w", ErrCommit, err)
	}
	return errs, nil
}

// optPhase hands the results of the optimistic phase, which runs in the
// caller's goroutine, to the TxnFuncs run by the writer, and makes sure
// fns are never called by both at once.
type optPhase struct {
	opt []optRun

	mu       sync.Mutex
	cond     sync.Cond
	ready    int  // opt[:ready] are final
	finished bool // the caller calls no more fns
	stop     bool // the writer asks the caller to stop calling fns
}

// take reports whether opt[i] holds an optimistic run to validate. The
// writer never waits for the phase to get ahead: reaching a fn the phase
// has not finished, it stops the phase (waiting only for the fn in
// progress, which may be this one) and runs the fns the phase did not
// reach itself. So the phase runs fns only while the writer is busy
// with other work: an idle writer costs the caller nothing, a busy one
// finds the fns of this Run ready to validate.
func (p *optPhase) take(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ready <= i {
		p.stop = true
		for !p.finished {
			p.cond.Wait()
		}
	}
	return p.ready > i && p.opt[i].state == optDone
}

// exclusive stops the optimistic phase and waits until the caller has
// stopped calling fns.
func (p *optPhase) exclusive() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stop = true
	for !p.finished {
		p.cond.Wait()
	}
}

// abandon tells the caller to stop: no result is needed any more.
func (p *optPhase) abandon() {
	p.mu.Lock()
	p.stop = true
	p.mu.Unlock()
}

// published makes opt[:n] final and reports whether to go on.
func (p *optPhase) published(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ready = n
	return !p.stop
}

// finish ends the optimistic phase; calls after the first do nothing more.
func (p *optPhase) finish() {
	p.mu.Lock()
	p.finished = true
	p.mu.Unlock()
	p.cond.Broadcast()
}

// optimistic runs fns in order in one View, each against its own
// optimisticTxn that sees the buffered writes of the fns before it,
// recording what they did in ph.opt. It calls submit as the View starts
// running them. A fn left without a run (the View failed, the writer
// stopped the phase, ctx ended) runs in the writer.
func (c *Connector) optimistic(ctx context.Context, v Viewer, fns []func(s *Session) error, sessions []Session, ph *optPhase, submit func()) {
	defer ph.finish()
	t := optimisticTxn{overlay: overlay{}}
	viewErrs := make([]error, 1)
	// The View's error is not needed: every result is validated by the
	// writer, and a failing store fails the Update too. Nor is its
	// durability wait (View returns once the writes its reads observed
	// are durable): nothing read here is released before the Update
	// returns, and the Update's group is released after every group
	// committed before it, so the wait costs only time the caller would
	// spend waiting for the Update anyway.
	_ = v.View(ctx, []TxnFunc{func(tx Txn) error {
		submit()
		t.view = tx
		for i, fn := range fns {
			if ctx.Err() != nil {
				break // the rest runs in the writer, which reports ctx
			}
			r := &ph.opt[i]
			r.now = c.opts.Now().UnixMilli()
			t.begin()
			s := &sessions[i]
			*s = Session{x: execer{c: c, tx: &t, now: r.now, ctx: ctx}}
			ok, ferr := runOptimistic(fn, s)
			if !ok || t.failed {
				*r = optRun{}
				t.discard()
			} else {
				t.end(r)
				r.state, r.err = optDone, ferr
				if ferr == nil {
					t.overlay.publish(r)
				}
			}
			if !ph.published(i + 1) {
				break
			}
		}
		// Now, not when View returns: View may still wait for the
		// durability of what it read, and the writer need not.
		ph.finish()
		return nil
	}}, viewErrs)
}

// key validates a key (prefix when isPrefix) the way the decoder does.
func (s *Session) key(o op, k string, isPrefix bool) (command, error) {
	cmd := command{op: o, key: k, hasKey: true, limit: s.x.c.opts.MaxScan}
	what := "key"
	if isPrefix {
		what = "prefix"
	}
	d := decoder{opts: &s.x.c.opts}
	return cmd, d.checkKey(&cmd, what, gjson.Result{Type: gjson.String, Str: k}, isPrefix)
}

// value canonicalises a JSON value under the connector's limits.
func (s *Session) value(cmd *command, raw []byte, what string) ([]byte, error) {
	if len(raw) == 0 {
		return nil, cmd.errf(ErrNullValue, "%s is null", what)
	}
	v, err := appendCanonical(nil, raw)
	if err != nil {
		return nil, cmd.errf(err, "%s", what)
	}
	if string(v) == "null" {
		return nil, cmd.errf(ErrNullValue, "%s is null", what)
	}
	if len(v) > s.x.c.opts.MaxValueBytes {
		return nil, cmd.errf(ErrValueTooLarge, "value is %s, limit is %s", sizeString(len(v)), sizeString(s.x.c.opts.MaxValueBytes))
	}
	return v, nil
}

// Get returns the live value at key, or def (which may be nil) and false
// when the key is absent or expired.
func (s *Session) Get(key string, def []byte) ([]byte, bool, error) {
	cmd, err := s.key(opGet, key, false)
	if err != nil {
		return nil, false, err
	}
	r, err := s.x.run(&cmd)
	if err != nil || !r.found {
		return def, false, err
	}
	return r.data, true, nil
}

// Set stores the JSON value at key, expiring after ttl when ttl > 0 (like
// put with "ttl"; rounded up to a millisecond).
func (s *Session) Set(key string, value []byte, ttl time.Duration) error {
	cmd, err := s.key(opPut, key, false)
	if err != nil {
		return err
	}
	if cmd.value, err = s.value(&cmd, value, "value"); err != nil {
		return err
	}
	if ttl < 0 {
		return cmd.errf(ErrInvalidCommand, `"ttl" must be a positive number of seconds, got %v`, ttl.Seconds())
	}
	if ttl > 0 {
		cmd.ttlMs = (int64(ttl) + int64(time.Millisecond) - 1) / int64(time.Millisecond)
	}
	_, err = s.x.run(&cmd)
	return err
}

// ttlMs converts a Session call's ttl, which must be positive, as the
// decoder converts "ttl": rounded up to a millisecond.
func ttlMs(cmd *command, ttl time.Duration) (int64, error) {
	if ttl <= 0 {
		return 0, cmd.errf(ErrInvalidCommand, `"ttl" must be a positive number of seconds, got %v`, ttl.Seconds())
	}
	return (int64(ttl) + int64(time.Millisecond) - 1) / int64(time.Millisecond), nil
}

// Now returns the instant, in Unix milliseconds, against which the
// Session's calls judge expiry.
func (s *Session) Now() int64 { return s.x.now }

// SetKeepTTL stores the JSON value at key keeping the expiry of the live
// value it replaces (like put with "keep_ttl": true); a key that was
// absent or expired gets no expiry.
func (s *Session) SetKeepTTL(key string, value []byte) error {
	cmd, err := s.key(opPut, key, false)
	if err != nil {
		return err
	}
	if cmd.value, err = s.value(&cmd, value, "value"); err != nil {
		return err
	}
	cmd.keepTTL = true
	_, err = s.x.run(&cmd)
	return err
}

// Expiry returns the expiry of the live value at key, in Unix
// milliseconds (0: it never expires), and false when the key is absent or
// expired, like the expiry command.
func (s *Session) Expiry(key string) (expireAt int64, found bool, err error) {
	cmd, err := s.key(opExpiry, key, false)
	if err != nil {
		return 0, false, err
	}
	cur, err := s.x.peek(&cmd)
	if err != nil || !cur.live {
		return 0, false, err
	}
	return cur.rawExp, true, nil
}

// Touch makes the live value at key expire ttl from now (rounded up to a
// millisecond), keeping the value, like touch with "ttl". It reports
// false, changing nothing, when the key is absent or expired.
func (s *Session) Touch(key string, ttl time.Duration) (bool, error) {
	cmd, err := s.key(opTouch, key, false)
	if err != nil {
		return false, err
	}
	if cmd.ttlMs, err = ttlMs(&cmd, ttl); err != nil {
		return false, err
	}
	r, err := s.x.run(&cmd)
	return r.found, err
}

// IncrementTTL is Increment setting an expiry ttl from now, as
// IncrementIntTTL does.
func (s *Session) IncrementTTL(key string, delta float64, ttl time.Duration, refresh bool) ([]byte, error) {
	cmd, err := s.key(opIncrement, key, false)
	if err != nil {
		return nil, err
	}
	if cmd.ttlMs, err = ttlMs(&cmd, ttl); err != nil {
		return nil, err
	}
	if math.IsNaN(delta) || math.IsInf(delta, 0) {
		return nil, cmd.errf(ErrOverflow, `"by" %v is not a finite number`, delta)
	}
	if delta == math.Trunc(delta) && math.Abs(delta) < 1<<63 {
		cmd.byInt = int64(delta)
	} else {
		cmd.byFloat, cmd.byIsF = delta, true
	}
	cmd.refresh = refresh
	r, err := s.x.run(&cmd)
	return r.data, err
}

// IncrementIntTTL is IncrementInt setting an expiry ttl from now (like
// increment with "ttl"): on the key the increment creates, or, with
// refresh, on every increment. An increment of a live key without refresh
// keeps the key's expiry, so the first increment starts a window.
func (s *Session) IncrementIntTTL(key string, delta int64, ttl time.Duration, refresh bool) ([]byte, error) {
	cmd, err := s.key(opIncrement, key, false)
	if err != nil {
		return nil, err
	}
	if cmd.ttlMs, err = ttlMs(&cmd, ttl); err != nil {
		return nil, err
	}
	cmd.byInt, cmd.refresh = delta, refresh
	r, err := s.x.run(&cmd)
	return r.data, err
}

// Delete removes key and reports whether a live value was there.
func (s *Session) Delete(key string) (bool, error) {
	cmd, err := s.key(opDelete, key, false)
	if err != nil {
		return false, err
	}
	r, err := s.x.run(&cmd)
	return r.found, err
}

// Exists reports whether key holds a live value.
func (s *Session) Exists(key string) (bool, error) {
	cmd, err := s.key(opExists, key, false)
	if err != nil {
		return false, err
	}
	r, err := s.x.run(&cmd)
	return r.found, err
}

// Keys returns the live keys starting with prefix ("" for all), in order,
// at most Options.MaxScan of them.
func (s *Session) Keys(prefix string) ([]string, error) {
	cmd, err := s.key(opKeys, prefix, true)
	if err != nil {
		return nil, err
	}
	start, end := s.x.c.layout.prefixRange(prefix)
	var keys []string
	err = s.x.scanLive(&cmd, start, end, func(k, _ []byte) (bool, error) {
		key := s.x.c.layout.userKey(k)
		keys = append(keys, key)
		return len(keys) < cmd.limit, s.x.charge(&cmd, len(key)+3, len(keys))
	})
	if err != nil {
		return nil, err
	}
	return keys, nil
}

// GetAll returns the live entries starting with prefix as one JSON object;
// more than Options.MaxGetAll of them is ErrTooManyEntries.
func (s *Session) GetAll(prefix string) ([]byte, error) {
	cmd, err := s.key(opGetAll, prefix, true)
	if err != nil {
		return nil, err
	}
	r, err := s.x.run(&cmd)
	return r.data, err
}

// Clear deletes the keys starting with prefix ("" for the whole namespace)
// and returns how many live keys it deleted.
func (s *Session) Clear(prefix string) (int, error) {
	return s.counted(opClear, prefix)
}

// Count returns how many live keys start with prefix.
func (s *Session) Count(prefix string) (int, error) {
	return s.counted(opCount, prefix)
}

func (s *Session) counted(o op, prefix string) (int, error) {
	cmd, err := s.key(o, prefix, true)
	if err != nil {
		return 0, err
	}
	r, err := s.x.run(&cmd)
	if err != nil {
		return 0, err
	}
	n, _ := strconv.Atoi(string(r.data))
	return n, nil
}

// Increment adds delta to the number at key (0 when absent) and returns the
// new value as a JSON number. An integral delta within ±2^63 adds exactly
// to an integer; any other delta makes the value a float, as the increment
// command does with a fractional "by".
func (s *Session) Increment(key string, delta float64) ([]byte, error) {
	cmd, err := s.key(opIncrement, key, false)
	if err != nil {
		return nil, err
	}
	if math.IsNaN(delta) || math.IsInf(delta, 0) {
		return nil, cmd.errf(ErrOverflow, `"by" %v is not a finite number`, delta)
	}
	if delta == math.Trunc(delta) && math.Abs(delta) < 1<<63 {
		cmd.byInt = int64(delta)
	} else {
		cmd.byFloat, cmd.byIsF = delta, true
	}
	r, err := s.x.run(&cmd)
	return r.data, err
}

// IncrementInt is Increment with an integral delta, exact over the
// whole int64 range (a float64 delta is exact only within ±2^53).
func (s *Session) IncrementInt(key string, delta int64) ([]byte, error) {
	cmd, err := s.key(opIncrement, key, false)
	if err != nil {
		return nil, err
	}
	cmd.byInt = delta
	r, err := s.x.run(&cmd)
	return r.data, err
}

// CAS stores value at key if the current live value equals old (nil: the
// key must be absent); otherwise it fails with ErrCASMismatch.
func (s *Session) CAS(key string, old, value []byte) error {
	cmd, err := s.key(opCas, key, false)
	if err != nil {
		return err
	}
	if old != nil {
		if cmd.old, err = appendCanonical(nil, old); err != nil {
			return cmd.errf(err, "old")
		}
		if string(cmd.old) == "null" {
			cmd.old = nil
		}
	}
	if cmd.value, err = s.value(&cmd, value, "value"); err != nil {
		return err
	}
	_, err = s.x.run(&cmd)
	return err
}

// limit checks a page size the way the decoder checks "limit": 0 means
// Options.MaxScan, more than MaxScan is ErrTooManyEntries.
func (s *Session) limit(cmd *command, n int) error {
	switch {
	case n < 0:
		return cmd.errf(ErrInvalidCommand, `"limit" must be a non-negative integer, got %d`, n)
	case n > s.x.c.opts.MaxScan:
		return cmd.errf(ErrTooManyEntries, "limit %d is above the maximum of %d", n, s.x.c.opts.MaxScan)
	case n > 0:
		cmd.limit, cmd.hasLimit = n, true
	}
	return nil
}

// CAD deletes key if its live value equals old (a JSON value) and returns
// the deleted value; otherwise it fails with ErrCASMismatch, like the cad
// command.
func (s *Session) CAD(key string, old []byte) ([]byte, error) {
	cmd, err := s.key(opCad, key, false)
	if err != nil {
		return nil, err
	}
	if cmd.old, err = s.value(&cmd, old, "old"); err != nil {
		return nil, err
	}
	r, err := s.x.run(&cmd)
	return r.data, err
}

// KeysPage returns at most limit live keys starting with prefix ("" for
// all) and coming after the key after ("" to start at the first), in
// order, like keys with "after" and "limit". next is the cursor of the next
// page, to pass as after, and more reports whether there is one. A limit
// of 0 means Options.MaxScan; a higher one is ErrTooManyEntries.
func (s *Session) KeysPage(prefix, after string, limit int) (keys []string, next string, more bool, err error) {
	cmd, err := s.key(opKeys, prefix, true)
	if err != nil {
		return nil, "", false, err
	}
	if err := s.limit(&cmd, limit); err != nil {
		return nil, "", false, err
	}
	if after != "" {
		d := decoder{opts: &s.x.c.opts}
		if err := d.checkKey(&cmd, "after", gjson.Result{Type: gjson.String, Str: after}, true); err != nil {
			return nil, "", false, err
		}
		cmd.after, cmd.hasAfter = after, true
	}
	r, err := s.x.run(&cmd)
	if err != nil {
		return nil, "", false, err
	}
	for _, k := range gjson.ParseBytes(r.data).Array() {
		keys = append(keys, k.Str)
	}
	if n := gjson.ParseBytes(r.next); n.Type == gjson.String {
		return keys, n.Str, true, nil
	}
	return keys, "", false, nil
}

// Entry is one live key and its JSON value, as Scan returns them.
type Entry struct {
	Key   string
	Value []byte
}

// Scan returns the live entries whose keys are in [start, end) (end ""
// for the rest of the namespace), in key order, at most limit of them,
// like scan. A limit of 0 means Options.MaxScan; a higher one is
// ErrTooManyEntries. The next page starts at the last key returned
// followed by "\x00".
func (s *Session) Scan(start, end string, limit int) ([]Entry, error) {
	cmd, err := s.key(opScan, start, true)
	if err != nil {
		return nil, err
	}
	if err := s.limit(&cmd, limit); err != nil {
		return nil, err
	}
	if end != "" {
		d := decoder{opts: &s.x.c.opts}
		if err := d.checkKey(&cmd, "end", gjson.Result{Type: gjson.String, Str: end}, true); err != nil {
			return nil, err
		}
		cmd.end, cmd.hasEnd = end, true
	}
	r, err := s.x.run(&cmd)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(r.rows))
	for i, rw := range r.rows {
		out[i] = Entry{Key: rw.key, Value: rw.value}
	}
	return out, nil
}
