package kv

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// cmdError is a failed command with what its err event reports besides the
// message: the batch index that failed and the current value of a cas or
// cad mismatch.
type cmdError struct {
	err        error
	index      int // failing batch element; meaningful for batch errors
	current    []byte
	hasCurrent bool
}

func (e *cmdError) Error() string { return e.err.Error() }
func (e *cmdError) Unwrap() error { return e.err }

// result is what a successful command emits.
type result struct {
	data  []byte
	found bool
	next  []byte // keys: JSON cursor of the next page ("null" at the end)
	rows  []row  // scan
	// replayed marks the recorded result of an earlier command with the
	// same idempotency key; nothing was applied this time.
	replayed bool
}

type row struct {
	key   string
	value []byte
}

// record is a stored record as the command layer sees it.
type record struct {
	value  []byte // copied by load, valid for the whole command; see peek
	rawExp int64  // expiry stored with the record, even when it has passed
	exists bool   // a record is stored (live or expired)
	live   bool   // stored and not expired
}

// readOnly reports whether cmd never writes, so it may run in a
// Viewer.View transaction.
func (cmd *command) readOnly() bool {
	if cmd.idem != "" {
		return false // records its idempotency key
	}
	switch cmd.op {
	case opGet, opExists, opScan, opCount, opKeys, opGetAll, opExpiry:
		return true
	case opBatch:
		for i := range cmd.sub {
			if !cmd.sub[i].readOnly() {
				return false
			}
		}
		return true
	}
	return false
}

// execer runs commands inside one TxnFunc.
type execer struct {
	c   *Connector
	tx  Txn
	now int64 // Unix ms; a record with expireAt <= now is expired
	buf []byte
	// runs counts the commands run since now was read; see begin.
	runs int
	// ctx is the flow's context: long reads stop when it is done. Nil
	// means never.
	ctx context.Context
	// spentBytes and spentKeys are what the event's commands so far have
	// used of Options.MaxResultBytes and Options.MaxKeysVisited; see
	// startEvent.
	spentBytes, spentKeys int
	// submitKeys counts the keys visited by the commands of the current
	// submission to the store's writer (see cut.go).
	submitKeys int
	// results holds the values commands return (load's copies, the
	// numbers increment computes).
	results resultArena
}

// ctxEvery is how many keys a scan visits between looks at the context:
// a few microseconds of work, so a cancelled flow stops a long read at
// once, while the look costs nothing measurable.
const ctxEvery = 256

// plural returns "1 key", "2 keys".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// startEvent gives the next command the whole budget of an event.
func (x *execer) startEvent() { x.spentBytes, x.spentKeys = 0, 0 }

// cancelled returns the error of a done context, wrapped for cmd.
func (x *execer) cancelled(cmd *command) error {
	if x.ctx == nil {
		return nil
	}
	if err := x.ctx.Err(); err != nil {
		return cmd.errf(err, "stopped after visiting %d keys: the flow was cancelled", x.spentKeys)
	}
	return nil
}

// visit charges one key visited by cmd to the event's work budget and,
// every ctxEvery keys, checks that the flow still runs.
func (x *execer) visit(cmd *command) error {
	x.spentKeys++
	x.submitKeys++
	if x.spentKeys > x.c.opts.MaxKeysVisited {
		return cmd.errf(ErrBudgetExceeded, "the event visits more than max_keys_visited (%d) keys; raise the connector's max_keys_visited (Options.MaxKeysVisited) or read less per event (a narrower prefix, a smaller limit, keys pages)", x.c.opts.MaxKeysVisited)
	}
	if x.spentKeys%ctxEvery == 0 {
		return x.cancelled(cmd)
	}
	return nil
}

// charge counts n result bytes of cmd, read so far from keys keys, against
// the event's result budget.
func (x *execer) charge(cmd *command, n, keys int) error {
	x.spentBytes += n
	if x.spentBytes > x.c.opts.MaxResultBytes {
		return cmd.errf(ErrBudgetExceeded, "the event's results exceed max_result_bytes (%s) after %s; raise the connector's max_result_bytes (Options.MaxResultBytes) or read less per event (keys or scan pages)", sizeString(x.c.opts.MaxResultBytes), plural(keys, "key"))
	}
	return nil
}

