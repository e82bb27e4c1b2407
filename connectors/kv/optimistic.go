package kv

import (
	"bytes"
	"errors"
	"fmt"
)

// Optimistic execution of Connector.Run's functions.
//
// A Backend serialises its transactions by running them in one writer, so
// whatever a Run function does inside its TxnFunc (a Lua script, say) holds
// up every other transaction of the store. When the Backend is a Viewer,
// Run first runs each function outside the writer, in the caller's
// goroutine, against an optimisticTxn: reads go to the store through View
// and are recorded, writes are buffered. Inside the writer it then only
// validates and applies: it re-reads every recorded key through the real
// transaction and, when all of them are unchanged, applies the buffered
// writes; otherwise it runs the function again there, as without a Viewer.
//
// Why this is serialisable: validation runs in the writer, in commit order,
// under the same serialised transaction the function would otherwise have
// run in. The function is deterministic given what it read (Session calls
// depend only on the values and expiries returned by Get and on the
// function's clock), and every value it read is re-read there and found
// identical (presence, expiry and bytes), so the writes it buffered are
// exactly the writes it would have made had it run at that point. The
// writes of the group's earlier functions are visible through the real
// transaction, so the overlay that let a function see the buffered writes
// of the functions before it in the same Run is checked the same way: a
// guess that did not come true (an earlier function failed, or was run
// again with another result) fails validation and the function runs again.
//
// The clock (Session's now) is the one the optimistic run sampled: the
// function behaves as if it had run, at that instant, just before its
// validation. A function run again samples a fresh clock.
//
// Anything the recording cannot replay exactly makes the function
// pessimistic: it is simply run inside the writer. That is the case for
// range reads and range deletions (Scan, DeleteRange: keys, get_all, count,
// clear), whose result depends on keys the function never named, and for a
// panic or a failed read.

// errPessimistic stops an optimistic run that used an operation the
// recording cannot validate; the function then runs inside the writer.
var errPessimistic = errors.New("kv: operation not replayable optimistically")

// readRec is one Get of an optimistic run, as validation will compare it.
type readRec struct {
	key   []byte
	value []byte
	exp   int64
	found bool
}

// writeRec is one buffered Set (del false) or Delete.
type writeRec struct {
	key   []byte
	value []byte
	exp   int64
	del   bool
}

// optState is the outcome of a function's optimistic run.
type optState uint8

const (
	optPessimistic optState = iota // not run, or not replayable: run in the writer
	optDone                        // ran; reads and writes recorded
)

// optRun is what one function's optimistic run recorded.
type optRun struct {
	state  optState
	now    int64
	reads  []readRec
	writes []writeRec
	err    error // the function's own result, kept only if reads validate
}

// overlay holds the latest buffered write of each key written by the
// functions of a Run that have already run optimistically.
type overlay map[string]writeRec

// optimisticTxn is the Txn of the optimistic runs of one Run's functions,
// one after the other: reads go through the View transaction (or the
// function's own writes, or the overlay), writes are buffered. The records
// of every function share one slice each, and the bytes they hold one
// arena, so a Run allocates once rather than per function; values it
// returns stay valid for the whole Run.
type optimisticTxn struct {
	view    Txn
	overlay overlay
	arena   []byte
	reads   []readRec  // of every function so far; the current one's from rBase
	writes  []writeRec // likewise, from wBase
	rBase   int
	wBase   int
	failed  bool // the current function used an operation the recording cannot replay
}

// begin starts recording a function's run.
func (t *optimisticTxn) begin() {
	t.rBase, t.wBase, t.failed = len(t.reads), len(t.writes), false
}

// end stores what the current function recorded in r.
func (t *optimisticTxn) end(r *optRun) {
	r.reads = t.reads[t.rBase:len(t.reads):len(t.reads)]
	r.writes = t.writes[t.wBase:len(t.writes):len(t.writes)]
}

// discard forgets what the current function recorded.
func (t *optimisticTxn) discard() {
	t.reads, t.writes = t.reads[:t.rBase], t.writes[:t.wBase]
}

