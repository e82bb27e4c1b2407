package lua

import (
	"fmt"
	"runtime/metrics"
	"unsafe"

	glua "github.com/yuin/gopher-lua"
)

// What a script keeps across events.
//
// The watchdog bounds how much the heap grows while one run lasts; a
// script can also grow its state a little on each of many short runs
// (big = big or {} big[#big+1] = string.rep("x", 4 << 20)), which the
// watchdog never sees. So after each successful run the vm decides
// whether to measure its state, the values reachable from the globals,
// the registry and the string metatable (see stateSize), and fails the
// run when the state holds more than MaxMemory. Measuring walks every
// table and function of the state, so it is done only when the state may
// have grown by the part of MaxMemory it did not use at the last
// measurement:
//   - the library functions that build strings, and the conversions of
//     event data and kv values, count the bytes they produce; or
//   - a garbage collection has run since the last run (one read of the
//     GC cycle count per run) and the live heap it found has grown by
//     that much since the last measurement, which catches what the VM
//     builds itself (concatenations, tables).
// The live heap is the process's, so other goroutines' allocations can
// make the vm measure, never fail: the measurement alone decides.

// memState is the vm's account of its state's memory.
type memState struct {
	// produced counts the bytes built by library functions and
	// conversions since the last measurement.
	produced int64
	// retained is the size of the state found by the last measurement.
	retained int64
	// gcCycles is the GC cycle count seen after the last run; liveBase
	// the lowest live heap seen since the last measurement.
	gcCycles uint64
	liveBase uint64
	samples  [2]metrics.Sample
}

const (
	metricGCCycles = "/gc/cycles/total:gc-cycles"
	// Estimated sizes of the state's parts, see stateSize.
	sizeObject   = 64 // a table, function or userdata
	sizeSlot     = 16 // an array slot or upvalue: one interface value
	sizeEntry    = 64 // a hash entry: key, value, map and key-list overhead
	sizeStrHead  = 16 // a string header
	sharedString = 32 // strings this long are counted once per address
)

// initMem starts the account of a new state.
func (v *vm) initMem() {
	m := &v.mem
	m.samples[0].Name, m.samples[1].Name = metricGCCycles, metricHeapLive
	metrics.Read(m.samples[:])
	m.gcCycles, m.liveBase = sampleUint(m.samples[0]), sampleUint(m.samples[1])
}

// checkState runs after each successful run: it measures the state when
// it may have grown past MaxMemory, and returns an error wrapping
// ErrMemoryLimit when it has.
func (v *vm) checkState() error {
	m := &v.mem
	limit := v.p.opts.MaxMemory
	// The room left, but at least an eighth of the limit: a state close
	// to the limit is not walked again every few events.
	room := max(limit-m.retained, limit/8)
	due := m.produced > room
	metrics.Read(m.samples[:1])
	if c := sampleUint(m.samples[0]); c != m.gcCycles {
		m.gcCycles = c
		metrics.Read(m.samples[1:])
		live := sampleUint(m.samples[1])
		m.liveBase = min(m.liveBase, live)
		due = due || live-m.liveBase > uint64(room)
	}
	if !due {
		return nil
	}
	size := v.stateSize(limit)
	metrics.Read(m.samples[1:])
	m.retained, m.produced, m.liveBase = size, 0, sampleUint(m.samples[1])
	if size > limit {
		return fmt.Errorf("%w: %w: the script's state (its globals and what they reach) holds over %s after this event, limit is %s (max_memory)",
			ErrLimit, ErrMemoryLimit, sizeString(uint64(size)), sizeString(uint64(limit)))
	}
	return nil
}

// stateSize estimates the bytes held by the values the state's roots
// reach, stopping once past stop: each string's length plus a header (a
// string of sharedString bytes or more counted once however many values
// share it), an object per table, function and userdata, a slot per
// array element and upvalue, an entry per other table member. Go values
// held by userdata and Go closures are not counted.
func (v *vm) stateSize(stop int64) int64 {
	L := v.L
	var size int64
	seen := map[glua.LValue]struct{}{}
	strs := map[*byte]struct{}{}
	var todo []glua.LValue
	visit := func(x glua.LValue) {
		switch x := x.(type) {
		case glua.LString:
			if len(x) >= sharedString {
				p := unsafe.StringData(string(x))
				if _, ok := strs[p]; ok {
					return
				}
				strs[p] = struct{}{}
			}
			size += int64(len(x)) + sizeStrHead
		case *glua.LTable, *glua.LFunction, *glua.LUserData:
			if _, ok := seen[x]; !ok {
				seen[x] = struct{}{}
				todo = append(todo, x)
			}
		}
	}
	visit(L.G.Global)
	visit(L.G.Registry)
	visit(L.GetMetatable(glua.LString("")))
	for len(todo) > 0 && size <= stop {
		x := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		size += sizeObject
		switch x := x.(type) {
		case *glua.LTable:
			visit(x.Metatable)
			x.ForEach(func(k, e glua.LValue) {
				if _, ok := k.(glua.LNumber); ok {
					size += sizeSlot
				} else {
					size += sizeEntry
				}
				visit(k)
				visit(e)
			})
		case *glua.LFunction:
			if x.Env != nil {
				visit(x.Env)
			}
			for _, uv := range x.Upvalues {
				size += sizeSlot
				visit(uv.Value())
			}
		case *glua.LUserData:
			visit(x.Metatable)
			if x.Env != nil {
				visit(x.Env)
			}
		}
	}
	return size
}