// clockEvery is how many commands of a slice of events share one reading of the
// clock. Reading it costs about as much as a cached read of a key, and
// commands this close together are applied in the same commit group.
const clockEvery = 64

// begin prepares x to run a command on tx. The clock is read for the first
// command of a slice (reset clears runs) and then every clockEvery
// commands, so an expiry is never judged against an instant older than
// the slice.
func (x *execer) begin(tx Txn) {
	x.tx = tx
	if x.runs%clockEvery == 0 {
		x.now = x.c.opts.Now().UnixMilli()
	}
	x.runs++
}

// reset forgets the batch: the next command reads the clock.
func (x *execer) reset() { x.tx, x.runs = nil, 0 }

func (x *execer) expired(exp int64) bool { return exp != 0 && x.now >= exp }

func (x *execer) load(cmd *command) (record, error) {
	r, err := x.peek(cmd)
	r.value = x.results.clone(r.value)
	return r, err
}

// peek is load without the copy: the record's value is the store's and
// valid only until the next call on x.tx. A command that only compares
// the value before writing (cas) saves a copy per command.
//
// The key it looks up is charged to the event's work budget.
func (x *execer) peek(cmd *command) (record, error) {
	if err := x.visit(cmd); err != nil {
		return record{}, err
	}
	x.buf = x.c.layout.dataKey(x.buf[:0], cmd.key)
	v, exp, found, err := x.tx.Get(x.buf)
	if err != nil || !found {
		return record{}, err
	}
	r := record{rawExp: exp, exists: true}
	if !x.expired(exp) {
		r.live = true
		r.value = v
	}
	return r, nil
}

// store writes value at key with expiry exp, keeping the expiry index in
// step with the record it replaces.
func (x *execer) store(key string, value []byte, exp int64, old record) error {
	if old.exists && old.rawExp != 0 && old.rawExp != exp {
		if err := x.tx.Delete(x.c.layout.expiryKey(nil, old.rawExp, []byte(key))); err != nil {
			return err
		}
	}
	x.buf = x.c.layout.dataKey(x.buf[:0], key)
	if err := x.tx.Set(x.buf, value, exp); err != nil {
		return err
	}
	if exp != 0 {
		// The entry carries the record's expiry too, so a backend that
		// removes expired records itself (etcd leases) removes both.
		return x.tx.Set(x.c.layout.expiryKey(nil, exp, []byte(key)), nil, exp)
	}
	return nil
}

func (x *execer) remove(key string, old record) error {
	if old.rawExp != 0 {
		if err := x.tx.Delete(x.c.layout.expiryKey(nil, old.rawExp, []byte(key))); err != nil {
			return err
		}
	}
	return x.tx.Delete(x.c.layout.dataKey(nil, key))
}

// expiry resolves a command's ttl or expire_at against the clock.
func (x *execer) expiry(cmd *command) int64 {
	if cmd.ttlMs > 0 {
		return x.now + cmd.ttlMs
	}
	return cmd.expireAt
}

// expiryJSON renders the result of expiry and touch for a live record
// whose expiry is exp: {"ttl_ms":MS,"expire_at":UNIX_MS}, both null when
// the record never expires.
func (x *execer) expiryJSON(exp int64) []byte {
	if exp == 0 {
		return []byte(`{"ttl_ms":null,"expire_at":null}`)
	}
	dst := append([]byte(nil), `{"ttl_ms":`...)
	dst = strconv.AppendInt(dst, max(0, exp-x.now), 10) // a touch may set a past instant
	dst = append(dst, `,"expire_at":`...)
	dst = strconv.AppendInt(dst, exp, 10)
	return append(dst, '}')
}

// scanLive calls fn for each live record of [start, end) in key order until
// fn returns false or an error. key and value are valid only during the
// call. Every record stepped over, expired or not, is charged to the
// event's work budget for cmd, and the scan stops as soon as it is spent
// or the flow is cancelled.
func (x *execer) scanLive(cmd *command, start, end []byte, fn func(key, value []byte) (bool, error)) error {
	if err := x.cancelled(cmd); err != nil {
		return err
	}
	return x.tx.Scan(start, end, func(k, v []byte, exp int64) (bool, error) {
		if err := x.visit(cmd); err != nil {
			return false, err
		}
		if x.expired(exp) {
			return true, nil
		}
		return fn(k, v)
	})
}

