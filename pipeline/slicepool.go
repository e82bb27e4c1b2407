package pipeline

import (
	"math/bits"
	"sync"
	"unsafe"
)

// eventSize is the size of an Event in a slice's backing array.
const eventSize = int(unsafe.Sizeof(Event{}))

// The pool keeps slices of 2^slicePoolMinShift to
// 2^(slicePoolMinShift+slicePoolClasses-1) events, and at most
// slicePoolClassBytes of backing arrays per size.
const (
	slicePoolMinShift   = 4 // 16 events
	slicePoolClasses    = 10
	slicePoolClassBytes = 1 << 20
)

// slicePool keeps the backing arrays of event slices the graph is done
// with, so that the slices emitters fill and merges make next reuse them.
// At hundreds of thousands of events a second, fresh slices are most of
// what a graph allocates, and the garbage collector runs by bytes
// allocated: each of its cycles takes processor time from the flow, and
// on two cores shows up as a burst of latency. A slice is kept only when
// its capacity is one of the pool's sizes, so slices made elsewhere (a
// processor's own) pass through untouched. The zero value is ready; it is
// safe for concurrent use.
type slicePool struct {
	mu   sync.Mutex
	free [slicePoolClasses][][]Event
}

// slicePoolClass returns the class of the smallest pooled size holding n
// events, and false when n is larger than the largest.
func slicePoolClass(n int) (int, bool) {
	if n <= 1<<slicePoolMinShift {
		return 0, true
	}
	c := bits.Len(uint(n-1)) - slicePoolMinShift
	return c, c < slicePoolClasses
}

// get returns an empty slice with room for at least n events.
func (p *slicePool) get(n int) []Event {
	c, ok := slicePoolClass(n)
	if !ok {
		return make([]Event, 0, n)
	}
	p.mu.Lock()
	if l := len(p.free[c]); l > 0 {
		s := p.free[c][l-1]
		p.free[c][l-1] = nil
		p.free[c] = p.free[c][:l-1]
		p.mu.Unlock()
		return s
	}
	p.mu.Unlock()
	return make([]Event, 0, 1<<(c+slicePoolMinShift))
}

// put gives s back once nothing refers to it any more. Its events are
// cleared first, so that a kept array holds no event's bytes alive.
func (p *slicePool) put(s []Event) {
	c, ok := slicePoolClass(cap(s))
	if !ok || cap(s) != 1<<(c+slicePoolMinShift) {
		return
	}
	clear(s)
	keep := max(4, slicePoolClassBytes/(cap(s)*eventSize))
	p.mu.Lock()
	if len(p.free[c]) < keep {
		p.free[c] = append(p.free[c], s[:0])
	}
	p.mu.Unlock()
}

// grow returns s with room for n more events, moving it to a larger pooled
// slice (and giving s back) when it has not.
func (p *slicePool) grow(s []Event, n int) []Event {
	if cap(s)-len(s) >= n {
		return s
	}
	g := append(p.get(max(2*cap(s), len(s)+n)), s...)
	p.put(s)
	return g
}
