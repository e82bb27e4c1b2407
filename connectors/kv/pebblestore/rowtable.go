package pebblestore

import (
	"hash/maphash"
	"unsafe"
)

// rowTable is a shard's index of its entries: an open-addressing hash
// table with linear probing whose slots hold a key's full 64-bit hash and
// its entry. It replaces a Go map[string]*rowEntry on the hot path of
// every cached read: the key is hashed once (the same hash chooses the
// shard), a probe compares whole hashes in one flat array, usually within
// one cache line, and only the slot whose hash matches has its entry's key
// compared, in the memory the record is then copied from. A map hashed the
// key a second time and kept its control bytes and its slots apart, one more
// memory access per hit at 100,000 keys. Deletion shifts the following
// slots back (no tombstones), so a probe ends at the first empty slot.
type rowTable struct {
	slots []rowSlot // len is a power of two, or 0
	n     int       // slots in use
}

// rowSlot is one slot of a rowTable; hash 0 marks it empty (rowHash never
// returns 0).
type rowSlot struct {
	hash uint64
	e    *rowEntry
}

// rowTableMinSlots is the size of a table's first array.
const rowTableMinSlots = 64

// rowHash is the hash of key the cache uses, never 0.
func rowHash(seed maphash.Seed, key []byte) uint64 {
	if h := maphash.Bytes(seed, key); h != 0 {
		return h
	}
	return 1 << 63
}

// rowHashString is rowHash of a key held as a string.
func rowHashString(seed maphash.Seed, key string) uint64 {
	if h := maphash.String(seed, key); h != 0 {
		return h
	}
	return 1 << 63
}

// home is the first slot a probe for hash h looks at. The low bits of h
// chose the shard, so they are the same for every key of the table: the
// slot comes from the high bits.
func (t *rowTable) home(h uint64) int {
	return int(h>>4) & (len(t.slots) - 1)
}

// find returns the entry of key, whose hash is h, or nil.
func (t *rowTable) find(h uint64, key []byte) *rowEntry {
	if len(t.slots) == 0 {
		return nil
	}
	mask := len(t.slots) - 1
	for i := t.home(h); ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.hash == h && s.e.key() == unsafe.String(unsafe.SliceData(key), len(key)) {
			return s.e
		}
		if s.hash == 0 {
			return nil
		}
	}
}

// insert adds e, whose key hashes to h and is not in the table.
func (t *rowTable) insert(h uint64, e *rowEntry) {
	if (t.n+1)*4 > len(t.slots)*3 { // keep the table at most 3/4 full
		t.grow()
	}
	mask := len(t.slots) - 1
	i := t.home(h)
	for t.slots[i].hash != 0 {
		i = (i + 1) & mask
	}
	t.slots[i] = rowSlot{hash: h, e: e}
	t.n++
}

// grow doubles the slots (or makes the first ones) and places every entry
// again.
func (t *rowTable) grow() {
	old := t.slots
	t.slots = make([]rowSlot, max(2*len(old), rowTableMinSlots))
	mask := len(t.slots) - 1
	for _, s := range old {
		if s.hash == 0 {
			continue
		}
		i := t.home(s.hash)
		for t.slots[i].hash != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = s
	}
}

// delete removes e, whose key hashes to h, if the table holds it, and
// moves back the slots after it that a probe would otherwise no longer
// reach past the freed one.
func (t *rowTable) delete(h uint64, e *rowEntry) {
	if len(t.slots) == 0 {
		return
	}
	mask := len(t.slots) - 1
	i := t.home(h)
	for t.slots[i].e != e {
		if t.slots[i].hash == 0 {
			return
		}
		i = (i + 1) & mask
	}
	t.n--
	// i is free; find a later slot of the run that may move into it: one
	// whose home is not cyclically within (i, j].
	for j := i; ; {
		t.slots[i] = rowSlot{}
		for {
			j = (j + 1) & mask
			s := t.slots[j]
			if s.hash == 0 {
				return
			}
			k := t.home(s.hash)
			if (j-k)&mask >= (j-i)&mask {
				t.slots[i] = s
				i = j
				break
			}
		}
	}
}

// reset empties the table, keeping its slots' memory.
func (t *rowTable) reset() {
	clear(t.slots)
	t.n = 0
}

// len returns the number of entries in the table.
func (t *rowTable) len() int { return t.n }