var nullJSON = []byte("null")

func orNull(v []byte) []byte {
	if v == nil {
		return nullJSON
	}
	return v
}

// mismatch builds the error of a failed cas or cad.
func mismatch(cmd *command, cur record) error {
	expected := "the key to be absent"
	if cmd.old != nil {
		expected = shortJSON(cmd.old)
	}
	found := "no value (key absent)"
	if cur.live {
		found = shortJSON(cur.value)
	}
	return &cmdError{
		err:        cmd.errf(ErrCASMismatch, "expected %s, found %s", expected, found),
		current:    orNull(cur.value),
		hasCurrent: true,
	}
}

// run executes cmd. Every check and read happens before the first write, so
// a failing command writes nothing (batch relies on the backend's rollback
// of the whole TxnFunc instead).
func (x *execer) run(cmd *command) (result, error) {
	switch cmd.op {
	case opGet, opExists:
		cur, err := x.load(cmd)
		if err != nil {
			return result{}, err
		}
		if cmd.op == opExists {
			return result{data: []byte(strconv.FormatBool(cur.live)), found: cur.live}, nil
		}
		if cur.live {
			if err := x.charge(cmd, len(cur.value), 1); err != nil {
				return result{}, err
			}
			return result{data: cur.value, found: true}, nil
		}
		return result{data: orNull(cmd.def)}, nil

	case opPut:
		if cmd.keepTTL {
			// keep_ttl needs the live record's expiry: one point read.
			cur, err := x.peek(cmd)
			if err != nil {
				return result{}, err
			}
			exp := int64(0)
			if cur.live {
				exp = cur.rawExp
			}
			if err := x.store(cmd.key, cmd.value, exp, cur); err != nil {
				return result{}, err
			}
			return result{data: cmd.value, found: true}, nil
		}
		// A blind write: reading the old record first would cost a point
		// read per put (the dominant cost of a put-heavy flow once the
		// store outgrows the block cache). An expiry-index entry the old
		// record may leave behind is harmless: the janitor deletes a record
		// only when its stored expiry still matches the entry. So a put
		// replaces the key's expiry with its own: none without ttl or
		// expire_at.
		if err := x.store(cmd.key, cmd.value, x.expiry(cmd), record{}); err != nil {
			return result{}, err
		}
		return result{data: cmd.value, found: true}, nil

	case opExpiry:
		cur, err := x.load(cmd)
		if err != nil {
			return result{}, err
		}
		if !cur.live {
			return result{data: nullJSON}, nil
		}
		return result{data: x.expiryJSON(cur.rawExp), found: true}, nil

	case opTouch:
		cur, err := x.peek(cmd)
		if err != nil {
			return result{}, err
		}
		if !cur.live {
			return result{data: nullJSON}, nil
		}
		exp := x.expiry(cmd)
		value := bytes.Clone(cur.value) // peek's value is the store's
		if err := x.store(cmd.key, value, exp, cur); err != nil {
			return result{}, err
		}
		return result{data: x.expiryJSON(exp), found: true}, nil

	case opSwap:
		cur, err := x.load(cmd)
		if err != nil {
			return result{}, err
		}
		if err := x.charge(cmd, len(cur.value), 1); err != nil {
			return result{}, err
		}
		if err := x.store(cmd.key, cmd.value, 0, cur); err != nil {
			return result{}, err
		}
		return result{data: orNull(cur.value), found: cur.live}, nil

	case opCas:
		cur, err := x.peek(cmd) // cur.value is not used after the write
		if err != nil {
			return result{}, err
		}
		if cmd.old == nil && cur.live || cmd.old != nil && (!cur.live || !bytes.Equal(cmd.old, cur.value)) {
			cur.value = bytes.Clone(cur.value) // the error outlives the transaction
			return result{}, mismatch(cmd, cur)
		}
		if err := x.store(cmd.key, cmd.value, x.expiry(cmd), cur); err != nil {
			return result{}, err
		}
		return result{data: nullJSON, found: cur.live}, nil

	case opCad:
		cur, err := x.load(cmd)
		if err != nil {
			return result{}, err
		}
		if !cur.live || !bytes.Equal(cmd.old, cur.value) {
			return result{}, mismatch(cmd, cur)
		}
		if err := x.charge(cmd, len(cur.value), 1); err != nil {
			return result{}, err
		}
		if err := x.remove(cmd.key, cur); err != nil {
			return result{}, err
		}
		return result{data: cur.value, found: true}, nil

	case opDelete:
		cur, err := x.load(cmd)
		if err != nil {
			return result{}, err
		}
		if err := x.charge(cmd, len(cur.value), 1); err != nil {
			return result{}, err
		}
		if cur.exists {
			// An expired record is deleted too: it is invisible already,
			// so this only reclaims its space early.
			if err := x.remove(cmd.key, cur); err != nil {
				return result{}, err
			}
		}
		return result{data: orNull(cur.value), found: cur.live}, nil

	case opIncrement:
		return x.increment(cmd)

	case opScan:
		start := x.c.layout.dataKey(nil, cmd.key)
		end := x.c.layout.dataEnd
		if cmd.hasEnd {
			end = x.c.layout.dataKey(nil, cmd.end)
		}
		var res result
		if cmd.limit == 0 || bytes.Compare(start, end) >= 0 {
			return res, nil
		}
		err := x.scanLive(cmd, start, end, func(k, v []byte) (bool, error) {
			key := x.c.layout.userKey(k)
			if err := x.charge(cmd, len(key)+len(v), len(res.rows)+1); err != nil {
				return false, err
			}
			res.rows = append(res.rows, row{key: key, value: bytes.Clone(v)})
			return len(res.rows) < cmd.limit, nil
		})
		if err != nil {
			return result{}, err
		}
		res.found = len(res.rows) > 0
		return res, err

	case opCount:
		start, end := x.c.layout.prefixRange(cmd.key)
		n, err := x.count(cmd, start, end)
		if err != nil {
			return result{}, err
		}
		return result{data: strconv.AppendInt(nil, int64(n), 10), found: n > 0}, nil

	case opKeys:
		return x.keys(cmd)

	case opGetAll:
		start, end := x.c.layout.prefixRange(cmd.key)
		max := x.c.opts.MaxGetAll
		data := []byte{'{'}
		n := 0
		err := x.scanLive(cmd, start, end, func(k, v []byte) (bool, error) {
			n++
			if n > max {
				return false, nil
			}
			before := len(data)
			if n > 1 {
				data = append(data, ',')
			}
			data = appendString(data, x.c.layout.userKey(k))
			data = append(data, ':')
			data = append(data, v...)
			return true, x.charge(cmd, len(data)-before, n)
		})
		if err != nil {
			return result{}, err
		}
		if n > max {
			return result{}, cmd.errf(ErrTooManyEntries, "more than %d keys match, limit is %d (use keys to page through them)", max, max)
		}
		return result{data: append(data, '}'), found: n > 0}, nil

	case opClear:
		start, end := x.c.layout.prefixRange(cmd.key)
		// The count visits every record of the range, under the event's
		// work budget: that is what bounds a clear, not the deletion.
		n, err := x.count(cmd, start, end)
		if err != nil {
			return result{}, err
		}
		// One range deletion, whatever the number of keys. Expiry index
		// entries of the cleared keys are left for the janitor, which drops
		// index entries whose record is gone.
		if err := x.tx.DeleteRange(start, end); err != nil {
			return result{}, err
		}
		return result{data: strconv.AppendInt(nil, int64(n), 10), found: n > 0}, nil

	case opBatch:
		return x.batch(cmd)
	}
	return result{}, fmt.Errorf("%s: %w", cmd.op, ErrUnknownCommand)
}

