// Package ijson checks that JSON text is I-JSON (RFC 7493): valid UTF-8,
// no lone surrogate escapes, and no object with two members of the same
// name, so that every reader of an event sees the same values. It is the
// one check flowrun's sources run where bytes become an event.
//
// A Checker reads the text once, left to right, without recursion and
// without allocating for the usual event (objects of at most a few dozen
// members, names without escapes).
package ijson

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// MaxDepth is the deepest nesting of arrays and objects a Checker accepts.
// It bounds the Checker's memory (a frame of 64 bytes per level, so 6.4 MB
// at most) whatever the input; the kv connector refuses values nested
// deeper than 1000 levels anyway.
const MaxDepth = 100_000

// Errors a Check reports, wrapped in an *Error.
var (
	// ErrSyntax reports text that is not one JSON value.
	ErrSyntax = errors.New("invalid JSON")
	// ErrTooDeep reports nesting deeper than MaxDepth.
	ErrTooDeep = errors.New("invalid JSON: nested too deep")
	// ErrDuplicateKey reports an object with two members of the same name
	// (compared after unescaping, so "a" and "\u0061" are the same).
	ErrDuplicateKey = errors.New("duplicate object key")
	// ErrInvalidUTF8 reports a string holding bytes that are not UTF-8.
	ErrInvalidUTF8 = errors.New("invalid UTF-8")
	// ErrLoneSurrogate reports a \uD800-\uDFFF escape that is not half of
	// a surrogate pair: it encodes no character.
	ErrLoneSurrogate = errors.New("lone surrogate escape")
)

// Error locates what is wrong with a JSON text.
type Error struct {
	// Err is one of the sentinel errors of this package.
	Err error
	// Path names the value concerned, from the root given to Check:
	// "data.items[2].name". For ErrDuplicateKey and the errors of a member
	// name it is the path of the member.
	Path string
	// Key is the member name concerned, for ErrDuplicateKey and for errors
	// in a member name (as far as it could be decoded).
	Key string
	// Offset is the byte offset in the text where the problem was found.
	Offset int
	// Detail adds what Err does not say (the syntax problem).
	Detail string
	// InKey is true when the problem is in a member name.
	InKey bool
}

// Error returns, for example, `duplicate object key "amount" at
// data.amount (byte 27)`.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Err.Error())
	switch {
	case errors.Is(e.Err, ErrDuplicateKey):
		fmt.Fprintf(&b, " %s", strconv.Quote(e.Key))
	case e.InKey:
		b.WriteString(" in an object key")
	}
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Path != "" {
		b.WriteString(" at ")
		b.WriteString(e.Path)
	}
	fmt.Fprintf(&b, " (byte %d)", e.Offset)
	return b.String()
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// Report is what a successful Check found that is not an error.
type Report struct {
	// BadString, when not nil, locates the first string value (not member
	// name) holding invalid UTF-8 or a lone surrogate escape. Such text is
	// still accepted by Check: the caller refuses it or repairs it with
	// Repair.
	BadString *Error
}

// frame is one open array or object. It holds no pointers, so pushing
// and popping frames costs no write barriers while the GC runs.
type frame struct {
	obj   bool
	named bool // key holds the current member's name
	n     int  // members or elements so far
	key   name // the current member's name (objects)
	keys  int  // start of this object's names in Checker.keys
	set   int  // 1 + the index in Checker.sets of this object's names, once it has many; 0 before
}

// name locates a member name: text[start:end] of the text being checked
// (quotes excluded), or, for a name with escapes, its decoded form
// scratch[start:end]. Offsets rather than strings keep the Checker's
// state free of pointers into the text.
type name struct {
	start, end int
	decoded    bool
}

// linearKeys is how many member names an object compares one by one before
// it switches to a set.
const linearKeys = 16

