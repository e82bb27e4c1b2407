package flowrun

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
)

// PutOptions modify a Put.
type PutOptions struct {
	// TTL makes the key expire TTL after the put (rounded up to a
	// millisecond): from then on it reads as absent. Default 0: no expiry.
	// A negative TTL is ErrInvalidCommand.
	TTL time.Duration
	// KeepTTL keeps the expiry of the live value the put replaces (like
	// Redis SET KEEPTTL); a key that was absent or expired gets none.
	// Without it, a put replaces the key's expiry with its own TTL: a put
	// with no TTL clears the expiry. KeepTTL with a TTL is
	// ErrInvalidCommand.
	KeepTTL bool
}

// IncrementOptions modify an increment; see Tx.IncrementWith.
type IncrementOptions struct {
	// TTL makes the key expire TTL after the increment that creates it
	// (the first of a window), rounded up to a millisecond; later
	// increments keep that expiry unless Refresh. It must be positive.
	TTL time.Duration
	// Refresh sets the expiry TTL from now on every increment.
	Refresh bool
}

// Expiry is what Tx.TTL reports of a key.
type Expiry struct {
	// Found is false when the key is absent or expired.
	Found bool
	// ExpireAt is when the key expires; zero when it never does.
	ExpireAt time.Time
	// Remaining is the time left until ExpireAt, as of the transaction
	// (positive); zero when the key never expires.
	Remaining time.Duration
}

// Entry is one key and its JSON value, as Scan returns them.
type Entry = kv.Entry

// ExpiredKey is an expired key reported to StoreOptions.OnExpired: its
// namespace, key, last JSON value and expiry (Unix milliseconds).
type ExpiredKey = kv.ExpiredKey

// Tx is the view of one namespace given to the function of
// Namespace.Update: its methods are those of Namespace, without the
// context, and all of them belong to one atomic transaction. A Tx is
// valid only during that function. Values are JSON; slices returned
// belong to the caller, and arguments may be changed once a method
// returns.
type Tx struct {
	ns string
	s  *kv.Session
}

func (tx *Tx) wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("namespace %q: %w", tx.ns, err)
}

// Get returns the value at key and true, or nil and false when the key is
// absent or expired.
func (tx *Tx) Get(key string) (value []byte, found bool, err error) {
	v, found, err := tx.s.Get(key, nil)
	return v, found, tx.wrap(err)
}

// GetOr returns the value at key, or def when the key is absent or
// expired.
func (tx *Tx) GetOr(key string, def []byte) ([]byte, error) {
	v, _, err := tx.s.Get(key, def)
	return v, tx.wrap(err)
}

// Put stores the JSON value at key, replacing any value there. The value
// is stored in canonical form (insignificant whitespace removed).
func (tx *Tx) Put(key string, value []byte, opts PutOptions) error {
	if opts.KeepTTL {
		if opts.TTL != 0 {
			return tx.wrap(fmt.Errorf("put %q: give either KeepTTL or a TTL, not both: %w", key, kv.ErrInvalidCommand))
		}
		return tx.wrap(tx.s.SetKeepTTL(key, value))
	}
	return tx.wrap(tx.s.Set(key, value, opts.TTL))
}

// TTL returns the expiry of the value at key (like the expiry command).
func (tx *Tx) TTL(key string) (Expiry, error) {
	at, found, err := tx.s.Expiry(key)
	if err != nil || !found {
		return Expiry{}, tx.wrap(err)
	}
	e := Expiry{Found: true}
	if at != 0 {
		e.ExpireAt = time.UnixMilli(at)
		e.Remaining = time.Duration(at-tx.s.Now()) * time.Millisecond
	}
	return e, nil
}

// Touch makes the value at key expire ttl from now, keeping the value,
// and reports whether the key held a live value; an absent or expired key
// is left alone (false, no error), as Delete reports it. ttl must be
// positive.
func (tx *Tx) Touch(key string, ttl time.Duration) (bool, error) {
	found, err := tx.s.Touch(key, ttl)
	return found, tx.wrap(err)
}

// Delete removes key and reports whether it held a live value.
func (tx *Tx) Delete(key string) (bool, error) {
	found, err := tx.s.Delete(key)
	return found, tx.wrap(err)
}

// Exists reports whether key holds a live value.
func (tx *Tx) Exists(key string) (bool, error) {
	found, err := tx.s.Exists(key)
	return found, tx.wrap(err)
}

// Increment adds by to the integer at key (0 when absent) and returns the
// new value; the key keeps its expiry. A stored value that is not an
// integer is ErrNotNumber (use IncrementFloat), a result outside the int64
// range ErrOverflow; either way nothing is written.
func (tx *Tx) Increment(key string, by int64) (int64, error) {
	return tx.IncrementWith(key, by, IncrementOptions{})
}

