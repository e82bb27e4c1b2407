package kv

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/ijson"
)

// Canonical JSON is how values are stored and compared: object members
// sorted by key bytes (recursively, the last of duplicate keys kept), no
// insignificant whitespace, strings re-encoded with the minimal escapes
// (invalid UTF-8 replaced by U+FFFD, non-ASCII kept as UTF-8), numbers kept as their literal text.
// Two values are equal for cas and cad when their canonical forms are equal
// bytes, so {"a":1,"b":2} equals {"b":2,"a":1} but 1 does not equal 1.0.

// bytesString views b as a string without copying. The string must not
// outlive b or be used after b changes; canonicalisation only reads it
// while appending to a separate buffer.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// appendCanonical validates raw and appends its canonical form to dst.
func appendCanonical(dst, raw []byte) ([]byte, error) {
	if err := checkDepth(raw); err != nil {
		return dst, err
	}
	s := bytesString(raw)
	if !gjson.Valid(s) {
		return dst, fmt.Errorf("%w: malformed JSON", ErrInvalidJSON)
	}
	return appendCanon(dst, gjson.Parse(s)), nil
}

// canonicalResult canonicalises a value already parsed by gjson (a field of
// meta.kv, which was validated with the whole metadata). The result does
// not alias r.
func canonicalResult(r gjson.Result) ([]byte, error) {
	return canonicalRaw([]byte(r.Raw), r)
}

// canonicalAliased is canonicalResult for a value of an event's metadata,
// which nobody modifies and which outlives the command read from it: an
// already canonical value is returned as a view of r.Raw, not a copy. The
// caller must not modify it.
func canonicalAliased(r gjson.Result) ([]byte, error) {
	return canonicalRaw(unsafe.Slice(unsafe.StringData(r.Raw), len(r.Raw)), r)
}

// canonicalRaw returns raw, r's text, when it is canonical, and otherwise
// r's canonical form in a new slice.
func canonicalRaw(raw []byte, r gjson.Result) ([]byte, error) {
	if n, ok := scanCanonical(raw, 0); ok && n == len(raw) {
		return raw, nil
	}
	if err := checkDepth(raw); err != nil {
		return nil, err
	}
	return appendCanon(nil, r), nil
}