// Checker checks JSON texts. Its zero value is ready; reusing one Checker
// avoids allocations. A Checker is not safe for concurrent use.
type Checker struct {
	stack   []frame
	keys    []name // names of the open objects, innermost last
	sets    []map[string]struct{}
	scratch []byte // the decoded names with escapes of the text last checked
	text    []byte // the text being checked, during Check only
	root    string
	bad     *Error
	top     []topMember // members of a root object, in order
	valAt   int         // where the current root member's value starts
}

// topMember is a member of the root object: where its name is in the
// text (or in scratch when it has escapes) and where its value is. It
// holds offsets rather than views, so a Checker never keeps a text alive.
type topMember struct {
	key        name
	start, end int
}

// nameOf returns the bytes of n in text, the text being checked.
func (c *Checker) nameOf(text []byte, n name) []byte {
	if n.decoded {
		return c.scratch[n.start:n.end]
	}
	return text[n.start:n.end]
}

// Member returns the value of the root object's member name in b, the
// text last checked, as offsets into it (b[start:end]); ok is false when
// the root is not an object or has no such member. It is valid only after
// a Check of b that returned no error.
func (c *Checker) Member(b []byte, name string) (start, end int, ok bool) {
	for _, m := range c.top {
		if string(c.nameOf(b, m.key)) == name {
			return m.start, m.end, true
		}
	}
	return 0, 0, false
}

// Members returns how many members the root object of the text last
// checked has: 0 when its root is not an object. It is valid only after a
// Check that returned no error.
func (c *Checker) Members() int { return len(c.top) }

// Check reads b, one JSON value with optional whitespace around it, and
// returns an *Error for the first problem: a syntax error, nesting deeper
// than MaxDepth, two members of one object with the same name, or a member
// name with invalid UTF-8 or a lone surrogate escape. A string value with
// invalid UTF-8 or a lone surrogate escape is not an error: the first one
// is reported in Report.BadString. root names b in paths ("data", "meta";
// "" for none).
//
// Strings in the result (Error.Key) do not alias b.
func (c *Checker) Check(b []byte, root string) (Report, error) {
	if cap(c.scratch) > 64<<10 {
		c.scratch = nil // do not pin the names of one big text
	}
	c.stack, c.keys, c.scratch, c.root, c.bad, c.top = c.stack[:0], c.keys[:0], c.scratch[:0], root, nil, c.top[:0]
	c.text = b
	err := c.check(b)
	// The sets' names are views of b: drop them so b is not kept alive.
	clear(c.sets)
	c.sets, c.text = c.sets[:0], nil
	if cap(c.stack) > 1024 {
		c.stack = nil // do not pin the frames of one deep text
	}
	if err != nil {
		return Report{}, err
	}
	return Report{BadString: c.bad}, nil
}

