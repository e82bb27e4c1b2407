package kv

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/flowrun/flowrun/pipeline"
)

// ErrResultPath reports an event on which Options.Result cannot be
// written: a part of the path holds something other than an object. The
// command is not run.
var ErrResultPath = errors.New("result path blocked")

// resultPath is a parsed Options.Result: where in the event the result
// object of an enriching connector goes.
type resultPath struct {
	inData bool     // in the data, else in the meta
	path   string   // sjson path below data or meta: "player.stats"
	parts  []string // the same, split
	text   string   // as configured, for messages: "data.player.stats"
}

// parseResultPath checks and parses Options.Result.
func parseResultPath(s string) (*resultPath, error) {
	if s == "" {
		return nil, nil
	}
	bad := func(why string) error {
		return fmt.Errorf("kv: Result (result) %q %s", s, why)
	}
	root, rest, ok := strings.Cut(s, ".")
	if !ok || root != "data" && root != "meta" {
		return nil, bad("must be a path below data or meta, such as data.player or meta.lookup")
	}
	parts := strings.Split(rest, ".")
	for _, p := range parts {
		if p == "" {
			return nil, bad("has an empty part")
		}
		for _, r := range p {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				return nil, bad(fmt.Sprintf("has the character %q: parts are letters, digits, _ and -", r))
			}
		}
	}
	if root == "meta" {
		switch parts[0] {
		case "kv", "error", "correlation":
			return nil, bad(fmt.Sprintf("would overwrite meta.%s, which the connector sets or keeps (choose another name, such as meta.lookup)", parts[0]))
		}
	}
	return &resultPath{inData: root == "data", path: rest, parts: parts, text: s}, nil
}

// check reports, before the command runs, an event on which the result
// cannot be written: data (or meta) that is not an object, or a part of
// the path holding anything but an object. The last part may hold
// anything: the result replaces it.
func (p *resultPath) check(cmd *command, ev pipeline.Event) error {
	doc := ev.Meta
	where := "meta"
	if p.inData {
		doc, where = ev.Data, "data"
	}
	if len(bytes.TrimSpace(doc)) == 0 {
		return nil // null: becomes an object
	}
	cur := gjson.ParseBytes(doc)
	for i := 0; ; i++ {
		if !cur.IsObject() {
			return cmd.errf(ErrResultPath, "cannot write the result at %s: %s is %s, not an object", p.text, where, jsonType(cur))
		}
		if i == len(p.parts)-1 {
			return nil
		}
		cur = cur.Get(gjson.Escape(p.parts[i]))
		where += "." + p.parts[i]
		if !cur.Exists() {
			return nil
		}
	}
}

// appendRows appends the rows of a scan as a JSON array of
// {"key":..,"value":..} objects.
func appendRows(dst []byte, rows []row) []byte {
	dst = append(dst, '[')
	for j, rw := range rows {
		if j > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"key":`...)
		dst = appendString(dst, rw.key)
		dst = append(dst, `,"value":`...)
		dst = append(dst, rw.value...)
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// emitResult sends the outcome of a successful command on an enriching
// connector: the event with its data and meta, meta.kv replaced by the
// out meta.kv ({op, key, found, ...}) and the result object, that object
// plus "value", written at the result path.
func (c *Connector) emitResult(emit pipeline.Emitter, ev pipeline.Event, cmd *command, r *result) {
	found := r.found
	if cmd.op == opScan {
		found = len(r.rows) > 0
	}
	var kvObj []byte
	if cmd.op == opBatch {
		kvObj = append(kvObj, `{"op":"batch","found":true`...)
	} else {
		kvObj = openMeta(kvObj, cmd.op, cmd.key, found)[len(`{"kv":`):]
	}
	if r.next != nil {
		kvObj = append(kvObj, `,"next":`...)
		kvObj = append(kvObj, r.next...)
	}
	if r.replayed {
		kvObj = append(kvObj, `,"replayed":true`...)
	}
	obj := append(bytes.Clone(kvObj), `,"value":`...)
	if cmd.op == opScan {
		obj = appendRows(obj, r.rows)
	} else {
		obj = append(obj, orNull(r.data)...)
	}
	obj = append(obj, '}')
	kvObj = append(kvObj, '}')

	data, meta := ev.Data, bytes.Clone(ev.MetaJSON())
	var err error
	if meta, err = sjson.SetRawBytes(meta, "kv", kvObj); err == nil {
		if c.result.inData {
			base := []byte("{}")
			if len(bytes.TrimSpace(data)) != 0 {
				base = bytes.Clone(data)
			}
			data, err = sjson.SetRawBytes(base, c.result.path, obj)
		} else {
			meta, err = sjson.SetRawBytes(meta, c.result.path, obj)
		}
	}
	if err != nil { // not expected: check accepted the event
		emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, errMeta(cmd, correlation(ev, true),
			cmd.errf(ErrResultPath, "cannot write the result at %s: %v", c.result.text, err))))
		return
	}
	emit.Emit(pipeline.PortOut, ev.Derive(data, meta))
}
