package kv

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

// PortExpired is the output port of a kv connector with expiry events
// (the flow option expired_events): one event per key the janitor
// reclaims. See ExpirySource.
const PortExpired = "expired"

// ExpiredKey is a key found expired by a reclaim pass, reported to
// Options.OnExpired before it is deleted.
type ExpiredKey struct {
	Namespace string
	Key       string
	// Value is the key's last value, canonical JSON.
	Value []byte
	// ExpireAt is when the key expired, in Unix milliseconds.
	ExpireAt int64
}

// appendJSON renders k as the data of an expired event:
// {"namespace":..,"key":..,"value":..,"expired_at":UNIX_MS}.
func (k *ExpiredKey) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"namespace":`...)
	dst = appendString(dst, k.Namespace)
	dst = append(dst, `,"key":`...)
	dst = appendString(dst, k.Key)
	dst = append(dst, `,"value":`...)
	dst = append(dst, k.Value...)
	dst = append(dst, `,"expired_at":`...)
	dst = fmt.Appendf(dst, "%d", k.ExpireAt)
	return append(dst, '}')
}

// reclaimReporting is reclaim for the keys' expiry index when
// Options.OnExpired is set: each chunk of expired keys is read in one
// transaction, reported, and only then deleted, in a second transaction
// that deletes a record only if it was reported and still carries the
// expiry reported. A key whose report fails, or whose deletion is lost
// to a crash, stays expired in the store and is reported again by the
// next pass: at least once. A key written, deleted or cleared after it
// expired and before a pass reached it is not reported: its expiry was
// superseded.
func (c *Connector) reclaimReporting(ctx context.Context, ix expiryIndex, report func(context.Context, []ExpiredKey) error) (int, error) {
	total := 0
	chunk := reclaimChunkFor(c.b)
	from := ix.prefix
	for {
		var (
			idx      [][]byte
			reported []bool // by idx
			keys     []ExpiredKey
			more     bool
		)
		read := func(tx Txn) error {
			idx, reported, keys, more = nil, nil, nil, false
			now := c.opts.Now().UnixMilli()
			end := appendIndexKey(nil, ix.prefix, now+1, nil)
			if bytes.Compare(from, end) >= 0 {
				return nil
			}
			err := tx.Scan(from, end, func(k, _ []byte, _ int64) (bool, error) {
				if len(idx) == chunk {
					more = true
					return false, nil
				}
				idx = append(idx, bytes.Clone(k))
				return true, nil
			})
			if err != nil {
				return err
			}
			reported = make([]bool, len(idx))
			for i, ik := range idx {
				exp, key, ok := parseIndexKey(ix.prefix, ik)
				if !ok {
					continue
				}
				v, stored, found, err := tx.Get(ix.record(key))
				if err != nil {
					return err
				}
				if found && stored == exp {
					reported[i] = true
					keys = append(keys, ExpiredKey{Namespace: c.opts.Namespace, Key: string(key), Value: bytes.Clone(v), ExpireAt: exp})
				}
			}
			return nil
		}
		if err := c.update1(ctx, read); err != nil {
			return total, err
		}
		if len(keys) > 0 {
			if err := report(ctx, keys); err != nil {
				return total, fmt.Errorf("reclaim namespace %q: reporting %s: %w", c.opts.Namespace, plural(len(keys), "expired key"), err)
			}
		}
		n := 0
		del := func(tx Txn) error {
			n = 0
			for i, ik := range idx {
				exp, key, ok := parseIndexKey(ix.prefix, ik)
				if ok && reported[i] {
					rk := ix.record(key)
					_, stored, found, err := tx.Get(rk)
					if err != nil {
						return err
					}
					if found && stored == exp {
						if err := tx.Delete(rk); err != nil {
							return err
						}
						n++
					}
				} else if ok {
					// Not reported: deleted only if its record is gone or
					// carries another expiry (the entry is stale).
					_, stored, found, err := tx.Get(ix.record(key))
					if err != nil {
						return err
					}
					if found && stored == exp {
						continue // expired since the read: the next pass reports it
					}
				}
				if err := tx.Delete(ik); err != nil {
					return err
				}
			}
			return nil
		}
		if len(idx) > 0 {
			if err := c.update1(ctx, del); err != nil {
				return total, err
			}
			from = append(idx[len(idx)-1], 0)
		}
		total += n
		if !more || ctx.Err() != nil {
			return total, ctx.Err()
		}
	}
}

// update1 runs fn in its own Update, for reclaiming.
func (c *Connector) update1(ctx context.Context, fn TxnFunc) error {
	errs := make([]error, 1)
	if err := c.b.Update(ctx, []TxnFunc{fn}, errs); err != nil {
		return fmt.Errorf("reclaim namespace %q: %w", c.opts.Namespace, err)
	}
	if errs[0] != nil {
		return fmt.Errorf("reclaim namespace %q: %w", c.opts.Namespace, errs[0])
	}
	return nil
}

// ExpirySource returns the source of the connector's "expired" port: a
// pipeline.Source (and pipeline.Closer) that reclaims the namespace's
// expired keys when it starts, every Options.ReclaimInterval, and a last
// time once the connector is closed (its input has ended), emitting one
// event per key, with data
// {"namespace":..,"key":..,"value":LAST_VALUE,"expired_at":UNIX_MS} and
// meta {}. A key is deleted only once its event is done in the graph
// (consumed by every sink it reached, dead-lettered, or dropped); when
// the graph fails before, the key stays and is emitted again by a later
// pass, of this run or the next: at least once. It replaces the janitor
// (New starts none when Options.ExpiredEvents is set). Run returns when
// ctx is done or after the last pass.
//
// The source shares the connector's Backend: the Backend is closed once
// both the Connector and the source are closed, so a source handed out
// must be run or closed; call it before the Connector's Close.
// ExpirySource returns the same source each time;
// it returns nil on a Connector without ExpiredEvents or made by
// WithNamespace.
func (c *Connector) ExpirySource() pipeline.Source {
	if c.expiry == nil {
		return nil
	}
	c.expiry.handOut.Do(func() { c.retain() })
	return c.expiry
}

// expirySource is a Connector's ExpirySource.
type expirySource struct {
	c       *Connector
	handOut sync.Once
	// closed is closed by the Connector's Close: the source makes its
	// last pass and returns.
	closed  chan struct{}
	release sync.Once
	err     error
}

// Run implements pipeline.Source.
func (s *expirySource) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	c := s.c
	pass := func() {
		if _, err := c.reclaimEmitting(ctx, emit); err != nil && ctx.Err() == nil {
			c.opts.Logger.Error("kv: reclaiming expired keys failed", "namespace", c.opts.Namespace, "error", err)
		}
	}
	pass()                    // what expired while the flow was not running
	var tick <-chan time.Time // none with a negative ReclaimInterval
	if c.opts.ReclaimInterval > 0 {
		t := time.NewTicker(c.opts.ReclaimInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.closed:
			pass() // what expired by the end of the connector's input
			return nil
		case <-tick:
			pass()
		}
	}
}

// Close implements pipeline.Closer: it gives up the source's share of the
// Backend. The graph calls it once Run has returned.
func (s *expirySource) Close(context.Context) error {
	s.release.Do(func() { s.err = s.c.releaseBackend() })
	return s.err
}

// reclaimEmitting is Reclaim reporting the expired keys as tracked events
// on emit, each deleted once its event is done.
func (c *Connector) reclaimEmitting(ctx context.Context, emit pipeline.SourceEmitter) (int, error) {
	report := func(ctx context.Context, keys []ExpiredKey) error {
		var (
			mu     sync.Mutex
			failed int
			done   = make(chan struct{})
		)
		tr := pipeline.NewTracker(len(keys), func(_ int, out pipeline.Outcome) {
			if out.Failed() {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}, func() { close(done) })
		for i := range keys {
			emit.Emit(PortExpired, tr.Track(i, pipeline.Event{Data: keys[i].appendJSON(nil)}))
		}
		if err := emit.Flush(ctx); err != nil {
			return err
		}
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if failed > 0 {
			return fmt.Errorf("%s not handled: the flow failed", plural(failed, "expiry event"))
		}
		return nil
	}
	return c.reclaimAll(ctx, report)
}