func (c *Checker) check(b []byte) error {
	i := skipWS(b, 0)
	for {
		// A value starts at i.
		if i >= len(b) {
			return c.errAt(ErrSyntax, i, "unexpected end of input")
		}
		if len(c.stack) == 1 && c.stack[0].obj {
			c.valAt = i
		}
		switch ch := b[i]; {
		case ch == '{' || ch == '[':
			if len(c.stack) >= MaxDepth {
				return c.errAt(ErrTooDeep, i, fmt.Sprintf("more than %d levels of arrays and objects", MaxDepth))
			}
			c.stack = append(c.stack, frame{obj: ch == '{', keys: len(c.keys)})
			i = skipWS(b, i+1)
			if i < len(b) && (ch == '{' && b[i] == '}' || ch == '[' && b[i] == ']') {
				c.stack = c.stack[:len(c.stack)-1]
				i++
				break
			}
			if ch == '{' {
				var err error
				if i, err = c.member(b, i); err != nil {
					return err
				}
			}
			continue
		case ch == '"':
			n, bad, _ := scanString(b[i:])
			if n < 0 {
				return c.errAt(ErrSyntax, i-n-1, "malformed string")
			}
			if bad != nil && c.bad == nil {
				c.bad = c.errAt(bad, i, "")
			}
			i += n
		case ch == 't':
			if !hasPrefix(b[i:], "true") {
				return c.errAt(ErrSyntax, i, "invalid literal")
			}
			i += 4
		case ch == 'f':
			if !hasPrefix(b[i:], "false") {
				return c.errAt(ErrSyntax, i, "invalid literal")
			}
			i += 5
		case ch == 'n':
			if !hasPrefix(b[i:], "null") {
				return c.errAt(ErrSyntax, i, "invalid literal")
			}
			i += 4
		case ch == '-' || ch >= '0' && ch <= '9':
			n := ScanNumber(b[i:])
			if n <= 0 {
				return c.errAt(ErrSyntax, i, "malformed number")
			}
			i += n
		default:
			return c.errAt(ErrSyntax, i, fmt.Sprintf("unexpected %s", describe(b[i])))
		}
		// A value ended at i: close what it ends, find where the next
		// one starts.
	after:
		for {
			if len(c.stack) == 1 && c.stack[0].obj {
				c.top = append(c.top, topMember{key: c.stack[0].key, start: c.valAt, end: i})
			}
			i = skipWS(b, i)
			if len(c.stack) == 0 {
				if i != len(b) {
					return c.errAt(ErrSyntax, i, fmt.Sprintf("unexpected %s after the value", describe(b[i])))
				}
				return nil
			}
			if i >= len(b) {
				return c.errAt(ErrSyntax, i, "unexpected end of input")
			}
			top := &c.stack[len(c.stack)-1]
			switch {
			case b[i] == ',':
				i = skipWS(b, i+1)
				top.n++
				if top.obj {
					var err error
					if i, err = c.member(b, i); err != nil {
						return err
					}
				}
				break after
			case top.obj && b[i] == '}' || !top.obj && b[i] == ']':
				c.keys = c.keys[:top.keys]
				if top.set != 0 {
					// Sets are made innermost first: this one is the last.
					c.sets[top.set-1] = nil
					c.sets = c.sets[:top.set-1]
				}
				*top = frame{}
				c.stack = c.stack[:len(c.stack)-1]
				i++
			default:
				return c.errAt(ErrSyntax, i, fmt.Sprintf("unexpected %s in %s", describe(b[i]), map[bool]string{true: "object", false: "array"}[top.obj]))
			}
		}
	}
}

// member reads `"name" :` at i in the innermost (object) frame, checks the
// name and returns where the value starts.
func (c *Checker) member(b []byte, i int) (int, error) {
	top := &c.stack[len(c.stack)-1]
	if i >= len(b) || b[i] != '"' {
		if i >= len(b) {
			return i, c.errAt(ErrSyntax, i, "unexpected end of input")
		}
		return i, c.errAt(ErrSyntax, i, fmt.Sprintf("expected a member name, found %s", describe(b[i])))
	}
	n, bad, escaped := scanString(b[i:])
	if n < 0 {
		return i, c.errAt(ErrSyntax, i-n-1, "malformed string")
	}
	key := name{start: i + 1, end: i + n - 1}
	if escaped {
		s := len(c.scratch)
		c.scratch = unescape(c.scratch, b[key.start:key.end])
		key = name{start: s, end: len(c.scratch), decoded: true}
	}
	top.key, top.named = key, true
	if bad != nil {
		e := c.errAt(bad, i, "")
		e.InKey, e.Key = true, strings.ToValidUTF8(string(c.nameOf(b, key)), "\uFFFD")
		return i, e
	}
	if c.seen(b, top, key) {
		e := c.errAt(ErrDuplicateKey, i, "")
		e.Key = string(c.nameOf(b, key))
		return i, e
	}
	i = skipWS(b, i+n)
	if i >= len(b) || b[i] != ':' {
		return i, c.errAt(ErrSyntax, i, "expected ':' after a member name")
	}
	return skipWS(b, i+1), nil
}

