package kv

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Session is the view of a Connector's namespace that one function given to
// Run has: each method runs the kv command of the same name with the same
// checks, limits, errors and expiry handling as the command carried by an
// event, inside the function's single transaction. Values are JSON bytes;
// returned slices belong to the caller. A Session is valid only during the
// function it was passed to.
type Session struct {
	x execer
}

// Run runs each fn inside its own TxnFunc of one Backend.Update, so the
// backend commits them as a group. Every Session call a fn makes is atomic
// with the others of that fn: when fn returns an error, none of its writes
// are kept and errs[i] holds the error. A non-nil error means the commit
// failed and no fn took effect (it wraps ErrCommit).
func (c *Connector) Run(ctx context.Context, fns []func(s *Session) error) (errs []error, err error) {
	errs = make([]error, len(fns))
	txs := make([]TxnFunc, len(fns))
	sessions := make([]Session, len(fns)) // one allocation, not one per fn
	for i, fn := range fns {
		txs[i] = func(tx Txn) error {
			s := &sessions[i]
			*s = Session{x: execer{c: c, tx: tx, now: c.opts.Now().UnixMilli()}}
			return fn(s)
		}
	}
	if err := c.b.Update(ctx, txs, errs); err != nil {
		return errs, fmt.Errorf("%w: %w", ErrCommit, err)
	}
	return errs, nil
}

// key validates a key (prefix when isPrefix) the way the decoder does.
func (s *Session) key(o op, k string, isPrefix bool) (command, error) {
	cmd := command{op: o, key: k, hasKey: true, limit: s.x.c.opts.MaxScan}
	what := "key"
	if isPrefix {
		what = "prefix"
	}
	d := decoder{opts: &s.x.c.opts}
	return cmd, d.checkKey(&cmd, what, k, isPrefix)
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
	err = s.x.scanLive(start, end, func(k, _ []byte) bool {
		keys = append(keys, s.x.c.layout.userKey(k))
		return len(keys) < cmd.limit
	})
	return keys, err
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
