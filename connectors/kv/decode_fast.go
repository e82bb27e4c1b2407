package kv

import (
	"bytes"

	"github.com/flowrun/flowrun/pipeline"
)

// decodeSimple decodes, without parsing the meta as a whole, the commands
// most events carry: exactly
//
//	{"kv":{"<op>":"<key>"}}            op: get, exists, delete, put
//	{"kv":{"increment":"<key>"}}
//	{"kv":{"increment":"<key>","by":<integer of at most 18 digits>}}
//
// with nothing else in the meta, no whitespace, and a key of printable
// ASCII without quote or backslash within Options.MaxKeyLength. Such a meta
// is valid JSON, holds no correlation, and decodes to exactly the command
// the general path (decodeEvent) would give, which
// TestDecodeSimpleMatchesGeneral and FuzzDecodeSimple check. For anything
// else, including every input the general path would refuse, ok is false
// and the caller takes the general path. Options.IdemFrom and
// Options.Result need the general path.
func (c *Connector) decodeSimple(ev pipeline.Event) (cmd command, ok bool) {
	if c.opts.IdemFrom != "" || c.result != nil {
		return command{}, false
	}
	m := ev.Meta
	rest, found := bytes.CutPrefix(m, []byte(`{"kv":{"`))
	if !found {
		return command{}, false
	}
	name, rest, found := bytes.Cut(rest, []byte(`":"`))
	if !found {
		return command{}, false
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
		return command{}, false
	}
	n := 0
	for n < len(rest) && rest[n] >= 0x20 && rest[n] < 0x7f && rest[n] != '"' && rest[n] != '\\' {
		n++
	}
	if n == 0 || n > c.opts.MaxKeyLength || n == len(rest) || rest[n] != '"' {
		return command{}, false
	}
	cmd.key, cmd.hasKey = bytesString(rest[:n]), true
	rest = rest[n+1:]
	cmd.limit, cmd.byInt = c.opts.MaxScan, 1 // the general path's defaults
	if cmd.op == opIncrement {
		if after, found := bytes.CutPrefix(rest, []byte(`,"by":`)); found {
			by, used, isInt := simpleInt(after)
			if !isInt {
				return command{}, false
			}
			cmd.byInt, rest = by, after[used:]
		}
	}
	if string(rest) != "}}" {
		return command{}, false
	}
	if cmd.op == opPut {
		// As the general path reads the data; it reports what is wrong.
		if len(ev.Data) == 0 {
			return command{}, false
		}
		v, err := canonical(ev.Data)
		if err != nil || string(v) == "null" || len(v) > c.opts.MaxValueBytes {
			return command{}, false
		}
		cmd.value = v
	}
	return cmd, true
}

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