// seen records key in the object f and reports whether it was already
// there.
func (c *Checker) seen(text []byte, f *frame, key name) bool {
	kb := c.nameOf(text, key)
	if f.set != 0 {
		set := c.sets[f.set-1]
		if _, ok := set[string(kb)]; ok {
			return true
		}
		set[bytesString(kb)] = struct{}{}
		return false
	}
	names := c.keys[f.keys:]
	for _, k := range names {
		if string(c.nameOf(text, k)) == string(kb) {
			return true
		}
	}
	if len(names) < linearKeys {
		c.keys = append(c.keys, key)
		return false
	}
	// The set's names are views of text and scratch, which only grows
	// during a Check; Check drops the sets before it returns.
	set := make(map[string]struct{}, 2*linearKeys)
	for _, k := range names {
		set[bytesString(c.nameOf(text, k))] = struct{}{}
	}
	set[bytesString(kb)] = struct{}{}
	c.sets = append(c.sets, set)
	f.set = len(c.sets)
	c.keys = c.keys[:f.keys]
	return false
}

// errAt returns an *Error at offset off with the current path.
func (c *Checker) errAt(err error, off int, detail string) *Error {
	return &Error{Err: err, Path: c.path(), Offset: off, Detail: detail}
}

// maxPath is about the longest path an error gives in full.
const maxPath = 200

// path names the innermost open value, eliding what is beyond maxPath.
func (c *Checker) path() string {
	var b strings.Builder
	b.WriteString(c.root)
	for _, f := range c.stack {
		if b.Len() > maxPath {
			b.WriteString("...")
			break
		}
		if f.obj {
			if !f.named {
				continue
			}
			key := bytesString(c.nameOf(c.text, f.key))
			if isIdent(key) {
				if b.Len() > 0 {
					b.WriteByte('.')
				}
				b.WriteString(key)
			} else {
				b.WriteByte('[')
				b.WriteString(strconv.Quote(strings.ToValidUTF8(key, "\uFFFD")))
				b.WriteByte(']')
			}
		} else {
			fmt.Fprintf(&b, "[%d]", f.n)
		}
	}
	return b.String()
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func describe(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

func hasPrefix(b []byte, s string) bool {
	return len(b) >= len(s) && string(b[:len(s)]) == s
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString reads the JSON string at the start of b (b[0] == '"') and
// returns its length including the quotes, ErrInvalidUTF8 or
// ErrLoneSurrogate for the first such problem in it, and whether it has
// escapes. A malformed string gives n = -(offset of the problem)-1.
func scanString(b []byte) (n int, bad error, escaped bool) {
	for i := 1; i < len(b); {
		// Whole words of plain bytes, then the few plain bytes before
		// the next other byte: PlainWords stopped within eight bytes of
		// it.
		i += PlainWords(b[i:])
		for i < len(b) && plain(b[i]) {
			i++
		}
		if i == len(b) {
			break
		}
		c := b[i]
		switch {
		case c == '"':
			return i + 1, bad, escaped
		case c == '\\':
			escaped = true
			if i+1 >= len(b) {
				return -(i + 1) - 1, nil, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r, ok := hex4(b[i+2:])
				if !ok {
					return -i - 1, nil, false
				}
				i += 6
				if !utf16.IsSurrogate(r) {
					continue
				}
				if r < 0xdc00 && i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
					if r2, ok := hex4(b[i+2:]); ok && r2 >= 0xdc00 && r2 <= 0xdfff {
						i += 6
						continue
					}
				}
				if bad == nil {
					bad = ErrLoneSurrogate
				}
			default:
				return -i - 1, nil, false
			}
		case c < 0x20:
			return -i - 1, nil, false
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 && bad == nil {
				bad = ErrInvalidUTF8
			}
			i += size
		}
	}
	return -len(b) - 1, nil, false
}

// plain reports whether a JSON string holds c as it is: ASCII other than
// control characters, '"' and '\\'.
func plain(c byte) bool { return c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' }

// hex4 decodes four hex digits at the start of b.
func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// PlainWords returns the length of the longest prefix of b made of whole
// eight-byte words of ASCII other than control characters, '"' and '\\':
// bytes a JSON string holds as they are. Text is mostly such bytes, and a
// word at a time is several times faster than a byte loop around it.
func PlainWords(b []byte) int {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	// special has a byte's high bit set for some byte of x that is not
	// plain, and is 0 when every byte is. x-c*ones borrows into a
	// byte's high bit when that byte is below c (the lowest such byte
	// always does: nothing below it borrows); a byte of 0x80 or more sets
	// its own. Borrows and bytes at or above 0x80 may set other high bits
	// too, but only in a word that has a byte that is not plain anyway.
	special := func(x uint64) uint64 {
		return (x | (x - 0x20*ones) | ((x ^ '"'*ones) - ones) | ((x ^ '\\'*ones) - ones)) & highs
	}
	i := 0
	for ; i+16 <= len(b); i += 16 {
		if special(binary.LittleEndian.Uint64(b[i:]))|special(binary.LittleEndian.Uint64(b[i+8:])) != 0 {
			break
		}
	}
	for ; i+8 <= len(b); i += 8 {
		if special(binary.LittleEndian.Uint64(b[i:])) != 0 {
			break
		}
	}
	return i
}

// ScanNumber returns the length of the JSON number at the start of b, or
// 0 when it is malformed (or b is empty).
func ScanNumber(b []byte) int {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return 0
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0
		}
	}
	return i
}

// unescape appends the decoded contents of a valid JSON string (quotes
// removed) to dst; lone surrogates become U+FFFD.
func unescape(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			dst = append(dst, s[i])
			i++
			continue
		}
		switch s[i+1] {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, _ := hex4(s[i+2:])
			i += 6
			if utf16.IsSurrogate(r) && r < 0xdc00 && i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
				if r2, ok := hex4(s[i+2:]); ok && r2 >= 0xdc00 && r2 <= 0xdfff {
					r = utf16.DecodeRune(r, r2)
					i += 6
				}
			}
			if utf16.IsSurrogate(r) {
				r = utf8.RuneError
			}
			dst = utf8.AppendRune(dst, r)
			continue
		default: // '"', '\\', '/'
			dst = append(dst, s[i+1])
		}
		i += 2
	}
	return dst
}

