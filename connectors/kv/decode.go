package kv

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/ijson"
)

// op identifies a command.
type op uint8

const (
	opNone op = iota
	opGet
	opPut
	opSwap
	opCas
	opDelete
	opScan
	opIncrement
	opExists
	opCount
	opKeys
	opGetAll
	opClear
	opCad
	opBatch
	// Commands added later are numbered after batch: op numbers are part
	// of the fingerprints of stored idempotency records.
	opExpiry
	opTouch

	opLast = opTouch
)

func (o op) String() string {
	switch o {
	case opGet:
		return "get"
	case opPut:
		return "put"
	case opSwap:
		return "swap"
	case opCas:
		return "cas"
	case opDelete:
		return "delete"
	case opScan:
		return "scan"
	case opIncrement:
		return "increment"
	case opExists:
		return "exists"
	case opCount:
		return "count"
	case opKeys:
		return "keys"
	case opGetAll:
		return "get_all"
	case opClear:
		return "clear"
	case opCad:
		return "cad"
	case opBatch:
		return "batch"
	case opExpiry:
		return "expiry"
	case opTouch:
		return "touch"
	}
	return ""
}

// docOrder lists the commands in documentation order.
var docOrder = [...]op{opGet, opPut, opSwap, opCas, opDelete, opScan, opIncrement, opExists, opCount, opKeys, opGetAll, opClear, opCad, opExpiry, opTouch, opBatch}

// parseOp returns the command named s, opNone for any other name. It is
// called for every field of every command, modifiers included, so it is
// one switch rather than a comparison with each command's name.
func parseOp(s string) op {
	switch s {
	case "get":
		return opGet
	case "put":
		return opPut
	case "swap":
		return opSwap
	case "cas":
		return opCas
	case "delete":
		return opDelete
	case "scan":
		return opScan
	case "increment":
		return opIncrement
	case "exists":
		return opExists
	case "count":
		return opCount
	case "keys":
		return opKeys
	case "get_all":
		return opGetAll
	case "clear":
		return opClear
	case "cad":
		return opCad
	case "batch":
		return opBatch
	case "expiry":
		return opExpiry
	case "touch":
		return opTouch
	}
	return opNone
}

// CommandNames lists every command, in documentation order.
func CommandNames() []string {
	names := make([]string, 0, len(docOrder))
	for _, o := range docOrder {
		names = append(names, o.String())
	}
	return names
}

// field identifies a modifier of a command.
type field uint16

const (
	fOld field = 1 << iota
	fEnd
	fLimit
	fBy
	fDefault
	fTTL
	fExpireAt
	fAfter
	fValue
	fIdem
	fRefresh
	fKeepTTL
)

// fieldNames lists the modifiers by bit index.
var fieldNames = [...]string{"old", "end", "limit", "by", "default", "ttl", "expire_at", "after", "value", "idem", "refresh", "keep_ttl"}

func parseField(s string) field {
	switch s {
	case "old":
		return fOld
	case "end":
		return fEnd
	case "limit":
		return fLimit
	case "by":
		return fBy
	case "default":
		return fDefault
	case "ttl":
		return fTTL
	case "expire_at":
		return fExpireAt
	case "after":
		return fAfter
	case "value":
		return fValue
	case "idem":
		return fIdem
	case "refresh":
		return fRefresh
	case "keep_ttl":
		return fKeepTTL
	}
	return 0
}

// allowed returns the modifiers op accepts ("value" only inside a batch,
// "idem" only outside one).
func (o op) allowed() field {
	switch o {
	case opGet:
		return fDefault
	case opPut:
		return fTTL | fExpireAt | fKeepTTL | fValue | fIdem
	case opSwap:
		return fValue | fIdem
	case opCas:
		return fOld | fTTL | fExpireAt | fValue | fIdem
	case opScan:
		return fEnd | fLimit
	case opIncrement:
		return fBy | fTTL | fExpireAt | fRefresh | fIdem
	case opTouch:
		return fTTL | fExpireAt | fIdem
	case opKeys:
		return fLimit | fAfter
	case opCad:
		return fOld | fIdem
	case opDelete, opClear, opBatch:
		return fIdem
	}
	return 0
}

// writes reports whether op changes the store, and so may carry an
// idempotency key.
func (o op) writes() bool { return o.allowed()&fIdem != 0 }

// keyKind says what a command's argument is.
func (o op) keyKind() int {
	switch o {
	case opScan:
		return argStart
	case opCount, opKeys, opGetAll, opClear:
		return argPrefix
	case opBatch:
		return argList
	}
	return argKey
}

