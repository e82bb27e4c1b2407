package kv

import (
	"bytes"
	"encoding/binary"
)

// Key layout. The command layer owns it; backends see opaque bytes.
//
//	data:        'd' uvarint(len(ns)) ns userKey            -> canonical JSON value
//	expiry:      'x' uvarint(len(ns)) ns be64(expireAt) userKey -> empty
//	idempotency: 'i' ...                                     (reserved)
//
// The uvarint length makes the namespace part prefix-free: no key of one
// namespace starts with another namespace's prefix, so a range clamped to
// [prefix, prefixEnd(prefix)) can never reach a neighbour's keys. The expiry
// index is per namespace, ordered by expiry time, so each connector's
// janitor reclaims its own namespace by scanning its index up to its own
// clock's now.
const (
	tagData   byte = 'd'
	tagExpiry byte = 'x'
	// tagIdempotency is reserved for idempotency keys.
	tagIdempotency byte = 'i'
)

// layout holds the precomputed key prefixes of one namespace.
type layout struct {
	data      []byte // start of the namespace's data keys
	dataEnd   []byte // first key after them
	expiry    []byte // start of the namespace's expiry index
	expiryEnd []byte
}

func newLayout(ns string) layout {
	l := layout{data: nsPrefix(tagData, ns), expiry: nsPrefix(tagExpiry, ns)}
	l.dataEnd = prefixEnd(l.data)
	l.expiryEnd = prefixEnd(l.expiry)
	return l
}

func nsPrefix(tag byte, ns string) []byte {
	p := []byte{tag}
	p = binary.AppendUvarint(p, uint64(len(ns)))
	return append(p, ns...)
}

// prefixEnd returns the smallest key greater than every key starting with
// p, or nil when there is none (p is all 0xff).
func prefixEnd(p []byte) []byte {
	e := bytes.Clone(p)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] < 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	return nil
}

// dataKey appends the data key of userKey to dst.
func (l *layout) dataKey(dst []byte, userKey string) []byte {
	dst = append(dst, l.data...)
	return append(dst, userKey...)
}

// userKey returns the user key of a data key of this namespace.
func (l *layout) userKey(dataKey []byte) string {
	return string(dataKey[len(l.data):])
}

// expiryKey appends the expiry index key of userKey expiring at ms.
func (l *layout) expiryKey(dst []byte, ms int64, userKey []byte) []byte {
	dst = append(dst, l.expiry...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(ms))
	return append(dst, userKey...)
}

// parseExpiryKey splits an expiry index key of this namespace.
func (l *layout) parseExpiryKey(k []byte) (ms int64, userKey []byte, ok bool) {
	rest := k[len(l.expiry):]
	if len(rest) < 8 {
		return 0, nil, false
	}
	return int64(binary.BigEndian.Uint64(rest)), rest[8:], true
}

// prefixRange returns the data key range of user keys starting with prefix,
// clamped to the namespace.
func (l *layout) prefixRange(prefix string) (start, end []byte) {
	start = l.dataKey(nil, prefix)
	end = prefixEnd(start)
	if end == nil || bytes.Compare(end, l.dataEnd) > 0 {
		end = l.dataEnd
	}
	return start, end
}
