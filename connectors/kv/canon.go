package kv

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/tidwall/gjson"
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
// meta.kv, which was validated with the whole metadata).
func canonicalResult(r gjson.Result) ([]byte, error) {
	if err := checkDepth([]byte(r.Raw)); err != nil {
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