// Repair appends b to dst with every invalid UTF-8 byte of its strings
// replaced by U+FFFD (one per byte, as encoding/json and flowrun's
// canonical form do) and every lone surrogate escape by \ufffd. b should
// have passed Check (on other text Repair does not panic, but what it
// returns is unspecified); member names, which Check refuses when they
// would need repair, are repaired too.
func Repair(dst, b []byte) []byte {
	inStr := false
	for i := 0; i < len(b); {
		c := b[i]
		if !inStr {
			dst = append(dst, c)
			inStr = c == '"'
			i++
			continue
		}
		switch {
		case c == '"':
			dst = append(dst, c)
			inStr = false
			i++
		case c == '\\' && i+6 <= len(b) && b[i+1] == 'u':
			r, ok := hex4(b[i+2:])
			if !ok || !utf16.IsSurrogate(r) {
				dst = append(dst, b[i:i+6]...)
				i += 6
				continue
			}
			if r < 0xdc00 && i+12 <= len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
				if r2, ok := hex4(b[i+8:]); ok && r2 >= 0xdc00 && r2 <= 0xdfff {
					dst = append(dst, b[i:i+12]...)
					i += 12
					continue
				}
			}
			dst = append(dst, `\ufffd`...)
			i += 6
		case c == '\\':
			dst = append(dst, b[i:min(i+2, len(b))]...)
			i += 2
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, "\uFFFD"...)
			} else {
				dst = append(dst, b[i:i+size]...)
			}
			i += size
		}
	}
	return dst
}

