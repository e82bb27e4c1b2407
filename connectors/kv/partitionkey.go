package kv

import (
	"errors"
	"fmt"

	"github.com/flowrun/flowrun/pipeline"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// CommandKeys returns what decides the partition of the command in an
// event's meta (its meta.kv), without decoding the rest: the command's key
// (scan start, or prefix, "" for a null prefix) as the only element of
// keys; for a batch, each element's key, with elems holding each
// element's JSON object. ok is false when meta holds no command whose key
// can be read (the connector reports what is wrong with it); a batch with
// an unreadable element is not ok either.
func CommandKeys(meta []byte) (keys []string, elems []string, ok bool) {
	obj := gjson.GetBytes(meta, "kv")
	if !obj.IsObject() {
		return nil, nil, false
	}
	o, arg := commandArg(obj)
	if o == opNone {
		return nil, nil, false
	}
	if o != opBatch {
		k, ok := keyOf(o, arg)
		if !ok {
			return nil, nil, false
		}
		return []string{k}, nil, true
	}
	if !arg.IsArray() {
		return nil, nil, false
	}
	ok = true
	arg.ForEach(func(_, el gjson.Result) bool {
		eo, earg := commandArg(el)
		k, kok := keyOf(eo, earg)
		if eo == opNone || eo == opBatch || !kok {
			ok = false
			return false
		}
		keys = append(keys, k)
		elems = append(elems, el.Raw)
		return true
	})
	return keys, elems, ok
}

// commandArg returns the first field of obj naming a command, and its
// value.
func commandArg(obj gjson.Result) (op, gjson.Result) {
	var (
		o   op
		arg gjson.Result
	)
	if !obj.IsObject() {
		return opNone, arg
	}
	obj.ForEach(func(k, v gjson.Result) bool {
		if p := parseOp(k.Str); p != opNone {
			o, arg = p, v
			return false
		}
		return true
	})
	return o, arg
}

// keyOf returns the key a command's argument names.
func keyOf(o op, arg gjson.Result) (string, bool) {
	switch {
	case arg.Type == gjson.String:
		return arg.Str, true
	case arg.Type == gjson.Null && o.keyKind() == argPrefix:
		return "", true
	}
	return "", false
}

// ErrNoCommandKey reports an event whose meta.kv holds no command with a
// readable key, when no partition key expression was given.
var ErrNoCommandKey = errors.New("meta.kv has no command with a key")

// PartitionKeys returns the partition keys of the command in ev, one per
// key it names (a batch's elements, in order). Without an expression
// (key nil) they are the command's keys (CommandKeys). With one, key is
// evaluated on ev as the expression sees it: meta.kv.key set to the
// command's key, and for a batch once per element with meta.kv the
// element (and its key); on an event without a readable command, once on
// ev itself. The partitioned kv connector and a partitioned sink use this
// one reading, so that both place an event in the same partition.
func PartitionKeys(ev pipeline.Event, key func(pipeline.Event) (string, error)) ([]string, error) {
	keys, elems, ok := CommandKeys(ev.Meta)
	if key == nil {
		if !ok {
			return nil, fmt.Errorf("%w (%.100s)", ErrNoCommandKey, gjson.GetBytes(ev.Meta, "kv").Raw)
		}
		return keys, nil
	}
	if !ok {
		k, err := key(ev)
		if err != nil {
			return nil, err
		}
		return []string{k}, nil
	}
	for j := range keys {
		k, err := key(withKey(ev, elems, j, keys[j]))
		if err != nil {
			return nil, err
		}
		keys[j] = k
	}
	return keys, nil
}

// withKey returns ev as a partition key expression sees it: with
// meta.kv.key set to key, and for a batch (elems set) meta.kv replaced by
// element j.
func withKey(ev pipeline.Event, elems []string, j int, key string) pipeline.Event {
	meta := append([]byte(nil), ev.MetaJSON()...)
	if elems != nil {
		meta, _ = sjson.SetRawBytes(meta, "kv", []byte(elems[j]))
	}
	meta, _ = sjson.SetBytes(meta, "kv.key", key)
	return ev.Derive(ev.Data, meta)
}