// checkDepth refuses JSON nesting deeper than MaxDepth before any recursive
// parser sees it.
func checkDepth(raw []byte) error {
	depth := 0
	inStr, esc := false, false
	for _, c := range raw {
		switch {
		case inStr:
			if esc {
				esc = false
			} else if c == '\\' {
				esc = true
			} else if c == '"' {
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '[' || c == '{':
			depth++
			if depth > MaxDepth {
				return fmt.Errorf("%w: nesting deeper than %d levels", ErrInvalidJSON, MaxDepth)
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return nil
}

type member struct {
	key string
	val gjson.Result
}

func appendCanon(dst []byte, r gjson.Result) []byte {
	switch r.Type {
	case gjson.Null:
		return append(dst, "null"...)
	case gjson.False:
		return append(dst, "false"...)
	case gjson.True:
		return append(dst, "true"...)
	case gjson.Number:
		return append(dst, r.Raw...)
	case gjson.String:
		return appendString(dst, r.Str)
	}
	if r.IsArray() {
		dst = append(dst, '[')
		first := true
		r.ForEach(func(_, v gjson.Result) bool {
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = appendCanon(dst, v)
			return true
		})
		return append(dst, ']')
	}
	var ms []member
	r.ForEach(func(k, v gjson.Result) bool {
		ms = append(ms, member{key: k.Str, val: v})
		return true
	})
	slices.SortStableFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	dst = append(dst, '{')
	first := true
	for i, m := range ms {
		if i+1 < len(ms) && ms[i+1].key == m.key {
			continue // a later duplicate wins
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendString(dst, m.key)
		dst = append(dst, ':')
		dst = appendCanon(dst, m.val)
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a canonical JSON string.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...) // as the character itself, like every non-ASCII rune
			i++
			start = i
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// canonical returns raw itself when it is already valid canonical JSON
// within MaxDepth, which is what events usually carry (values written by
// programs have no whitespace, sorted or single keys and plain strings),
// and a canonicalised copy otherwise. Returning raw saves validating,
// parsing and re-encoding every value; callers must treat the result as
// read-only, as they must raw.
func canonical(raw []byte) ([]byte, error) {
	if n, ok := scanCanonical(raw, 0); ok && n == len(raw) {
		return raw, nil
	}
	return appendCanonical(nil, raw)
}

// scanCanonical reads one JSON value at the start of b and returns its
// length and whether it is valid and canonical at nesting depth depth. It
// is deliberately strict: anything it is unsure of (escapes other than the
// short ones, keys with escapes, invalid UTF-8, whitespace) reports false
// and takes the general path, so a true is always right and a false only
// costs time.
func scanCanonical(b []byte, depth int) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	switch c := b[0]; {
	case c == '"':
		return scanCanonicalString(b)
	case c == '-' || c >= '0' && c <= '9':
		return scanNumber(b)
	case c == 't':
		return 4, len(b) >= 4 && string(b[:4]) == "true"
	case c == 'f':
		return 5, len(b) >= 5 && string(b[:5]) == "false"
	case c == 'n':
		return 4, len(b) >= 4 && string(b[:4]) == "null"
	case c == '[':
		if depth+1 > MaxDepth {
			return 0, false
		}
		i := 1
		if i < len(b) && b[i] == ']' {
			return i + 1, true
		}
		for {
			n, ok := scanCanonical(b[i:], depth+1)
			if !ok {
				return 0, false
			}
			i += n
			if i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i++
			case ']':
				return i + 1, true
			default:
				return 0, false
			}
		}
	case c == '{':
		if depth+1 > MaxDepth {
			return 0, false
		}
		i := 1
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		var prev []byte
		for {
			n, ok := scanCanonicalString(b[i:])
			if !ok {
				return 0, false
			}
			key := b[i+1 : i+n-1]
			// Keys must ascend strictly (no duplicates) and carry no
			// escapes, so their raw bytes are the bytes they sort by.
			if bytes.IndexByte(key, '\\') >= 0 || prev != nil && bytes.Compare(prev, key) >= 0 {
				return 0, false
			}
			prev = key
			i += n
			if i >= len(b) || b[i] != ':' {
				return 0, false
			}
			i++
			if n, ok = scanCanonical(b[i:], depth+1); !ok {
				return 0, false
			}
			i += n
			if i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i++
			case '}':
				return i + 1, true
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

// scanCanonicalString reads a JSON string at the start of b (b[0] == '"')
// and reports whether appendString would encode its contents the same way.
func scanCanonicalString(b []byte) (int, bool) {
	if len(b) == 0 || b[0] != '"' {
		return 0, false
	}
	for i := 1; i < len(b); {
		// Whole words of plain bytes, then the few plain bytes before
		// the next other one (plainWords stopped within eight bytes of
		// it), so that plainWords runs once per other byte, not per byte.
		i += plainWords(b[i:])
		for i < len(b) && b[i] >= 0x20 && b[i] < utf8.RuneSelf && b[i] != '"' && b[i] != '\\' {
			i++
		}
		if i == len(b) {
			break
		}
		c := b[i]
		switch {
		case c == '"':
			return i + 1, true
		case c == '\\':
			if i+1 >= len(b) {
				return 0, false
			}
			switch b[i+1] {
			case '"', '\\', 'n', 'r', 't', 'b', 'f':
				i += 2
			default:
				return 0, false // \/ and \u are re-encoded
			}
		case c < 0x20:
			return 0, false
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, false
			}
			i += size
		}
	}
	return 0, false
}

// plainWords returns the length of the longest prefix of b that a
// canonical string holds as it is, a word at a time (ijson.PlainWords).
func plainWords(b []byte) int { return ijson.PlainWords(b) }

// scanNumber reads a JSON number at the start of b; its literal is its
// canonical form.
func scanNumber(b []byte) (int, bool) {
	n := ijson.ScanNumber(b)
	return n, n > 0
}
