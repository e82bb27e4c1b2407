package pebblestore

// hashHeads maps a key hash to the newest unappliedIndex entry with that
// hash. It is an open-addressing table with linear probing over a slice
// without pointers: a lookup or an assignment costs a fraction of a Go
// map's for the thousands of writes of a group, and emptying it for the
// next group bumps a generation instead of clearing it. A deleted hash
// keeps its slot with no entry (idx -1), as an absent one would read.
type hashHeads struct {
	slots []headSlot // power-of-two length, or none
	gen   uint32     // slots of another generation are empty; never 0 once slots exist
	used  int        // slots of this generation
}

type headSlot struct {
	hash uint64
	idx  int32 // the newest entry with hash, -1 for none
	gen  uint32
}

const (
	// minHeadSlots is the size of a table's first allocation.
	minHeadSlots = 256
	// maxKeptHeadSlots is the largest table kept from one group to the
	// next (1 MiB): one huge group does not pin its table.
	maxKeptHeadSlots = 1 << 16
)

// reset empties the table.
func (t *hashHeads) reset() {
	if len(t.slots) > maxKeptHeadSlots {
		t.slots, t.gen = nil, 0
	}
	t.used = 0
	t.gen++
	if t.gen == 0 { // wrapped: old slots of generation 0 would look current
		clear(t.slots)
		t.gen = 1
	}
}

// get returns the entry of hash h; ok is false when there is none.
func (t *hashHeads) get(h uint64) (idx int32, ok bool) {
	if len(t.slots) == 0 {
		return -1, false
	}
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.gen != t.gen {
			return -1, false
		}
		if s.hash == h {
			return s.idx, s.idx >= 0
		}
	}
}

// touch reads the first slot a lookup of each hash of hs would read and
// returns a byte of what it read: a batch of such loads, which do not
// depend on one another, brings the slots into the processor's caches in
// about the time of one.
func (t *hashHeads) touch(hs []uint64) byte {
	var sink uint32
	if mask := len(t.slots) - 1; mask > 0 {
		for _, h := range hs {
			sink ^= t.slots[int(h)&mask].gen
		}
	}
	return byte(sink)
}

// set makes idx the entry of hash h; -1 deletes it.
func (t *hashHeads) set(h uint64, idx int32) {
	if 2*(t.used+1) > len(t.slots) {
		t.grow()
	}
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.gen != t.gen {
			*s = headSlot{hash: h, idx: idx, gen: t.gen}
			t.used++
			return
		}
		if s.hash == h {
			s.idx = idx
			return
		}
	}
}

// grow doubles the table (or makes its first one) and moves the current
// slots into it.
func (t *hashHeads) grow() {
	old, gen := t.slots, t.gen
	t.slots = make([]headSlot, max(minHeadSlots, 2*len(old)))
	if t.gen == 0 {
		t.gen = 1
	}
	t.used = 0
	for _, s := range old {
		if s.gen == gen && s.idx >= 0 {
			t.set(s.hash, s.idx)
		}
	}
}