func (x *execer) count(cmd *command, start, end []byte) (int, error) {
	n := 0
	err := x.scanLive(cmd, start, end, func(_, _ []byte) (bool, error) {
		n++
		return true, nil
	})
	return n, err
}

func (x *execer) keys(cmd *command) (result, error) {
	start, end := x.c.layout.prefixRange(cmd.key)
	if cmd.hasAfter {
		// The first key after the cursor is the cursor followed by 0x00.
		from := append(x.c.layout.dataKey(nil, cmd.after), 0)
		if bytes.Compare(from, start) > 0 {
			start = from
		}
	}
	data := []byte{'['}
	var last string
	n, more := 0, false
	var err error
	if bytes.Compare(start, end) < 0 {
		err = x.scanLive(cmd, start, end, func(k, _ []byte) (bool, error) {
			if n == cmd.limit {
				more = true
				return false, nil
			}
			before := len(data)
			if n > 0 {
				data = append(data, ',')
			}
			last = x.c.layout.userKey(k)
			data = appendString(data, last)
			n++
			return true, x.charge(cmd, len(data)-before, n)
		})
	}
	if err != nil {
		return result{}, err
	}
	res := result{data: append(data, ']'), found: n > 0, next: nullJSON}
	if more {
		if n == 0 {
			last = cmd.after // limit 0: the next page starts where this one would have
		}
		res.next = appendString(nil, last)
	}
	return res, nil
}

