package kv

import "unsafe"

// resultChunk is the size of the chunks a resultArena carves results
// from: a few dozen small results (values of ~100 bytes, out metas of
// ~90) per allocation, while a result kept alone keeps at most this much
// memory alive.
const resultChunk = 4096

// resultArena hands out byte slices for results (the values a command
// returns, the metas of the events emitted), carved from shared chunks,
// so that a slice of events costs a few allocations instead of one or two
// per event. Memory handed out is never handed out again: a slice stays
// valid, and keeps its chunk alive, as long as anyone holds it, so results
// may be passed on and kept like any other allocation. The zero value is
// ready; one goroutine at a time may use it.
type resultArena struct {
	free []byte // the current chunk; bytes past len are not handed out yet
}

// alloc returns an empty slice with capacity n. Appending up to n bytes
// stays in the arena; appending more moves the slice to its own memory,
// as append does.
func (a *resultArena) alloc(n int) []byte {
	if n > resultChunk/4 {
		return make([]byte, 0, n)
	}
	l := len(a.free)
	if cap(a.free)-l < n {
		a.free, l = make([]byte, 0, resultChunk), 0
	}
	a.free = a.free[:l+n]
	return a.free[l : l : l+n]
}

// shrink returns b, the slice alloc handed out last with bytes appended
// to it, with its capacity cut to its length, and gives the room past its
// length back to the arena for the next alloc. A result is given room for
// the largest it could be (an out meta for any command, 20 digits for an
// integer) and usually fills half of it; without shrink the rest would be
// allocated for nothing, and the garbage collector runs by bytes
// allocated. A b that is not the last slice handed out, or that moved to
// its own memory when appended past its capacity, is only cut.
func (a *resultArena) shrink(b []byte) []byte {
	end, spare := len(a.free), cap(b)-len(b)
	if spare > 0 && spare <= end && unsafe.SliceData(b[len(b):cap(b)]) == unsafe.SliceData(a.free[end-spare:end]) {
		a.free = a.free[:end-spare]
	}
	return b[:len(b):len(b)]
}

// clone returns a copy of b (nil for nil b), as bytes.Clone does.
func (a *resultArena) clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append(a.alloc(len(b)), b...)
}
