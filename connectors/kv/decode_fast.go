package kv

import (
	"bytes"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// decodeSimple decodes, without parsing the meta as a whole, the commands
// most events carry: a meta object whose "kv" member is exactly
//
//	{"<op>":"<key>"}            op: get, exists, delete, put
//	{"increment":"<key>"}
//	{"increment":"<key>","by":<integer of at most 18 digits>}
//
// beside any other members, such as the "correlation" (any valid JSON
// value) and what a bus source adds (message_id, stream, delivery_count,
// ...): no whitespace between the meta's own members, member names of
// printable ASCII without quote or backslash, each member's value valid
// JSON not starting or ending with whitespace, and a key of printable
// ASCII without quote or backslash within Options.MaxKeyLength. Such a
// meta is valid JSON, and decodes to exactly the command and correlation
// the general path (decodeEvent) would give, the first "kv" and the first
// "correlation" as gjson finds them, which TestDecodeSimpleMatchesGeneral
// and FuzzDecodeSimple check. For anything else, including every input
// the general path would refuse, ok is false and the caller takes the
// general path. Options.InputFrom and Options.Result need the general
// path, and so does an Options.IdemFrom other than a plain member name
// (letters, digits, underscores; not kv or correlation): with one, a
// command that writes takes its idempotency key from the first member of
// that name, a string of printable ASCII without escapes within
// Options.MaxKeyLength.
//
// The command is decoded into *cmd, which is cleared first: a command is
// a few hundred bytes, holding pointers, and returning it by value cost a
// copy, with write barriers while the collector marks, for every event.
func (c *Connector) decodeSimple(ev pipeline.Event, cmd *command) (corr corrRef, ok bool) {
	idemFrom := c.opts.IdemFrom
	if idemFrom != "" && (!plainName(idemFrom) || idemFrom == "kv" || idemFrom == "correlation") ||
		c.opts.InputFrom != "" || c.result != nil {
		return corrRef{}, false
	}
	*cmd = command{}
	m := ev.Meta
	if len(m) < 2 || m[0] != '{' || m[len(m)-1] != '}' {
		return corrRef{}, false
	}
	seenKV, seenIdem := false, false
	var idem []byte
	corr.known = true
	for rest := m[1:]; ; {
		name, v, ok := memberName(rest)
		if !ok {
			return corrRef{}, false
		}
		var n int
		switch {
		case name == "kv" && !seenKV:
			n, seenKV = c.simpleKV(v, cmd), true
		case idemFrom != "" && name == idemFrom && !seenIdem:
			// The idempotency key, when a command that writes needs it:
			// a plain string only, as a command's key.
			n, seenIdem = plainString(v), true
			if n > 0 {
				idem = v[1 : n-1]
			} else if n = valueEnd(v); n > 0 && !gjson.ValidBytes(v[:n]) {
				n = 0
			}
		case name == "correlation" && corr.raw == nil:
			if n = valueEnd(v); n > 0 && gjson.ValidBytes(v[:n]) {
				corr.raw = v[:n:n]
			} else {
				n = 0
			}
		default:
			// A later "kv" or "correlation" too: the general path ignores
			// it, but refuses the meta if it is not valid JSON.
			if n = valueEnd(v); n > 0 && !gjson.ValidBytes(v[:n]) {
				n = 0
			}
		}
		if n == 0 || n >= len(v) {
			return corrRef{}, false
		}
		if next := v[n:]; next[0] == ',' {
			rest = next[1:]
			continue
		} else if len(next) != 1 || !seenKV { // one byte left: m's closing brace
			return corrRef{}, false
		}
		break
	}
	if idemFrom != "" && cmd.op.writes() {
		// The general path takes the first member named idemFrom and
		// refuses a missing, empty or non-string one, or one too long.
		if len(idem) == 0 || len(idem) > c.opts.MaxKeyLength {
			return corrRef{}, false
		}
		cmd.idem = bytesString(idem)
	}
	if cmd.op == opPut {
		// As the general path reads the data; it reports what is wrong.
		if len(ev.Data) == 0 {
			return corrRef{}, false
		}
		v, err := canonical(ev.Data)
		if err != nil || string(v) == "null" || len(v) > c.opts.MaxValueBytes {
			return corrRef{}, false
		}
		cmd.value = v
	}
	return corr, true
}

// memberName reads the name of an object's member at the start of b,
// "<name>":, printable ASCII without quote or backslash and no whitespace
// before the colon, and returns it and the bytes after the colon.
func memberName(b []byte) (name string, rest []byte, ok bool) {
	if len(b) == 0 || b[0] != '"' {
		return "", nil, false
	}
	n := 1
	for n < len(b) && b[n] >= 0x20 && b[n] < 0x7f && b[n] != '"' && b[n] != '\\' {
		n++
	}
	if n+1 >= len(b) || b[n] != '"' || b[n+1] != ':' {
		return "", nil, false
	}
	return bytesString(b[1:n]), b[n+2:], true
}

// plainName reports whether the gjson path s names one member of the
// top level, as it is: letters, digits and underscores only.
func plainName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return s != ""
}