// keep copies b into the arena, which is never written over: slices of it
// stay valid, and may back strings, for the whole Run.
func (t *optimisticTxn) keep(b []byte) []byte {
	if b == nil {
		return nil
	}
	if cap(t.arena)-len(t.arena) < len(b) {
		t.arena = make([]byte, 0, max(16<<10, len(b)))
	}
	start := len(t.arena)
	t.arena = append(t.arena, b...)
	return t.arena[start:len(t.arena):len(t.arena)]
}

func (t *optimisticTxn) Get(key []byte) ([]byte, int64, bool, error) {
	if t.failed {
		return nil, 0, false, errPessimistic
	}
	// Own writes first, latest wins.
	for i := len(t.writes) - 1; i >= t.wBase; i-- {
		if w := &t.writes[i]; bytes.Equal(w.key, key) {
			if w.del {
				return nil, 0, false, nil
			}
			return w.value, w.exp, true, nil
		}
	}
	// A key read before returns what it returned then: the run sees one
	// consistent value per key, and validation checks that one.
	for i := t.rBase; i < len(t.reads); i++ {
		if rd := &t.reads[i]; bytes.Equal(rd.key, key) {
			return rd.value, rd.exp, rd.found, nil
		}
	}
	rd := readRec{key: t.keep(key)}
	if w, ok := t.overlay[string(key)]; ok {
		if !w.del {
			rd.value, rd.exp, rd.found = w.value, w.exp, true
		}
	} else {
		v, exp, found, err := t.view.Get(key)
		if err != nil {
			t.failed = true
			return nil, 0, false, errPessimistic
		}
		if found {
			rd.value, rd.exp, rd.found = t.keep(v), exp, true
			if rd.value == nil {
				rd.value = []byte{}
			}
		}
	}
	t.reads = append(t.reads, rd)
	return rd.value, rd.exp, rd.found, nil
}

func (t *optimisticTxn) Set(key, value []byte, expireAt int64) error {
	if t.failed {
		return errPessimistic
	}
	v := t.keep(value)
	if v == nil {
		v = []byte{}
	}
	t.writes = append(t.writes, writeRec{key: t.keep(key), value: v, exp: expireAt})
	return nil
}

func (t *optimisticTxn) Delete(key []byte) error {
	if t.failed {
		return errPessimistic
	}
	t.writes = append(t.writes, writeRec{key: t.keep(key), del: true})
	return nil
}

func (t *optimisticTxn) DeleteRange(start, end []byte) error {
	t.failed = true
	return errPessimistic
}

func (t *optimisticTxn) Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	t.failed = true
	return errPessimistic
}

// validate re-reads every key run read through the real transaction tx and
// reports whether each is unchanged.
func (r *optRun) validate(tx Txn) bool {
	for i := range r.reads {
		rd := &r.reads[i]
		v, exp, found, err := tx.Get(rd.key)
		if err != nil || found != rd.found {
			return false
		}
		if found && (exp != rd.exp || !bytes.Equal(v, rd.value)) {
			return false
		}
	}
	return true
}

// apply writes run's buffered writes through tx, in their order.
func (r *optRun) apply(tx Txn) error {
	for i := range r.writes {
		w := &r.writes[i]
		var err error
		if w.del {
			err = tx.Delete(w.key)
		} else {
			err = tx.Set(w.key, w.value, w.exp)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// publish adds run's writes to the overlay seen by the functions after it.
// Keys live in the Run's arena, which is never written over, so the map
// shares their bytes.
func (o overlay) publish(r *optRun) {
	for _, w := range r.writes {
		o[bytesString(w.key)] = w
	}
}

// runOptimistic runs fn in the caller's goroutine against t, recovering a
// panic (the function then runs again inside the writer, which reports it).
func runOptimistic(fn func(*Session) error, s *Session) (ok bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			ok, err = false, fmt.Errorf("kv: Run function panicked: %v", p)
		}
	}()
	return true, fn(s)
}
