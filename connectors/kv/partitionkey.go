package kv

import "github.com/tidwall/gjson"

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