const (
	argKey    = iota // non-empty string
	argStart         // string, may be empty
	argPrefix        // string or null (null: whole namespace)
	argList          // array of commands
)

// command is one decoded command.
type command struct {
	op     op
	key    string // key, scan start or prefix
	hasKey bool   // key was read (for error metadata)

	value    []byte // canonical value of put, swap, cas
	old      []byte // canonical expected value of cas, cad (nil: absent)
	def      []byte // canonical default of get (nil: none)
	end      string
	hasEnd   bool
	limit    int
	hasLimit bool
	after    string
	hasAfter bool

	byInt   int64
	byFloat float64
	byIsF   bool // by is a float

	ttlMs    int64 // relative expiry, resolved against the clock at execution
	expireAt int64 // absolute expiry, Unix ms
	// refresh makes an increment set its ttl or expire_at on an existing
	// key too, not only on the key it creates.
	refresh bool
	// keepTTL makes a put keep the live key's expiry instead of clearing it.
	keepTTL bool

	idem string // idempotency key; "" for none
	// input is the input position of the event the command came in
	// (Options.InputFrom); 0 for none.
	input uint64

	sub []command // batch
}

// shortKey quotes k for messages, shortened when long.
func shortKey(k string) string {
	const max = 64
	if utf8.RuneCountInString(k) <= max {
		return strconv.Quote(k)
	}
	n, i := 0, 0
	for i = range k {
		if n == max {
			break
		}
		n++
	}
	return strconv.Quote(k[:i]) + fmt.Sprintf("... (%d characters)", utf8.RuneCountInString(k))
}

// shortJSON returns v for messages, shortened when long.
func shortJSON(v []byte) string {
	const max = 128
	if v == nil {
		return "null"
	}
	if len(v) <= max {
		return string(v)
	}
	i := max
	for i > 0 && !utf8.RuneStart(v[i]) {
		i--
	}
	return fmt.Sprintf("%s... (%d bytes)", v[:i], len(v))
}

func sizeString(n int) string {
	switch {
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', -1, 64) + " MiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', -1, 64) + " KiB"
	}
	return strconv.Itoa(n) + " bytes"
}

// decoder turns meta.kv objects into commands under a connector's limits.
type decoder struct {
	opts *Options
}

// errf builds a command error: "OP KEY: message: sentinel".
func (c *command) errf(sentinel error, format string, args ...any) error {
	prefix := c.op.String()
	if c.hasKey && c.op.keyKind() != argList {
		prefix += " " + shortKey(c.key)
	}
	return fmt.Errorf("%s: %s: %w", prefix, fmt.Sprintf(format, args...), sentinel)
}