// IncrementWith is Increment with an expiry: with opts.TTL, the increment
// creating the key makes it expire TTL later (a rate-limit window starts
// at its first hit) and later ones keep that expiry, or set it anew with
// opts.Refresh. An expired key restarts from 0 with a new expiry.
func (tx *Tx) IncrementWith(key string, by int64, opts IncrementOptions) (int64, error) {
	if opts.Refresh && opts.TTL == 0 {
		return 0, tx.wrap(fmt.Errorf("increment %q: Refresh needs a TTL: %w", key, kv.ErrInvalidCommand))
	}
	cur, found, err := tx.s.Get(key, nil)
	if err != nil {
		return 0, tx.wrap(err)
	}
	if found && isFloatLiteral(cur) {
		// The command would add to it as a float: refuse before writing.
		return 0, tx.wrap(&notInteger{key: key, value: string(cur)})
	}
	var v []byte
	if opts.TTL != 0 {
		v, err = tx.s.IncrementIntTTL(key, by, opts.TTL, opts.Refresh)
	} else {
		v, err = tx.s.IncrementInt(key, by)
	}
	if err != nil {
		return 0, tx.wrap(err)
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil { // cannot happen: the stored value was checked above
		return 0, tx.wrap(fmt.Errorf("increment %q: %w: result %s is not an integer", key, kv.ErrNotNumber, v))
	}
	return n, nil
}

// IncrementFloat adds by to the number at key (0 when absent) and returns
// the new value. A fractional by, or a float stored, makes the stored
// value a float from then on; an integral by added to an integer keeps it
// an integer. A value that is not a number is ErrNotNumber, a non-finite
// by or result ErrOverflow.
func (tx *Tx) IncrementFloat(key string, by float64) (float64, error) {
	v, err := tx.s.Increment(key, by)
	if err != nil {
		return 0, tx.wrap(err)
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || math.IsInf(f, 0) {
		return 0, tx.wrap(fmt.Errorf("increment %q: %w: result %s", key, kv.ErrOverflow, v))
	}
	return f, nil
}

// CompareAndSet stores value at key if the current live value equals old
// (compared in canonical JSON form; nil old: the key must be absent),
// and otherwise fails with ErrCASMismatch, writing nothing.
func (tx *Tx) CompareAndSet(key string, old, value []byte) error {
	return tx.wrap(tx.s.CAS(key, old, value))
}

// CompareAndDelete deletes key if its live value equals old (canonical
// JSON), and otherwise fails with ErrCASMismatch, deleting nothing.
func (tx *Tx) CompareAndDelete(key string, old []byte) error {
	_, err := tx.s.CAD(key, old)
	return tx.wrap(err)
}

// Keys returns, in order, at most limit live keys starting with prefix
// ("" for all) that come after the key after ("" for the first page).
// next is the after of the next page, "" when this is the last one. A
// limit of 0 means StoreOptions.MaxScan; a larger one is
// ErrTooManyEntries.
func (tx *Tx) Keys(prefix, after string, limit int) (keys []string, next string, err error) {
	keys, next, _, err = tx.s.KeysPage(prefix, after, limit)
	return keys, next, tx.wrap(err)
}

// Scan returns, in key order, at most limit live entries whose keys are in
// [start, end) (end "" for no bound). The next page starts at the last key
// returned followed by "\x00". A limit of 0 means StoreOptions.MaxScan; a
// larger one is ErrTooManyEntries.
func (tx *Tx) Scan(start, end string, limit int) ([]Entry, error) {
	es, err := tx.s.Scan(start, end, limit)
	return es, tx.wrap(err)
}

// GetAll returns every live entry whose key starts with prefix; more than
// StoreOptions.MaxGetAll of them is ErrTooManyEntries.
func (tx *Tx) GetAll(prefix string) (map[string]json.RawMessage, error) {
	obj, err := tx.s.GetAll(prefix)
	if err != nil {
		return nil, tx.wrap(err)
	}
	m := map[string]json.RawMessage{}
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, tx.wrap(fmt.Errorf("get_all %q: %w", prefix, err))
	}
	return m, nil
}

// Count returns how many live keys start with prefix.
func (tx *Tx) Count(prefix string) (int, error) {
	n, err := tx.s.Count(prefix)
	return n, tx.wrap(err)
}

// Clear deletes every key starting with prefix ("" for the whole
// namespace) and returns how many live keys it deleted.
func (tx *Tx) Clear(prefix string) (int, error) {
	n, err := tx.s.Clear(prefix)
	return n, tx.wrap(err)
}

// notInteger is the error of an Increment of a float: an ErrNotNumber
// whose message does not claim that a float is not a number.
type notInteger struct{ key, value string }

func (e *notInteger) Error() string {
	return fmt.Sprintf("increment %q: stored value %s is not an integer (use IncrementFloat)", e.key, e.value)
}

func (e *notInteger) Unwrap() error { return kv.ErrNotNumber }

// isFloatLiteral reports whether the canonical JSON value v is a number
// written with a fraction or an exponent.
func isFloatLiteral(v []byte) bool {
	return len(v) > 0 && (v[0] == '-' || v[0] >= '0' && v[0] <= '9') && bytes.ContainsAny(v, ".eE")
}
