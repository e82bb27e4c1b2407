package kv

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/flowrun/flowrun/pipeline"
)

// TestResultArenaSlicesDoNotOverlap appends to every slice handed out up
// to its capacity and beyond, and checks no write reaches another slice.
func TestResultArenaSlicesDoNotOverlap(t *testing.T) {
	var a resultArena
	var got [][]byte
	var want [][]byte
	for i := range 3000 {
		n := i % 97
		if i%500 == 0 {
			n = resultChunk // larger than a chunk share: its own memory
		}
		s := a.alloc(n)
		if len(s) != 0 || cap(s) != n {
			t.Fatalf("alloc(%d): len %d, cap %d", n, len(s), cap(s))
		}
		fill := bytes.Repeat([]byte{byte(i)}, n+i%3) // i%3 > 0 appends past the capacity
		if i%5 == 1 {
			fill = fill[:n/2] // room left over for shrink to give back
		}
		s = append(s, fill...)
		switch {
		case i%5 == 1, i%5 == 2:
			s = a.shrink(s) // the last slice handed out
		case i%7 == 3 && len(got) > 0:
			got[len(got)-1] = a.shrink(got[len(got)-1]) // not the last: only cut
		}
		got, want = append(got, s), append(want, fill)
	}
	for i := range got { // appends past the length must not reach the next slice
		if cap(got[i]) == len(got[i]) {
			got[i] = append(got[i], 0xff)
			want[i] = append(want[i], 0xff)
		}
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("slice %d was overwritten: %v, want %v", i, got[i], want[i])
		}
	}
	if c := a.clone(nil); c != nil {
		t.Errorf("clone(nil) = %v, want nil", c)
	}
	if c := a.clone([]byte{}); c == nil || len(c) != 0 {
		t.Errorf("clone(empty) = %#v, want empty, not nil", c)
	}
}

// TestResultArenaShrinkGivesBackRoom: results given more room than they
// use share a chunk as densely as their lengths, once shrunk; a shrunk
// result is cut to its length, so appending to it moves it.
func TestResultArenaShrinkGivesBackRoom(t *testing.T) {
	var a resultArena
	meta := []byte(`{"kv":{"op":"increment","key":"k0000012345","found":true}}`)
	const room = 91 // what emit reserves for such a meta
	var first []byte
	for i := range resultChunk / len(meta) {
		s := a.shrink(append(a.alloc(room), meta...))
		if cap(s) != len(s) {
			t.Fatalf("shrunk result: len %d, cap %d", len(s), cap(s))
		}
		if i == 0 {
			first = s
			continue
		}
		// Every result follows the one before in the same chunk.
		if want := unsafe.Add(unsafe.Pointer(unsafe.SliceData(first)), i*len(meta)); unsafe.Pointer(unsafe.SliceData(s)) != want {
			t.Fatalf("result %d does not follow result %d in the chunk", i, i-1)
		}
	}
	moved := append(first, 'x')
	if unsafe.SliceData(moved) == unsafe.SliceData(first) {
		t.Error("appending to a shrunk result wrote into the arena")
	}
	if !bytes.Equal(first, meta) {
		t.Errorf("first result now %q", first)
	}
}

// TestResultArenaAllocates checks the point of the arena: small results
// share chunks.
func TestResultArenaAllocates(t *testing.T) {
	var a resultArena
	v := bytes.Repeat([]byte{'x'}, 100)
	allocs := testing.AllocsPerRun(1000, func() { _ = a.clone(v) })
	if allocs > 0.1 {
		t.Errorf("%.2f allocations per 100-byte clone, want about one per %d bytes", allocs, resultChunk)
	}
}

// TestSliceScratchGrowsByDoubling feeds a slice's scratch slices of
// lengths growing by a few events at a time, as merged slices come: it
// must reallocate a few times (doubling), not at every new length, and
// never beyond the graph's usual largest slice unless a slice is larger.
func TestSliceScratchGrowsByDoubling(t *testing.T) {
	var sc sliceScratch
	grows := 0
	for n := 100; n <= 4096; n += 7 {
		before := cap(sc.cmds)
		sc.grow(n)
		if cap(sc.cmds) < n || cap(sc.results) < n || cap(sc.idx) < n || cap(sc.txErrs) < n {
			t.Fatalf("grow(%d): capacity %d", n, cap(sc.cmds))
		}
		if cap(sc.cmds) != before {
			grows++
		}
	}
	if grows > 7 || cap(sc.cmds) != pipeline.DefaultMaxCoalesce {
		t.Errorf("grew %d times to %d events for slices up to 4096, want at most 7 times to %d", grows, cap(sc.cmds), pipeline.DefaultMaxCoalesce)
	}
	sc.grow(5000)
	if cap(sc.cmds) != 5000 {
		t.Errorf("grow(5000) gave room for %d events, want 5000", cap(sc.cmds))
	}
}