// decode reads one command from obj (the meta.kv object, or an element of
// a batch). payload is the event's data, the value of put/swap/cas outside
// a batch. It returns the command as far as it could be read, for error
// metadata, and an error describing the first problem.
func (d *decoder) decode(obj gjson.Result, payload []byte, inBatch bool) (command, error) {
	var cmd command
	where := "meta.kv"
	if inBatch {
		where = "a batch element"
	}
	if !obj.Exists() {
		return cmd, fmt.Errorf("%s is missing: %w", where, ErrInvalidCommand)
	}
	if !obj.IsObject() {
		return cmd, fmt.Errorf("%s must be an object, got %s: %w", where, shortJSON([]byte(obj.Raw)), ErrInvalidCommand)
	}
	var (
		arg     gjson.Result
		fields  field
		vals    [len(fieldNames)]gjson.Result // by bit index of field
		unknown string
		dup     string
		second  string
	)
	obj.ForEach(func(k, v gjson.Result) bool {
		name := k.Str
		if o := parseOp(name); o != opNone {
			if cmd.op != opNone {
				if cmd.op == o {
					dup = name
				} else if second == "" {
					second = name
				}
				return true
			}
			cmd.op, arg = o, v
			return true
		}
		f := parseField(name)
		if f == 0 {
			if unknown == "" {
				unknown = name
			}
			return true
		}
		if fields&f != 0 && dup == "" {
			dup = name
		}
		fields |= f
		vals[bitIndex(f)] = v
		return true
	})
	if cmd.op == opNone {
		if unknown != "" {
			return cmd, fmt.Errorf("unknown command %q (commands: %s): %w", unknown, strings.Join(CommandNames(), ", "), ErrUnknownCommand)
		}
		if fields != 0 {
			return cmd, fmt.Errorf("%s has modifiers but no command (commands: %s): %w", where, strings.Join(CommandNames(), ", "), ErrInvalidCommand)
		}
		return cmd, fmt.Errorf("%s names no command (commands: %s): %w", where, strings.Join(CommandNames(), ", "), ErrInvalidCommand)
	}
	if err := d.readArg(&cmd, arg); err != nil {
		return cmd, err
	}
	if second != "" {
		return cmd, cmd.errf(ErrInvalidCommand, "a second command %q in the same object (one command per event; use batch)", second)
	}
	if dup != "" {
		return cmd, cmd.errf(ErrInvalidCommand, "field %q given twice", dup)
	}
	if unknown != "" {
		return cmd, cmd.errf(ErrInvalidCommand, "unknown field %q", unknown)
	}
	allowed := cmd.op.allowed()
	if inBatch {
		allowed &^= fIdem
	} else {
		allowed &^= fValue
	}
	if bad := fields &^ allowed; bad != 0 {
		name := fieldName(bad & -bad)
		if name == "value" {
			return cmd, cmd.errf(ErrInvalidCommand, `field "value" is only accepted inside a batch (the event's data is the value)`)
		}
		if name == "idem" && inBatch && cmd.op.writes() {
			return cmd, cmd.errf(ErrInvalidCommand, `field "idem" is not accepted inside a batch (give it on the batch: it covers every command of it)`)
		}
		if name == "idem" {
			return cmd, cmd.errf(ErrInvalidCommand, `field "idem" is only accepted by commands that write (%s is a read)`, cmd.op)
		}
		return cmd, cmd.errf(ErrInvalidCommand, "field %q is not accepted by %s", name, cmd.op)
	}
	get := func(f field) (gjson.Result, bool) {
		return vals[bitIndex(f)], fields&f != 0
	}
	if err := d.readModifiers(&cmd, get); err != nil {
		return cmd, err
	}
	switch cmd.op {
	case opPut, opSwap, opCas:
		raw := payload
		what := "data"
		if inBatch {
			v, ok := get(fValue)
			if !ok {
				return cmd, cmd.errf(ErrInvalidCommand, `field "value" is required in a batch`)
			}
			raw, what = []byte(v.Raw), "value"
		}
		if len(raw) == 0 {
			return cmd, cmd.errf(ErrNullValue, "%s is null", what)
		}
		v, err := canonical(raw) // may alias the event's data, which is immutable
		if err != nil {
			return cmd, cmd.errf(err, "%s", what)
		}
		if string(v) == "null" {
			return cmd, cmd.errf(ErrNullValue, "%s is null", what)
		}
		if len(v) > d.opts.MaxValueBytes {
			return cmd, cmd.errf(ErrValueTooLarge, "value is %s, limit is %s", sizeString(len(v)), sizeString(d.opts.MaxValueBytes))
		}
		cmd.value = v
	case opBatch:
		elems := arg.Array()
		if inBatch {
			return cmd, cmd.errf(ErrInvalidCommand, "a batch cannot contain a batch")
		}
		if len(elems) > d.opts.MaxBatch {
			return cmd, cmd.errf(ErrTooManyEntries, "%d commands, limit is %d", len(elems), d.opts.MaxBatch)
		}
		cmd.sub = make([]command, len(elems))
		for i, e := range elems {
			sub, err := d.decode(e, nil, true)
			if err != nil {
				return cmd, &cmdError{err: fmt.Errorf("batch[%d]: %w", i, err), index: i}
			}
			cmd.sub[i] = sub
		}
	}
	return cmd, nil
}

func bitIndex(f field) int {
	i := 0
	for f > 1 {
		f >>= 1
		i++
	}
	return i
}

func fieldName(f field) string {
	if i := bitIndex(f); i < len(fieldNames) {
		return fieldNames[i]
	}
	return "?"
}

// checkKey validates a key, scan bound or prefix: r, a JSON string.
func (d *decoder) checkKey(cmd *command, what string, r gjson.Result, allowEmpty bool) error {
	k := r.Str
	if k == "" && !allowEmpty {
		return cmd.errf(ErrInvalidKey, "%s must be a non-empty string", what)
	}
	if err := checkKeyText(r); err != nil {
		return cmd.errf(ErrInvalidKey, "%s %s", what, err)
	}
	if n := utf8.RuneCountInString(k); n > d.opts.MaxKeyLength {
		return cmd.errf(ErrKeyTooLong, "%s is %d characters, limit is %d", what, n, d.opts.MaxKeyLength)
	}
	return nil
}

