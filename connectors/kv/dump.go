package kv

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/ijson"
)

// ErrInvalidRecord reports a dump line that does not decode into a Record,
// or a stored key that does not follow the key layout.
var ErrInvalidRecord = errors.New("invalid record")

// Record is one live key of a store, as Dump reports it and Load writes it.
type Record struct {
	// Namespace and Key locate the value; Key is valid UTF-8.
	Namespace, Key string
	// Value is the stored canonical JSON.
	Value []byte
	// ExpireAt is the expiry in Unix milliseconds, 0 for none.
	ExpireAt int64
}

// AppendJSON appends the record as one JSON object
//
//	{"namespace":NS,"key":K,"value":V,"expire_at":MS}
//
// with expire_at null when the record never expires. The encoding depends
// only on the record, so dumping the same records gives the same bytes.
func (r Record) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"namespace":`...)
	dst = appendString(dst, r.Namespace)
	dst = append(dst, `,"key":`...)
	dst = appendString(dst, r.Key)
	dst = append(dst, `,"value":`...)
	dst = append(dst, r.Value...)
	dst = append(dst, `,"expire_at":`...)
	if r.ExpireAt == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = strconv.AppendInt(dst, r.ExpireAt, 10)
	}
	return append(dst, '}')
}

// ParseRecord decodes one line written by Record.AppendJSON. namespace,
// key and value are required; expire_at may be absent, null or 0 for no
// expiry. The value is canonicalised, so a hand-edited dump loads the same
// as a dumped one. Every failure wraps ErrInvalidRecord, except the line
// ending a dump cut short (IncompleteDumpLine), which wraps
// ErrIncompleteDump.
func ParseRecord(line []byte) (Record, error) {
	var r Record
	bad := func(format string, args ...any) (Record, error) {
		return Record{}, fmt.Errorf("%w: %s", ErrInvalidRecord, fmt.Sprintf(format, args...))
	}
	if err := checkDepth(line); err != nil {
		return bad("%v", err)
	}
	var check ijson.Checker
	if _, err := check.Check(line, ""); errors.Is(err, ijson.ErrSyntax) {
		return bad("not valid JSON")
	} else if err != nil {
		return bad("%v", err) // a duplicate key, a bad member name
	}
	obj := gjson.ParseBytes(line)
	if !obj.IsObject() {
		return bad("not a JSON object")
	}
	if m := obj.Get(IncompleteDumpField); m.Exists() {
		return Record{}, fmt.Errorf("%w: it ends with %s", ErrIncompleteDump, line)
	}
	var err error
	obj.ForEach(func(k, v gjson.Result) bool {
		switch k.String() {
		case "namespace", "key", "value", "expire_at":
		default:
			err = fmt.Errorf("unknown field %q", k.String())
			return false
		}
		return true
	})
	if err != nil {
		return bad("%v", err)
	}
	ns, key, value := obj.Get("namespace"), obj.Get("key"), obj.Get("value")
	if ns.Type != gjson.String {
		return bad(`"namespace" must be a string`)
	}
	if key.Type != gjson.String || key.Str == "" || !utf8.ValidString(key.Str) || ijson.CheckString(key.Raw) != nil {
		return bad(`"key" must be a non-empty UTF-8 string (no lone surrogate escapes)`)
	}
	if ijson.CheckString(ns.Raw) != nil {
		return bad(`"namespace" must be a UTF-8 string (no lone surrogate escapes)`)
	}
	if !value.Exists() || value.Type == gjson.Null {
		return bad(`"value" is missing or null`)
	}
	r.Namespace, r.Key = ns.Str, key.Str
	if r.Value, err = canonicalResult(value); err != nil {
		return bad("value: %v", err)
	}
	switch exp := obj.Get("expire_at"); exp.Type {
	case gjson.Null:
	case gjson.Number:
		n, perr := strconv.ParseInt(exp.Raw, 10, 64)
		if perr != nil || n < 0 {
			return bad(`"expire_at" must be a non-negative integer (Unix milliseconds), got %s`, exp.Raw)
		}
		r.ExpireAt = n
	default:
		return bad(`"expire_at" must be a number or null`)
	}
	return r, nil
}

// DumpOptions configure Dump.
type DumpOptions struct {
	// Now decides which records have expired (and are left out).
	// Default time.Now.
	Now func() time.Time
	// Chunk is the most records read per Backend.Update, so a long dump
	// never holds the store's writer for long. Default 1000.
	Chunk int
}

// EnsureDefaults fills unset fields with their defaults.
func (o *DumpOptions) EnsureDefaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Chunk <= 0 {
		o.Chunk = 1000
	}
}

// dataRange bounds every data key of every namespace.
var dataStart, dataEnd = []byte{tagData}, []byte{tagData + 1}

// parseDataKey splits a raw data key into namespace and user key.
func parseDataKey(k []byte) (ns, key string, ok bool) {
	if len(k) == 0 || k[0] != tagData {
		return "", "", false
	}
	n, w := binary.Uvarint(k[1:])
	if w <= 0 || uint64(len(k)-1-w) < n {
		return "", "", false
	}
	rest := k[1+w:]
	return string(rest[:n]), string(rest[n:]), true
}

// Dump calls fn with every live record of every namespace of b, ordered by
// namespace length, then namespace bytes, then key bytes (the order of the
// key layout). Records expired at the time of reading are left out. fn runs
// outside any transaction, so it may be slow (write to a file); its error
// stops the dump and is returned. Reads are chunked (DumpOptions.Chunk), so
// a dump taken while writers run sees each chunk consistently but not the
// whole store at one instant: dump a store no flow is writing.
func Dump(ctx context.Context, b Backend, opts DumpOptions, fn func(Record) error) error {
	opts.EnsureDefaults()
	cursor := dataStart
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var recs []Record
		var last []byte
		read := func(tx Txn) error {
			recs, last = recs[:0], nil
			now := opts.Now().UnixMilli()
			return tx.Scan(cursor, dataEnd, func(k, v []byte, exp int64) (bool, error) {
				if len(recs) == opts.Chunk {
					return false, nil
				}
				last = append(last[:0], k...)
				if exp != 0 && now >= exp {
					return true, nil
				}
				ns, key, ok := parseDataKey(k)
				if !ok || !utf8.ValidString(ns) || !utf8.ValidString(key) {
					return false, fmt.Errorf("%w: stored key %q does not follow the key layout", ErrInvalidRecord, k)
				}
				recs = append(recs, Record{Namespace: ns, Key: key, Value: bytes.Clone(v), ExpireAt: exp})
				return true, nil
			})
		}
		errs := make([]error, 1)
		if err := b.Update(ctx, []TxnFunc{read}, errs); err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		if errs[0] != nil {
			return fmt.Errorf("dump: %w", errs[0])
		}
		for _, r := range recs {
			if err := fn(r); err != nil {
				return err
			}
		}
		if last == nil {
			return nil
		}
		// Resume just after the last key read.
		cursor = append(last, 0)
	}
}

// LoadOptions configure Load.
type LoadOptions struct {
	// Group is the number of records written per Backend.Update (one
	// commit group). Default 1000.
	Group int
	// MaxKeyLength and MaxValueBytes are the limits a record must meet,
	// as the kv connector's Options of the same names: a record a put
	// would refuse is refused with the put's error. Defaults
	// DefaultMaxKeyLength and DefaultMaxValueBytes.
	MaxKeyLength, MaxValueBytes int
	// Source names the input in the store's partial load marker (see
	// PartialLoads). Default "input".
	Source string
	// Now stamps the partial load marker. Default time.Now.
	Now func() time.Time
}

// EnsureDefaults fills unset fields with their defaults.
func (o *LoadOptions) EnsureDefaults() {
	if o.Group <= 0 {
		o.Group = 1000
	}
	if o.MaxKeyLength <= 0 {
		o.MaxKeyLength = DefaultMaxKeyLength
	}
	if o.MaxValueBytes <= 0 {
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	if o.Source == "" {
		o.Source = "input"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// CheckRecord reports whether a put would accept r under opts' limits,
// with the error the put would give (wrapping ErrKeyTooLong or
// ErrValueTooLarge), or ErrInvalidRecord for an empty key or value or a
// negative expiry. opts must have its defaults filled in.
func CheckRecord(r Record, opts *LoadOptions) error {
	if r.Key == "" || r.ExpireAt < 0 || len(r.Value) == 0 {
		return fmt.Errorf("%w: namespace %q, key %q: empty key or value, or negative expiry", ErrInvalidRecord, r.Namespace, r.Key)
	}
	d := decoder{opts: &Options{MaxKeyLength: opts.MaxKeyLength, MaxValueBytes: opts.MaxValueBytes}}
	cmd := command{op: opPut, key: r.Key, hasKey: true}
	// The key is decoded text (ParseRecord checked its escapes), so only
	// the put's UTF-8 and length checks apply.
	if err := d.checkKey(&cmd, "key", gjson.Result{Type: gjson.String, Str: r.Key}, false); err != nil {
		return fmt.Errorf("namespace %q: %w", r.Namespace, err)
	}
	if len(r.Value) > opts.MaxValueBytes {
		return fmt.Errorf("namespace %q: %w", r.Namespace, cmd.errf(ErrValueTooLarge, "value is %s, limit is %s", sizeString(len(r.Value)), sizeString(opts.MaxValueBytes)))
	}
	return nil
}

// Load writes the records next returns, until next returns io.EOF, and
// returns how many it wrote. Each record is stored as put with expire_at
// would store it: an existing key is overwritten and the expiry index is
// kept in step. Records are committed in groups of LoadOptions.Group. When
// next fails, the records it returned before are committed and counted in
// n, then its error is returned; when a commit fails, the groups before it
// are committed and counted. Records should come from ParseRecord (or
// Dump), which validates them; Load also refuses a record a put would
// refuse (CheckRecord), before committing it.
//
// A load that does not complete leaves the store partially loaded. Load
// marks the store before its first record and clears the mark after the
// last commit, so PartialLoads reports a load that failed or was killed;
// a completed load also clears the marks of earlier loads of the same
// LoadOptions.Source.
func Load(ctx context.Context, b Backend, opts LoadOptions, next func() (Record, error)) (n int, err error) {
	opts.EnsureDefaults()
	marker, err := startLoad(ctx, b, opts.Source, opts.Now())
	if err != nil {
		return 0, err
	}
	layouts := map[string]*layout{}
	group := make([]Record, 0, opts.Group)
	flush := func() error {
		if len(group) == 0 {
			return nil
		}
		fns := make([]TxnFunc, len(group))
		for i := range group {
			r := &group[i]
			l := layouts[r.Namespace]
			if l == nil {
				nl := newLayout(r.Namespace)
				l = &nl
				layouts[r.Namespace] = l
			}
			fns[i] = func(tx Txn) error { return loadRecord(tx, l, r) }
		}
		errs := make([]error, len(fns))
		if err := b.Update(ctx, fns, errs); err != nil {
			return fmt.Errorf("load: %w", err)
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("load: %w", err)
		}
		n += len(group)
		group = group[:0]
		return nil
	}
	for {
		r, err := next()
		if errors.Is(err, io.EOF) {
			if err := flush(); err != nil {
				return n, err
			}
			return n, finishLoad(ctx, b, marker, opts.Source)
		}
		if err == nil {
			err = CheckRecord(r, &opts)
		}
		if err != nil {
			// Keep every record read before the bad one.
			if ferr := flush(); ferr != nil {
				return n, errors.Join(err, ferr)
			}
			return n, err
		}
		group = append(group, r)
		if len(group) == opts.Group {
			if err := flush(); err != nil {
				return n, err
			}
		}
		if err := ctx.Err(); err != nil {
			return n, err
		}
	}
}

// loadRecord stores r, replacing the expiry index entry of the record it
// overwrites (as execer.store does for put).
func loadRecord(tx Txn, l *layout, r *Record) error {
	dk := l.dataKey(nil, r.Key)
	_, oldExp, found, err := tx.Get(dk)
	if err != nil {
		return err
	}
	if found && oldExp != 0 && oldExp != r.ExpireAt {
		if err := tx.Delete(l.expiryKey(nil, oldExp, []byte(r.Key))); err != nil {
			return err
		}
	}
	if err := tx.Set(dk, r.Value, r.ExpireAt); err != nil {
		return err
	}
	if r.ExpireAt != 0 {
		return tx.Set(l.expiryKey(nil, r.ExpireAt, []byte(r.Key)), nil, r.ExpireAt)
	}
	return nil
}