// BadStringIn returns the first string with invalid UTF-8 or a lone
// surrogate escape (as Report.BadString, its offset counted in b) in the
// member name of b's root object, or nil when that member is not an
// object or holds none. b must have passed Check. A source whose Check
// reported a BadString calls it to refuse one in meta, where a repaired
// key or correlation would equal another, before repairing the rest. The
// member is checked anew: Member and Members then describe it, not b.
func (c *Checker) BadStringIn(b []byte, name string) *Error {
	start, end, ok := c.Member(b, name)
	if !ok || b[start] != '{' {
		return nil
	}
	rep, _ := c.Check(b[start:end], name)
	if rep.BadString == nil {
		return nil
	}
	bad := *rep.BadString
	bad.Offset += start
	return &bad
}

// Repaired returns a copy of b with its invalid strings repaired (see
// Repair), checked again so that Member and Members describe the copy.
// b must have passed Check; Repair keeps its structure, so the check of
// the copy fails only if b had not.
func (c *Checker) Repaired(b []byte) ([]byte, error) {
	out := Repair(make([]byte, 0, len(b)+16), b)
	if _, err := c.Check(out, ""); err != nil {
		return nil, err
	}
	return out, nil
}

// CheckString reports what keeps raw, the JSON text of one string
// (quotes included, as gjson.Result.Raw gives it), from naming one exact
// sequence of characters: ErrLoneSurrogate, ErrInvalidUTF8, or ErrSyntax
// when it is not a JSON string; nil when it is fine. Decoders replace both
// problems by U+FFFD, which makes different strings equal: a key must be
// refused instead.
func CheckString(raw string) error {
	b := unsafe.Slice(unsafe.StringData(raw), len(raw))
	if len(b) == 0 || b[0] != '"' {
		return ErrSyntax
	}
	n, bad, _ := scanString(b)
	if n != len(b) {
		return ErrSyntax
	}
	return bad
}

// AppendValid appends b to dst so that what it appends is always valid
// UTF-8 JSON, whatever b holds: b itself when it is such already; b with
// the strings repaired (see Repair) when only string values hold invalid
// UTF-8 or lone surrogate escapes; otherwise b as one JSON string (invalid
// UTF-8 replaced by U+FFFD), and ok is false. Writers call it so that no
// line they write can be unreadable. Duplicate member names are kept: the
// text is still valid JSON. c is used for the check.
func AppendValid(c *Checker, dst, b []byte) (out []byte, ok bool) {
	rep, err := c.Check(b, "")
	switch {
	case err == nil && rep.BadString == nil:
		return append(dst, b...), true
	case err == nil:
		return Repair(dst, b), true
	case errors.Is(err, ErrDuplicateKey) && utf8.Valid(b) && !strings.Contains(bytesString(b), `\u`) && json.Valid(b):
		// Check stopped at the duplicate; the rest is checked here.
		return append(dst, b...), true
	}
	return appendQuoted(dst, b), false
}

// AppendEvent appends b, the data or meta of an event, for a writer:
// unchanged when it is valid UTF-8, which costs one fast scan, and through
// AppendValid otherwise. Events are JSON by the pipeline's contract (every
// source checks its input, every node builds JSON with an encoder); what
// text copied from elsewhere may still carry is invalid UTF-8, which no
// line flowrun writes may hold.
func AppendEvent(c *Checker, dst, b []byte) []byte {
	if utf8.Valid(b) {
		return append(dst, b...)
	}
	dst, _ = AppendValid(c, dst, b)
	return dst
}

func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// appendQuoted appends b as a JSON string, invalid UTF-8 as U+FFFD.
func appendQuoted(dst, b []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(b); {
		c := b[i]
		switch {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
			i++
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			i++
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, "\uFFFD"...)
			} else {
				dst = append(dst, b[i:i+size]...)
			}
			i += size
		}
	}
	return append(dst, '"')
}