func (d *decoder) readArg(cmd *command, arg gjson.Result) error {
	name := cmd.op.String()
	switch cmd.op.keyKind() {
	case argList:
		if !arg.IsArray() {
			return cmd.errf(ErrInvalidCommand, "batch must be an array of commands, got %s", jsonType(arg))
		}
		return nil
	case argPrefix:
		if arg.Type == gjson.Null {
			cmd.hasKey = true
			return nil
		}
		if arg.Type != gjson.String {
			return cmd.errf(ErrInvalidKey, "%s prefix must be a string or null, got %s", name, jsonType(arg))
		}
		cmd.key, cmd.hasKey = arg.Str, true
		return d.checkKey(cmd, "prefix", arg, true)
	case argStart:
		if arg.Type != gjson.String {
			return cmd.errf(ErrInvalidKey, "scan start must be a string, got %s", jsonType(arg))
		}
		cmd.key, cmd.hasKey = arg.Str, true
		return d.checkKey(cmd, "scan start", arg, true)
	}
	if arg.Type != gjson.String {
		return cmd.errf(ErrInvalidKey, "key must be a non-empty string, got %s", jsonType(arg))
	}
	cmd.key, cmd.hasKey = arg.Str, true
	return d.checkKey(cmd, "key", arg, false)
}

// checkKeyText refuses a key whose JSON text holds invalid UTF-8 or a
// lone surrogate escape ("\ud800"): decoding either gives U+FFFD, so
// "\ud800" and "\udfff" would be the same key.
func checkKeyText(r gjson.Result) error {
	if !utf8.ValidString(r.Str) {
		return errors.New("is not valid UTF-8")
	}
	if strings.Contains(r.Raw, `\u`) && errors.Is(ijson.CheckString(r.Raw), ijson.ErrLoneSurrogate) {
		return errors.New(`holds a lone surrogate escape (\ud800-\udfff not part of a pair), which encodes no character`)
	}
	return nil
}

func jsonType(r gjson.Result) string {
	switch r.Type {
	case gjson.Null:
		return "null"
	case gjson.False, gjson.True:
		return "a boolean " + r.Raw
	case gjson.Number:
		return "a number " + r.Raw
	case gjson.String:
		return "a string " + shortKey(r.Str)
	}
	if r.IsArray() {
		return "an array"
	}
	return "an object"
}

// isIntLiteral reports whether a JSON number literal has no fraction or
// exponent.
func isIntLiteral(raw string) bool {
	return !strings.ContainsAny(raw, ".eE")
}

// readInt reads an integer field exactly from its literal.
func readInt(r gjson.Result) (int64, bool) {
	if r.Type != gjson.Number || !isIntLiteral(r.Raw) {
		return 0, false
	}
	n, err := strconv.ParseInt(r.Raw, 10, 64)
	return n, err == nil
}

