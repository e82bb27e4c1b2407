package kv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// A slice submitted to a store's writer (Submitter) holds the writer while
// its commands run: every other command on the store, of this connector or
// another, waits. The budgets bound one event; cutting bounds a slice. Once
// the commands of one submission have visited cutKeys keys, the rest of
// the slice is cut off: those commands return errCut without running, and
// the slice's FinishFunc submits them again once the first part has
// committed and once every command queued meanwhile has committed too
// (passQueued), so that those run in between, in groups of their own.
//
// Order holds: while a slice has commands still to run, the commands of
// every slice submitted after it are cut too, whole, and each slice runs
// its cut commands only when no slice before it has any left (cutter).

// errCut is the outcome of a command cut off from its submission; it never
// reaches an event.
var errCut = errors.New("kv: command cut off to a later commit group")

// cutKeys returns how many keys the commands of one submission may visit
// before the rest of the slice is cut off: a quarter of an event's work
// budget, so that the writer is held for about that plus one event's
// budget at most (2.5 ms and 10 ms at the default on Pebble).
func (c *Connector) cutKeys() int { return max(c.opts.MaxKeysVisited/4, 1) }

// cutter orders the slices of a Connector that have commands cut off.
type cutter struct {
	next atomic.Uint64 // the last sequence number handed out
	// low is the smallest sequence number in open, or 0: the writer reads
	// it for every command, without the lock.
	low  atomic.Uint64
	mu   sync.Mutex
	cond *sync.Cond // signalled when open changes; uses mu
	open []uint64   // slices with commands cut off, sorted
}

// number gives a slice about to be submitted its sequence number.
func (t *cutter) number() uint64 { return t.next.Add(1) }

// mark records that slice seq has commands cut off.
func (t *cutter) mark(seq uint64) {
	t.mu.Lock()
	if i, found := slices.BinarySearch(t.open, seq); !found {
		t.open = slices.Insert(t.open, i, seq)
		t.low.Store(t.open[0])
	}
	t.mu.Unlock()
}

// done records that slice seq has no command cut off any more.
func (t *cutter) done(seq uint64) {
	t.mu.Lock()
	if i, found := slices.BinarySearch(t.open, seq); found {
		t.open = slices.Delete(t.open, i, i+1)
		if len(t.open) == 0 {
			t.low.Store(0)
		} else {
			t.low.Store(t.open[0])
		}
		if t.cond != nil {
			t.cond.Broadcast()
		}
	}
	t.mu.Unlock()
}

// awaitTurn waits until no slice numbered below seq has commands cut off,
// or ctx is done. In a flow, slices finish in order and it never waits;
// callers of Process on several goroutines may.
func (t *cutter) awaitTurn(ctx context.Context, seq uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cond == nil {
		t.cond = sync.NewCond(&t.mu)
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() {
			t.mu.Lock()
			t.cond.Broadcast()
			t.mu.Unlock()
		})
		defer stop()
	}
	for len(t.open) > 0 && t.open[0] < seq {
		if err := ctx.Err(); err != nil {
			return err
		}
		t.cond.Wait()
	}
	return nil
}

// cutHere reports, in the writer, whether the command of slot j and every
// later one of the submission are cut off: because an earlier slice has
// commands still to run, or because this submission's commands have
// visited cutKeys keys (the first command of a submission always runs).
func (sc *sliceScratch) cutHere(j int) bool {
	if sc.cutFrom >= 0 {
		return true
	}
	c := sc.c
	low := c.cut.low.Load()
	if (low == 0 || low >= sc.seq) && (j == sc.from || sc.x.submitKeys < c.cutKeys()) {
		return false
	}
	sc.cutFrom = j
	c.cut.mark(sc.seq)
	return true
}

// passQueued returns once every transaction queued at b before the call
// has committed: it commits an empty one behind them. A store's writer
// takes everything queued into its next group, and the commands of a
// slice's next part, queued right behind the commands that waited for its
// first part, would otherwise share their group and hold their results
// for as long as the part's first command runs (up to a script's
// timeout): "run in between" would hold only when the writer happened to
// take the queue first.
func passQueued(ctx context.Context, b Backend) error {
	errs := []error{nil}
	if err := b.Update(ctx, []TxnFunc{func(Txn) error { return nil }}, errs); err != nil {
		return err
	}
	return errs[0]
}

// runCut runs the commands of sc cut off from its submission, each time
// once no earlier slice has any left, until none is; first is the outcome
// of the submission that ran first. A command whose later submission
// fails gets ErrCommit with the cause, as in outcome; the commands that
// ran before it keep their outcomes.
func (sc *sliceScratch) runCut(ctx context.Context, first error) {
	c := sc.c
	for first == nil && sc.cutFrom >= 0 {
		from, n := sc.cutFrom, len(sc.idx)
		sc.from, sc.cutFrom, sc.x.submitKeys = from, -1, 0
		err := c.cut.awaitTurn(ctx, sc.seq)
		if err == nil {
			err = passQueued(ctx, c.b)
		}
		if err == nil {
			err = c.b.Update(ctx, sc.fns[from:n], sc.txErrs[from:n])
		}
		if err != nil {
			for j := from; j < n; j++ {
				sc.txErrs[j] = fmt.Errorf("%s: %w: %w", sc.cmds[sc.idx[j]].op, ErrCommit, err)
			}
			break
		}
	}
	sc.cutFrom = -1
	if sc.seq != 0 {
		c.cut.done(sc.seq)
	}
}
