package flowrun

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Namespace is a handle on the keys of one namespace of a Store, returned
// by Store.Namespace. Each method runs one kv command in its own atomic
// transaction, with the checks, limits and errors of the command of the
// same name in a flow (docs/kv.md); Update runs several in one. A method
// returns once its writes are durable (unless StoreOptions.NoSync): a
// write that returned nil survives a crash. Methods are safe for
// concurrent use; concurrent writes are committed in groups sharing one
// fsync.
//
// ctx must be live when a method is called; once the command is queued to
// the store's writer, the method waits for its outcome even if ctx ends,
// since returning early would report as failed a write that may commit.
type Namespace struct {
	st   *Store
	name string
	conn *kv.Connector
}

// Name returns the namespace's name.
func (n *Namespace) Name() string { return n.name }

// Update runs fn in one atomic transaction: every write of fn's Tx calls
// takes effect if fn returns nil and the commit succeeds, none otherwise.
// It returns fn's error, or the commit's (ErrCommit). fn runs in the
// store's writer, between the transactions of other calls: it must be
// short, must not block nor call the Store, and must have no effect other
// than through tx, since it may be run again. A panic in fn is returned
// as an error, nothing applied. The calls of one Update share the budgets
// of one command (StoreOptions.MaxResultBytes, MaxKeysVisited).
//
// Reads run in the writer too, so they see every write acknowledged
// before them and wait for nothing but the writes queued ahead.
func (n *Namespace) Update(ctx context.Context, fn func(tx *Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("namespace %q: %w", n.name, err)
	}
	n.st.mu.RLock()
	defer n.st.mu.RUnlock()
	if n.st.closed {
		return fmt.Errorf("namespace %q: %w", n.name, ErrClosed)
	}
	errs, err := n.conn.Run(ctx, []func(*kv.Session) error{func(s *kv.Session) error {
		return fn(&Tx{ns: n.name, s: s})
	}})
	if err != nil {
		return fmt.Errorf("namespace %q: %w", n.name, err)
	}
	return errs[0]
}

// Get returns the value at key and true, or nil and false when the key is
// absent or expired.
func (n *Namespace) Get(ctx context.Context, key string) (value []byte, found bool, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		value, found, err = tx.Get(key)
		return err
	})
	return value, found, err
}

// GetOr returns the value at key, or def when the key is absent or
// expired.
func (n *Namespace) GetOr(ctx context.Context, key string, def []byte) (value []byte, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		value, err = tx.GetOr(key, def)
		return err
	})
	return value, err
}

// Put stores the JSON value at key; see Tx.Put.
func (n *Namespace) Put(ctx context.Context, key string, value []byte, opts PutOptions) error {
	return n.Update(ctx, func(tx *Tx) error { return tx.Put(key, value, opts) })
}

// Delete removes key and reports whether it held a live value.
func (n *Namespace) Delete(ctx context.Context, key string) (found bool, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		found, err = tx.Delete(key)
		return err
	})
	return found, err
}

// Exists reports whether key holds a live value.
func (n *Namespace) Exists(ctx context.Context, key string) (found bool, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		found, err = tx.Exists(key)
		return err
	})
	return found, err
}

// Increment adds by to the integer at key and returns the new value; see
// Tx.Increment.
func (n *Namespace) Increment(ctx context.Context, key string, by int64) (v int64, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		v, err = tx.Increment(key, by)
		return err
	})
	return v, err
}

// IncrementWith adds by to the integer at key and returns the new value,
// setting an expiry; see Tx.IncrementWith.
func (n *Namespace) IncrementWith(ctx context.Context, key string, by int64, opts IncrementOptions) (v int64, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		v, err = tx.IncrementWith(key, by, opts)
		return err
	})
	return v, err
}

// TTL returns the expiry of the value at key; see Tx.TTL.
func (n *Namespace) TTL(ctx context.Context, key string) (e Expiry, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		e, err = tx.TTL(key)
		return err
	})
	return e, err
}

// Touch makes the value at key expire ttl from now; see Tx.Touch.
func (n *Namespace) Touch(ctx context.Context, key string, ttl time.Duration) (found bool, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		found, err = tx.Touch(key, ttl)
		return err
	})
	return found, err
}

// IncrementFloat adds by to the number at key and returns the new value;
// see Tx.IncrementFloat.
func (n *Namespace) IncrementFloat(ctx context.Context, key string, by float64) (v float64, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		v, err = tx.IncrementFloat(key, by)
		return err
	})
	return v, err
}

// CompareAndSet stores value at key if its live value equals old (nil:
// absent), and otherwise fails with ErrCASMismatch; see Tx.CompareAndSet.
func (n *Namespace) CompareAndSet(ctx context.Context, key string, old, value []byte) error {
	return n.Update(ctx, func(tx *Tx) error { return tx.CompareAndSet(key, old, value) })
}

// CompareAndDelete deletes key if its live value equals old, and otherwise
// fails with ErrCASMismatch.
func (n *Namespace) CompareAndDelete(ctx context.Context, key string, old []byte) error {
	return n.Update(ctx, func(tx *Tx) error { return tx.CompareAndDelete(key, old) })
}

// Keys returns one page of the live keys starting with prefix; see
// Tx.Keys.
func (n *Namespace) Keys(ctx context.Context, prefix, after string, limit int) (keys []string, next string, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		keys, next, err = tx.Keys(prefix, after, limit)
		return err
	})
	return keys, next, err
}

// Scan returns one page of the live entries of [start, end); see Tx.Scan.
func (n *Namespace) Scan(ctx context.Context, start, end string, limit int) (entries []Entry, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		entries, err = tx.Scan(start, end, limit)
		return err
	})
	return entries, err
}

// GetAll returns every live entry whose key starts with prefix; see
// Tx.GetAll.
func (n *Namespace) GetAll(ctx context.Context, prefix string) (m map[string]json.RawMessage, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		m, err = tx.GetAll(prefix)
		return err
	})
	return m, err
}

// Count returns how many live keys start with prefix.
func (n *Namespace) Count(ctx context.Context, prefix string) (c int, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		c, err = tx.Count(prefix)
		return err
	})
	return c, err
}

// Clear deletes every key starting with prefix ("" for the whole
// namespace) and returns how many live keys it deleted.
func (n *Namespace) Clear(ctx context.Context, prefix string) (c int, err error) {
	err = n.Update(ctx, func(tx *Tx) (err error) {
		c, err = tx.Clear(prefix)
		return err
	})
	return c, err
}

// Reclaim deletes the namespace's expired keys now and returns how many;
// the Store does it every StoreOptions.ReclaimInterval unless NoReclaim.
func (n *Namespace) Reclaim(ctx context.Context) (int, error) {
	n.st.mu.RLock()
	defer n.st.mu.RUnlock()
	if n.st.closed {
		return 0, fmt.Errorf("namespace %q: %w", n.name, ErrClosed)
	}
	c, err := n.conn.Reclaim(ctx)
	if err != nil {
		return c, fmt.Errorf("namespace %q: %w", n.name, err)
	}
	return c, nil
}