func (d *decoder) readModifiers(cmd *command, get func(field) (gjson.Result, bool)) error {
	if v, ok := get(fOld); ok && v.Type != gjson.Null {
		old, err := canonicalAliased(v)
		if err != nil {
			return cmd.errf(err, "old")
		}
		cmd.old = old
	} else if cmd.op == opCad {
		return cmd.errf(ErrInvalidCommand, `field "old" (the value to compare with) is required and must not be null`)
	}
	if v, ok := get(fDefault); ok {
		def, err := canonicalAliased(v)
		if err != nil {
			return cmd.errf(err, "default")
		}
		cmd.def = def
	}
	if v, ok := get(fEnd); ok {
		if v.Type != gjson.String {
			return cmd.errf(ErrInvalidCommand, `"end" must be a string, got %s`, jsonType(v))
		}
		if err := d.checkKey(cmd, "end", v, true); err != nil {
			return err
		}
		cmd.end, cmd.hasEnd = v.Str, true
	}
	if v, ok := get(fAfter); ok {
		if v.Type != gjson.String {
			return cmd.errf(ErrInvalidCommand, `"after" must be a string, got %s`, jsonType(v))
		}
		if err := d.checkKey(cmd, "after", v, true); err != nil {
			return err
		}
		cmd.after, cmd.hasAfter = v.Str, true
	}
	if v, ok := get(fLimit); ok {
		n, isInt := readInt(v)
		if !isInt || n < 0 {
			return cmd.errf(ErrInvalidCommand, `"limit" must be a non-negative integer, got %s`, jsonType(v))
		}
		if n > int64(d.opts.MaxScan) {
			return cmd.errf(ErrTooManyEntries, "limit %d is above the maximum of %d", n, d.opts.MaxScan)
		}
		cmd.limit, cmd.hasLimit = int(n), true
	}
	if !cmd.hasLimit {
		cmd.limit = d.opts.MaxScan
	}
	cmd.byInt = 1
	if v, ok := get(fBy); ok {
		if v.Type != gjson.Number {
			return cmd.errf(ErrInvalidCommand, `"by" must be a number, got %s`, jsonType(v))
		}
		if n, isInt := readInt(v); isInt {
			cmd.byInt = n
		} else if isIntLiteral(v.Raw) {
			return cmd.errf(ErrOverflow, `"by" %s does not fit a 64-bit integer`, v.Raw)
		} else {
			f, err := strconv.ParseFloat(v.Raw, 64)
			if err != nil || math.IsInf(f, 0) {
				return cmd.errf(ErrOverflow, `"by" %s is not a finite float`, v.Raw)
			}
			cmd.byFloat, cmd.byIsF = f, true
		}
	}
	ttl, hasTTL := get(fTTL)
	at, hasAt := get(fExpireAt)
	if hasTTL && hasAt {
		return cmd.errf(ErrInvalidCommand, `give either "ttl" or "expire_at", not both`)
	}
	if hasTTL {
		if ttl.Type != gjson.Number || ttl.Float() <= 0 {
			return cmd.errf(ErrInvalidCommand, `"ttl" must be a positive number of seconds, got %s`, jsonType(ttl))
		}
		ms := math.Ceil(ttl.Float() * 1000)
		const maxTTL = 1e15 // about 31,700 years, far below int64 overflow
		if ms > maxTTL {
			return cmd.errf(ErrInvalidCommand, `"ttl" %s is above the maximum of %d seconds`, ttl.Raw, int64(maxTTL/1000))
		}
		cmd.ttlMs = int64(ms)
	}
	if hasAt {
		n, isInt := readInt(at)
		if !isInt || n <= 0 {
			return cmd.errf(ErrInvalidCommand, `"expire_at" must be a positive integer (Unix milliseconds), got %s`, jsonType(at))
		}
		cmd.expireAt = n
	}
	var err error
	if cmd.refresh, err = readBool(cmd, fRefresh, get); err != nil {
		return err
	}
	if cmd.keepTTL, err = readBool(cmd, fKeepTTL, get); err != nil {
		return err
	}
	switch {
	case cmd.refresh && !hasTTL && !hasAt:
		return cmd.errf(ErrInvalidCommand, `"refresh" needs "ttl" or "expire_at" (the expiry to set on every increment)`)
	case cmd.keepTTL && (hasTTL || hasAt):
		return cmd.errf(ErrInvalidCommand, `give either "keep_ttl" or a new expiry ("ttl", "expire_at"), not both`)
	case cmd.op == opTouch && !hasTTL && !hasAt:
		return cmd.errf(ErrInvalidCommand, `field "ttl" or "expire_at" (the new expiry) is required`)
	}
	if v, ok := get(fIdem); ok {
		if v.Type != gjson.String {
			return cmd.errf(ErrInvalidCommand, `"idem" must be a non-empty string, got %s`, jsonType(v))
		}
		if err := d.setIdem(cmd, v, `"idem"`); err != nil {
			return err
		}
	}
	return nil
}

// readBool reads the boolean modifier f, false when absent.
func readBool(cmd *command, f field, get func(field) (gjson.Result, bool)) (bool, error) {
	v, ok := get(f)
	if !ok {
		return false, nil
	}
	if v.Type != gjson.True && v.Type != gjson.False {
		return false, cmd.errf(ErrInvalidCommand, `%q must be true or false, got %s`, fieldName(f), jsonType(v))
	}
	return v.Type == gjson.True, nil
}

// setIdem validates an idempotency key (what names its origin in errors)
// and gives it to cmd. Idempotency keys have the limits of keys.
func (d *decoder) setIdem(cmd *command, r gjson.Result, what string) error {
	k := r.Str
	if k == "" {
		return cmd.errf(ErrInvalidCommand, "%s must be a non-empty string", what)
	}
	if err := checkKeyText(r); err != nil {
		return cmd.errf(ErrInvalidKey, "%s %s", what, err)
	}
	if n := utf8.RuneCountInString(k); n > d.opts.MaxKeyLength {
		return cmd.errf(ErrKeyTooLong, "%s is %d characters, limit is %d", what, n, d.opts.MaxKeyLength)
	}
	cmd.idem = k
	return nil
}