// number is a parsed JSON number: an exact int64 or a float.
type number struct {
	i     int64
	f     float64
	float bool
}

func parseNumber(lit string) (number, bool) {
	if isIntLiteral(lit) {
		i, err := strconv.ParseInt(lit, 10, 64)
		if err != nil {
			return number{}, false
		}
		return number{i: i}, true
	}
	f, err := strconv.ParseFloat(lit, 64)
	return number{f: f, float: true}, err == nil
}

func (x *execer) increment(cmd *command) (result, error) {
	// The stored number is parsed before anything else is read or
	// written: no copy of it is needed.
	cur, err := x.peek(cmd)
	if err != nil {
		return result{}, err
	}
	var n number
	if cur.live {
		lit := bytesString(cur.value) // the store's bytes: used before the next call on x.tx only
		if len(lit) == 0 || !(lit[0] == '-' || lit[0] >= '0' && lit[0] <= '9') {
			return result{}, cmd.errf(ErrNotNumber, "stored value is %s", shortJSON(cur.value))
		}
		var ok bool
		if n, ok = parseNumber(lit); !ok {
			return result{}, cmd.errf(ErrOverflow, "stored number %s does not fit a 64-bit integer or float", shortJSON(cur.value))
		}
	}
	var out []byte
	if n.float || cmd.byIsF {
		a, b := n.f, cmd.byFloat
		if !n.float {
			a = float64(n.i)
		}
		if !cmd.byIsF {
			b = float64(cmd.byInt)
		}
		s := a + b
		if math.IsInf(s, 0) || math.IsNaN(s) {
			return result{}, cmd.errf(ErrOverflow, "%v + %v is not a finite number", a, b)
		}
		out = strconv.AppendFloat(x.results.alloc(24), s, 'g', -1, 64)
		if !strings.ContainsAny(string(out), ".eE") {
			out = append(out, ".0"...) // stay a float once a float
		}
		out = x.results.shrink(out)
	} else {
		s := n.i + cmd.byInt
		if (cmd.byInt > 0 && s < n.i) || (cmd.byInt < 0 && s > n.i) {
			return result{}, cmd.errf(ErrOverflow, "%d + %d does not fit a 64-bit integer", n.i, cmd.byInt)
		}
		out = x.results.shrink(strconv.AppendInt(x.results.alloc(20), s, 10))
	}
	// An increment creating the key gives it the command's expiry (none
	// without ttl or expire_at); one of a live key keeps the key's expiry,
	// unless refresh asks for the command's.
	exp := x.expiry(cmd)
	if cur.live && !cmd.refresh {
		exp = cur.rawExp
	}
	if err := x.store(cmd.key, out, exp, cur); err != nil {
		return result{}, err
	}
	return result{data: out, found: cur.live}, nil
}

func (x *execer) batch(cmd *command) (result, error) {
	data := []byte{'['}
	for i := range cmd.sub {
		sub := &cmd.sub[i]
		r, err := x.run(sub)
		if err != nil {
			ce := &cmdError{err: fmt.Errorf("batch[%d]: %w", i, err), index: i}
			var inner *cmdError
			if asCmdError(err, &inner) {
				ce.current, ce.hasCurrent = inner.current, inner.hasCurrent
			}
			return result{}, ce
		}
		if i > 0 {
			data = append(data, ',')
		}
		if sub.op == opScan {
			data = appendRows(data, r.rows)
			continue
		}
		data = append(data, r.data...)
	}
	return result{data: append(data, ']'), found: true}, nil
}
