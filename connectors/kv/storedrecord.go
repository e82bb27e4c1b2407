package kv

import (
	"encoding/binary"
	"errors"
)

// ErrCorruptRecord reports a stored record that does not decode.
var ErrCorruptRecord = errors.New("corrupt record")

// AppendStoredRecord appends the byte layout backends use to keep a value
// with its expiry in one stored record: one flag byte (0: no expiry, 1: an
// 8-byte big-endian expiry in Unix milliseconds follows), then the value.
// Backends that have no native per-key expiry share it, so a store's bytes
// mean the same whatever backend wrote them.
func AppendStoredRecord(dst, value []byte, expireAt int64) []byte {
	if expireAt == 0 {
		dst = append(dst, 0)
	} else {
		dst = append(dst, 1)
		dst = binary.BigEndian.AppendUint64(dst, uint64(expireAt))
	}
	return append(dst, value...)
}

// ParseStoredRecord splits a record made by AppendStoredRecord. The
// returned value aliases rec.
func ParseStoredRecord(rec []byte) (value []byte, expireAt int64, err error) {
	if len(rec) == 0 {
		return nil, 0, ErrCorruptRecord
	}
	switch rec[0] {
	case 0:
		return rec[1:], 0, nil
	case 1:
		if len(rec) < 9 {
			return nil, 0, ErrCorruptRecord
		}
		return rec[9:], int64(binary.BigEndian.Uint64(rec[1:9])), nil
	default:
		return nil, 0, ErrCorruptRecord
	}
}
