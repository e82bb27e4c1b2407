package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Key layout. The command layer owns it; backends see opaque bytes.
//
//	data:         'd' uvarint(len(ns)) ns userKey                -> canonical JSON value
//	expiry:       'x' uvarint(len(ns)) ns be64(expireAt) userKey -> empty
//	idempotency:  'i' uvarint(len(ns)) ns idemKey                -> idemRecord (see idem.go)
//	idem expiry:  'y' uvarint(len(ns)) ns be64(expireAt) idemKey -> empty
//
// The uvarint length makes the namespace part prefix-free: no key of one
// namespace starts with another namespace's prefix, so a range clamped to
// [prefix, prefixEnd(prefix)) can never reach a neighbour's keys. The expiry
// index is per namespace, ordered by expiry time, so each connector's
// janitor reclaims its own namespace by scanning its index up to its own
// clock's now.
const (
	tagData        byte = 'd'
	tagExpiry      byte = 'x'
	tagIdempotency byte = 'i'
	tagIdemExpiry  byte = 'y'
)

// layout holds the precomputed key prefixes of one namespace.
type layout struct {
	data      []byte // start of the namespace's data keys
	dataEnd   []byte // first key after them
	expiry    []byte // start of the namespace's expiry index
	expiryEnd []byte
	// Idempotency records live apart from data, so scans, counts and
	// clears never see them, with an expiry index of their own.
	idem       []byte
	idemExpiry []byte
}

func newLayout(ns string) layout {
	l := layout{
		data:       nsPrefix(tagData, ns),
		expiry:     nsPrefix(tagExpiry, ns),
		idem:       nsPrefix(tagIdempotency, ns),
		idemExpiry: nsPrefix(tagIdemExpiry, ns),
	}
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
	return appendIndexKey(dst, l.expiry, ms, userKey)
}

// idemKey appends the key of the idempotency record of idem.
func (l *layout) idemKey(dst []byte, idem string) []byte {
	dst = append(dst, l.idem...)
	return append(dst, idem...)
}

// idemExpiryKey appends the index key of an idempotency record expiring at
// ms.
func (l *layout) idemExpiryKey(dst []byte, ms int64, idem []byte) []byte {
	return appendIndexKey(dst, l.idemExpiry, ms, idem)
}

// appendIndexKey appends an expiry index key: prefix, be64(ms), key.
func appendIndexKey(dst, prefix []byte, ms int64, key []byte) []byte {
	dst = append(dst, prefix...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(ms))
	return append(dst, key...)
}

// parseIndexKey splits an expiry index key starting with prefix.
func parseIndexKey(prefix, k []byte) (ms int64, key []byte, ok bool) {
	rest := k[len(prefix):]
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

// StoreKeyKind is what a key of a backend holds, in the command layer's
// key layout (see ParseStoreKey).
type StoreKeyKind int

// Kinds of store keys.
const (
	// StoreKeyData is a user key's record.
	StoreKeyData StoreKeyKind = iota + 1
	// StoreKeyExpiry is the expiry index entry of a user key.
	StoreKeyExpiry
	// StoreKeyIdem is an idempotency record; its Key is the idempotency
	// key, not a user key.
	StoreKeyIdem
	// StoreKeyIdemExpiry is the expiry index entry of an idempotency
	// record.
	StoreKeyIdemExpiry
)

// StoreKey is a backend key taken apart by ParseStoreKey.
type StoreKey struct {
	Kind      StoreKeyKind
	Namespace string
	// Key is the user key (data and expiry entries) or the idempotency
	// key (idempotency records and their expiry entries).
	Key []byte
}

// ErrNotStoreKey reports a backend key outside the command layer's key
// layout.
var ErrNotStoreKey = errors.New("not a kv store key")

// ParseStoreKey takes a backend key written by a kv Connector apart: its
// kind, namespace and user or idempotency key (sharing k's memory). Tools
// that move records between stores by key (re-partitioning) use it; a
// key that is not in the layout fails with ErrNotStoreKey.
func ParseStoreKey(k []byte) (StoreKey, error) {
	if len(k) < 2 {
		return StoreKey{}, fmt.Errorf("%w: %q", ErrNotStoreKey, k)
	}
	var kind StoreKeyKind
	switch k[0] {
	case tagData:
		kind = StoreKeyData
	case tagExpiry:
		kind = StoreKeyExpiry
	case tagIdempotency:
		kind = StoreKeyIdem
	case tagIdemExpiry:
		kind = StoreKeyIdemExpiry
	default:
		return StoreKey{}, fmt.Errorf("%w: %q (tag %q)", ErrNotStoreKey, k, k[0])
	}
	n, w := binary.Uvarint(k[1:])
	if w <= 0 || uint64(len(k)-1-w) < n {
		return StoreKey{}, fmt.Errorf("%w: %q (namespace length)", ErrNotStoreKey, k)
	}
	prefix := k[:1+w+int(n)]
	sk := StoreKey{Kind: kind, Namespace: string(k[1+w : 1+w+int(n)]), Key: k[len(prefix):]}
	if kind == StoreKeyExpiry || kind == StoreKeyIdemExpiry {
		_, key, ok := parseIndexKey(prefix, k)
		if !ok {
			return StoreKey{}, fmt.Errorf("%w: %q (expiry entry)", ErrNotStoreKey, k)
		}
		sk.Key = key
	}
	return sk, nil
}
