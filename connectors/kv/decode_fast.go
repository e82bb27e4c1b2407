package kv

import (
	"bytes"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// decodeSimple decodes, without parsing the meta as a whole, the commands
// most events carry: exactly
//
//	{"kv":{"<op>":"<key>"}}            op: get, exists, delete, put
//	{"kv":{"increment":"<key>"}}
//	{"kv":{"increment":"<key>","by":<integer of at most 18 digits>}}
//
// with nothing else in the meta but, last, a "correlation" (any valid
// JSON value not starting or ending with whitespace), no whitespace
// elsewhere, and a key of printable ASCII without quote or backslash within
// Options.MaxKeyLength. Such a meta is valid JSON, and decodes to exactly
// the command and correlation the general path (decodeEvent) would give,
// which
// TestDecodeSimpleMatchesGeneral and FuzzDecodeSimple check. For anything
// else, including every input the general path would refuse, ok is false
// and the caller takes the general path. Options.IdemFrom,
// Options.InputFrom and Options.Result need the general path.
//
// The command is decoded into *cmd, which is cleared first: a command is
// a few hundred bytes, holding pointers, and returning it by value cost a
// copy, with write barriers while the collector marks, for every event.
func (c *Connector) decodeSimple(ev pipeline.Event, cmd *command) (corr corrRef, ok bool) {
	if c.opts.IdemFrom != "" || c.opts.InputFrom != "" || c.result != nil {
		return corrRef{}, false
	}
	*cmd = command{}
	m := ev.Meta
	rest, found := bytes.CutPrefix(m, []byte(`{"kv":{"`))
	if !found {
		return corrRef{}, false
	}
	name, rest, found := bytes.Cut(rest, []byte(`":"`))
	if !found {
		return corrRef{}, false
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
		return corrRef{}, false
	}
	n := 0
	for n < len(rest) && rest[n] >= 0x20 && rest[n] < 0x7f && rest[n] != '"' && rest[n] != '\\' {
		n++
	}
	if n == 0 || n > c.opts.MaxKeyLength || n == len(rest) || rest[n] != '"' {
		return corrRef{}, false
	}
	cmd.key, cmd.hasKey = bytesString(rest[:n]), true
	rest = rest[n+1:]
	cmd.limit, cmd.byInt = c.opts.MaxScan, 1 // the general path's defaults
	if cmd.op == opIncrement {
		if after, found := bytes.CutPrefix(rest, []byte(`,"by":`)); found {
			by, used, isInt := simpleInt(after)
			if !isInt {
				return corrRef{}, false
			}
			cmd.byInt, rest = by, after[used:]
		}
	}
	corr.known = true
	switch {
	case string(rest) == "}}":
	case bytes.HasPrefix(rest, []byte(`},"correlation":`)) && rest[len(rest)-1] == '}':
		v := rest[len(`},"correlation":`) : len(rest)-1]
		if len(v) == 0 || isSpace(v[0]) || isSpace(v[len(v)-1]) || !gjson.ValidBytes(v) {
			return corrRef{}, false
		}
		corr.raw = v[:len(v):len(v)]
	default:
		return corrRef{}, false
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