// plainString returns the length of the JSON string at the start of b,
// quotes included, when it holds printable ASCII only, without escapes;
// 0 otherwise.
func plainString(b []byte) int {
	if len(b) == 0 || b[0] != '"' {
		return 0
	}
	n := 1
	for n < len(b) && b[n] >= 0x20 && b[n] < 0x7f && b[n] != '"' && b[n] != '\\' {
		n++
	}
	if n == len(b) || b[n] != '"' {
		return 0
	}
	return n + 1
}

// valueEnd returns the length of the JSON value at the start of b, judged
// by its brackets and strings only (the caller validates it), or 0 when b
// does not start with a value that ends before b does. A scalar other
// than a string runs up to the next comma, closing bracket or whitespace.
func valueEnd(b []byte) int {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
			if i >= len(b) {
				return 0
			}
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			if depth--; depth == 0 {
				return i + 1
			}
		case ',', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return i
			}
		}
	}
	return 0
}

// simpleKV decodes the value of meta's "kv" member at the start of v into
// cmd when it is one of the shapes decodeSimple takes, and returns its
// length; 0 when it is not.
func (c *Connector) simpleKV(v []byte, cmd *command) int {
	rest, found := bytes.CutPrefix(v, []byte(`{"`))
	if !found {
		return 0
	}
	name, rest, found := bytes.Cut(rest, []byte(`":"`))
	if !found {
		return 0
	}
	switch string(name) {
	case "get":
		cmd.op = opGet
	case "exists":
		cmd.op = opExists
	case "delete":
		cmd.op = opDelete
	case "put":
		cmd.op = opPut
	case "increment":
		cmd.op = opIncrement
	default:
		return 0
	}
	n := 0
	for n < len(rest) && rest[n] >= 0x20 && rest[n] < 0x7f && rest[n] != '"' && rest[n] != '\\' {
		n++
	}
	if n == 0 || n > c.opts.MaxKeyLength || n == len(rest) || rest[n] != '"' {
		return 0
	}
	cmd.key, cmd.hasKey = bytesString(rest[:n]), true
	rest = rest[n+1:]
	cmd.limit, cmd.byInt = c.opts.MaxScan, 1 // the general path's defaults
	if cmd.op == opIncrement {
		if after, found := bytes.CutPrefix(rest, []byte(`,"by":`)); found {
			by, used, isInt := simpleInt(after)
			if !isInt {
				return 0
			}
			cmd.byInt, rest = by, after[used:]
		}
	}
	if len(rest) == 0 || rest[0] != '}' {
		return 0
	}
	return len(v) - len(rest) + 1
}

// isSpace reports whether b is JSON whitespace.
func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

// simpleInt reads a JSON integer of at most 18 digits (so it fits an
// int64) at the start of b: -?(0|[1-9][0-9]*). It returns the number and
// the bytes it used.
func simpleInt(b []byte) (n int64, used int, ok bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		used = 1
	}
	start := used
	for used < len(b) && b[used] >= '0' && b[used] <= '9' {
		n = n*10 + int64(b[used]-'0')
		used++
	}
	digits := used - start
	if digits == 0 || digits > 18 || digits > 1 && b[start] == '0' {
		return 0, 0, false
	}
	if neg {
		n = -n
	}
	return n, used, true
}
