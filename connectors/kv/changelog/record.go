// Package changelog replicates the commit groups of one partition of a kv
// store to a NATS JetStream stream and restores a store from it.
//
// A Record is one commit group: the writes it made at the level of
// kv.Txn (Set with expiry, Delete, DeleteRange), the input position it
// covers and the writer's lease epoch. A Writer appends records to the
// partition's stream, each publish carrying the stream sequence the writer
// expects to be the last one, so that once another writer has appended (a
// new owner's fence record), every append of the old one is refused with
// ErrFenced. Restore replays a stream into any kv.Backend, applying each
// record as one transaction, and TakeOver combines restoring and fencing
// for a new owner. A store replicated through a Writer records the
// Position of each group with the group, so that a new owner's CatchUp
// replays only the records after it when the changelog continues the
// store; Checkpoint writes a store's live keys into the stream so that
// the log below them can be purged. See docs/scaling.md for where this
// sits in a partitioned flow.
package changelog

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Op is the kind of one Write.
type Op = kv.WriteOp

// Write kinds, as kv.Txn names them.
const (
	OpSet         = kv.WriteSet         // Set(Key, Value, ExpireAt)
	OpDelete      = kv.WriteDelete      // Delete(Key)
	OpDeleteRange = kv.WriteDeleteRange // DeleteRange(Key, End)
)

// Write is one write of a commit group, at the level of kv.Txn: keys are
// the store's keys (namespaced), values its canonical values, ExpireAt a
// Unix time in milliseconds (0: never expires). A deletion is a tombstone:
// it is replayed like any other write.
type Write = kv.Write

// Record is one commit group of one partition: applied by Restore as one
// atomic transaction, in the order of its Writes.
type Record struct {
	// Writes are the group's writes as the store committed them
	// (pebblestore.Replicator): in the order they were made, or, in a
	// large group, in key order with only the last write of each key;
	// applied in this order, either gives the same state.
	Writes []Write
	// Input is the highest input position (the partition's input stream
	// sequence) whose commands are in the group; 0 when none is known.
	Input uint64
	// Epoch is the writer's lease epoch, for diagnostics: fencing relies
	// on stream sequences, not on it.
	Epoch uint64
	// Fence marks the record a new owner appends when it takes the
	// partition over; it has no writes.
	Fence bool
}

// Set appends a Set write. The record keeps key and value: the caller must
// not modify them until the record is appended.
func (r *Record) Set(key, value []byte, expireAt int64) {
	r.Writes = append(r.Writes, Write{Op: OpSet, Key: key, Value: value, ExpireAt: expireAt})
}

// Delete appends a Delete write (a tombstone for key).
func (r *Record) Delete(key []byte) {
	r.Writes = append(r.Writes, Write{Op: OpDelete, Key: key})
}

// DeleteRange appends a DeleteRange write of [start, end).
func (r *Record) DeleteRange(start, end []byte) {
	r.Writes = append(r.Writes, Write{Op: OpDeleteRange, Key: start, End: end})
}

// ErrCorrupt reports a changelog message or record that does not decode;
// the error names the stream sequence when it comes from Restore.
var ErrCorrupt = errors.New("changelog record is corrupt")

// recordVersion is the first byte of every encoded record. A reader
// refuses other versions rather than misreading them.
const recordVersion = 1

const flagFence = 1

// AppendRecord appends r's encoding to dst and returns the extended
// slice: a version byte, a flags byte, uvarints Input and Epoch, the
// number of writes, then each write as its Op byte and length-prefixed
// fields (Value and a zigzag varint ExpireAt for OpSet, End for
// OpDeleteRange).
func AppendRecord(dst []byte, r *Record) []byte {
	var flags byte
	if r.Fence {
		flags |= flagFence
	}
	dst = append(dst, recordVersion, flags)
	dst = binary.AppendUvarint(dst, r.Input)
	dst = binary.AppendUvarint(dst, r.Epoch)
	dst = binary.AppendUvarint(dst, uint64(len(r.Writes)))
	for _, w := range r.Writes {
		dst = append(dst, byte(w.Op))
		dst = appendBytes(dst, w.Key)
		switch w.Op {
		case OpSet:
			dst = appendBytes(dst, w.Value)
			dst = binary.AppendVarint(dst, w.ExpireAt)
		case OpDeleteRange:
			dst = appendBytes(dst, w.End)
		}
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}

// DecodeRecord decodes an encoding made by AppendRecord. The Writes'
// slices point into b. It fails with ErrCorrupt on anything else.
func DecodeRecord(b []byte) (Record, error) {
	d := decoder{b: b}
	var r Record
	if v := d.byte(); v != recordVersion {
		if d.err != nil {
			return Record{}, d.err
		}
		return Record{}, fmt.Errorf("%w: version %d, this build reads version %d", ErrCorrupt, v, recordVersion)
	}
	flags := d.byte()
	r.Fence = flags&flagFence != 0
	r.Input = d.uvarint()
	r.Epoch = d.uvarint()
	n := d.uvarint()
	// Every write takes at least two bytes: n beyond that is corrupt, and
	// must not size an allocation.
	if d.err == nil && n > uint64(len(d.b))/2 {
		return Record{}, fmt.Errorf("%w: %d writes in %d bytes", ErrCorrupt, n, len(d.b))
	}
	if n > 0 {
		r.Writes = make([]Write, 0, n)
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		w := Write{Op: Op(d.byte())}
		w.Key = d.bytes()
		switch w.Op {
		case OpSet:
			w.Value = d.bytes()
			w.ExpireAt = d.varint()
		case OpDelete:
		case OpDeleteRange:
			w.End = d.bytes()
		default:
			if d.err == nil {
				d.err = fmt.Errorf("%w: write %d has unknown op %d", ErrCorrupt, i, uint8(w.Op))
			}
		}
		r.Writes = append(r.Writes, w)
	}
	if d.err != nil {
		return Record{}, d.err
	}
	if len(d.b) != 0 {
		return Record{}, fmt.Errorf("%w: %d bytes after the last write", ErrCorrupt, len(d.b))
	}
	return r, nil
}

// decoder reads the encoding; the first failure sticks in err.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated %s", ErrCorrupt, what)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("byte")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("bytes")
		return nil
	}
	b := d.b[:n:n]
	d.b = d.b[n:]
	return b
}
