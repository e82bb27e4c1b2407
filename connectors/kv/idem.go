package kv

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"
	"math"
)

// Idempotency keys turn at-least-once delivery into exactly-once effects. A
// write command carrying "idem": KEY records KEY, in the same transaction as
// its writes, with what the command answered and a fingerprint of the
// command. A later command with the same KEY (a redelivery) is not applied
// again: it answers with the recorded result, marked "replayed". The record
// is kept for Options.IdemRetention, then reclaimed like an expired key.
//
// A command that fails records nothing (it left the store as it was), so
// its redelivery runs again. A different command reusing a recorded KEY is
// refused with ErrIdemConflict rather than answered with a result that is
// not its own.

// idemRecord layout: version, flags, be64 fingerprint, result data.
const (
	idemVersion byte = 1

	idemFound     byte = 1 << 0 // result.found
	idemDataValue byte = 1 << 1 // result data is the command's own value, not stored again

	idemHeader = 2 + 8
)

func appendIdemRecord(dst []byte, fp uint64, r *result, cmd *command) []byte {
	var flags byte
	if r.found {
		flags |= idemFound
	}
	sameAsValue := cmd.value != nil && bytes.Equal(r.data, cmd.value)
	if sameAsValue {
		flags |= idemDataValue
	}
	dst = append(dst, idemVersion, flags)
	dst = binary.BigEndian.AppendUint64(dst, fp)
	if !sameAsValue {
		dst = append(dst, r.data...)
	}
	return dst
}

// parseIdemRecord decodes a record written by appendIdemRecord; ok is false
// for bytes that are not one.
func parseIdemRecord(rec []byte, cmd *command) (fp uint64, r result, ok bool) {
	if len(rec) < idemHeader || rec[0] != idemVersion {
		return 0, result{}, false
	}
	flags := rec[1]
	fp = binary.BigEndian.Uint64(rec[2:idemHeader])
	r.found = flags&idemFound != 0
	if flags&idemDataValue != 0 {
		r.data = cmd.value
	} else {
		r.data = bytes.Clone(rec[idemHeader:])
	}
	r.replayed = true
	return fp, r, true
}

// fingerprint hashes what a command would do, so that a reused idempotency
// key can be told from a redelivery. Expiries are hashed as given (a ttl,
// not the instant it resolves to), so a redelivery matches.
func fingerprint(cmd *command) uint64 {
	h := fnv.New64a()
	var scratch [8]byte
	num := func(n uint64) {
		binary.BigEndian.PutUint64(scratch[:], n)
		h.Write(scratch[:])
	}
	str := func(b []byte, present bool) {
		if !present {
			num(math.MaxUint64)
			return
		}
		num(uint64(len(b)))
		h.Write(b)
	}
	var walk func(c *command)
	walk = func(c *command) {
		num(uint64(c.op))
		str([]byte(c.key), c.hasKey)
		str(c.value, c.value != nil)
		str(c.old, c.old != nil)
		num(uint64(c.byInt))
		num(math.Float64bits(c.byFloat))
		num(uint64(c.ttlMs))
		num(uint64(c.expireAt))
		// Flags added later are hashed only when set, so the fingerprints
		// of records stored before them stay the same.
		if c.refresh {
			num(1 << 62)
		}
		if c.keepTTL {
			num(1<<62 + 1)
		}
		num(uint64(len(c.sub)))
		for i := range c.sub {
			walk(&c.sub[i])
		}
	}
	walk(cmd)
	return h.Sum64()
}

// runIdem runs cmd, or replays its recorded result when its idempotency key
// has been seen within the retention.
func (x *execer) runIdem(cmd *command) (result, error) {
	if cmd.idem == "" {
		return x.run(cmd)
	}
	ik := x.c.layout.idemKey(nil, cmd.idem)
	rec, exp, found, err := x.tx.Get(ik)
	if err != nil {
		return result{}, err
	}
	fp := fingerprint(cmd)
	if found && !x.expired(exp) {
		stored, r, ok := parseIdemRecord(rec, cmd)
		if !ok {
			return result{}, cmd.errf(ErrCorruptRecord, "idempotency record of %s", shortKey(cmd.idem))
		}
		if stored != fp {
			return result{}, cmd.errf(ErrIdemConflict, "idem %s was recorded for a different command", shortKey(cmd.idem))
		}
		return r, nil
	}
	r, err := x.run(cmd)
	if err != nil {
		return r, err
	}
	newExp := x.now + x.c.opts.IdemRetention.Milliseconds()
	if found && exp != 0 && exp != newExp {
		if err := x.tx.Delete(x.c.layout.idemExpiryKey(nil, exp, []byte(cmd.idem))); err != nil {
			return result{}, err
		}
	}
	if err := x.tx.Set(ik, appendIdemRecord(nil, fp, &r, cmd), newExp); err != nil {
		return result{}, err
	}
	// The index entry carries the record's expiry too, so a backend that
	// removes expired records itself (etcd leases) removes both.
	if err := x.tx.Set(x.c.layout.idemExpiryKey(nil, newExp, []byte(cmd.idem)), nil, newExp); err != nil {
		return result{}, err
	}
	return r, nil
}
