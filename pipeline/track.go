package pipeline

import (
	"sync"
	"sync/atomic"
)

// A Tracker follows events a source emits through the graph and tells the
// source when each is done: when every event derived from it has been
// consumed by a sink (a processor with no output ports), emitted on a port
// with no link, dropped by a processor, or discarded because the graph
// failed. Each tracked event completes exactly once, with an Outcome.
//
// A Tracker serves a whole slice of events: a source makes one per slice it
// flushes (one allocation for the slice), tags each event with Track before
// emitting it, and learns of completions through the functions given to
// NewTracker. Tracking costs a few atomic operations per event and node;
// untracked events (a zero Origin) cost nothing.
//
// Completion relies on processors building every event they emit in
// response to an input with Derive (which keeps the input's Origin) and
// emitting it while handling that input (in Process, or before a
// StagedProcessor's FinishFunc returns): once a processor is done with an
// input, the input no longer holds its tracked event open.
type Tracker struct {
	slots  []slot
	left   atomic.Int64
	onDone func()
	onOne  func(i int, o Outcome)
	// redelivers is set by SetRedelivers.
	redelivers bool

	mu    sync.Mutex
	notes map[int32]errNote // first err event per tracked event; rare
}

// slot is one tracked event's state: word holds the references in its low
// 32 bits and the outcome flags in its high 32 bits, so a reference and a
// flag change together; sinks is the set of sinks reached.
type slot struct {
	word  atomic.Uint64
	sinks atomic.Uint64
}

// errNote is the first event that reached an "err" port for one tracked
// event.
type errNote struct {
	node string
	meta []byte
}

// Outcome flags, kept in the high half of a slot's word.
const (
	flagFailed uint32 = 1 << iota
	flagErr
	flagUnlinkedErr
	flagUnlinked
)

// NewTracker returns a tracker for n events, indexes 0 to n-1. onEvent, if
// not nil, is called once for each event as it completes; onDone, if not
// nil, once all n events have completed (after the last onEvent). Both are
// called from whichever graph goroutine finished the event (or from the
// source's own, within Emit or Flush), concurrently for different events:
// they must be quick, must not block on the graph (never Emit or Flush), and
// must be safe for concurrent use.
func NewTracker(n int, onEvent func(i int, o Outcome), onDone func()) *Tracker {
	t := &Tracker{slots: make([]slot, n), onDone: onDone, onOne: onEvent}
	t.left.Store(int64(n))
	return t
}

// SetRedelivers declares that the source gives every event whose Outcome
// is Failed back for redelivery (a broker's nack): a processor may then
// Abandon such an event instead of failing it for good (see Abandon). It
// must be called before the tracker's events are emitted.
func (t *Tracker) SetRedelivers() { t.redelivers = true }

// Redeliverable reports whether e derives from an event tracked by a
// source that redelivers failed events (Tracker.SetRedelivers).
func (e Event) Redeliverable() bool { return e.origin.t != nil && e.origin.t.redelivers }

// Abandon gives e back to its source: the tracked event e derives from
// completes with Outcome.Failed, so a source that redelivers
// (Redeliverable) delivers it again, to this process or another. A
// processor abandons an event it cannot handle here and now (its state is
// owned elsewhere for the moment) and emits nothing for it; whatever else
// was derived from the same source event still completes as usual, but
// the outcome stays Failed. Abandon reports whether e was tracked; it does
// nothing to an untracked event.
func Abandon(e Event) bool {
	o := e.origin
	if o.t == nil {
		return false
	}
	o.t.ref(o.i, 0, flagFailed)
	return true
}

// Len returns the number of events the tracker was made for.
func (t *Tracker) Len() int { return len(t.slots) }

// Track returns ev tagged as the tracker's event i. Every tracked index
// must be emitted exactly once, on one port, by the source that tracked it;
// an index never emitted never completes (and then onDone is never called).
func (t *Tracker) Track(i int, ev Event) Event {
	ev.origin = Origin{t: t, i: int32(i)}
	return ev
}

// Origin identifies the source event an event derives from: the tracker
// and index it was tracked with. The zero Origin means untracked. Origins
// are comparable, so they can key a map.
type Origin struct {
	t *Tracker
	i int32
}

// Tracker returns the tracker of the origin, nil if untracked.
func (o Origin) Tracker() *Tracker { return o.t }

// Index returns the index of the origin's event in its tracker.
func (o Origin) Index() int { return int(o.i) }

// ref adds n references to event i and sets flags.
func (t *Tracker) ref(i int32, n int, flags uint32) {
	w := &t.slots[i].word
	if flags == 0 {
		w.Add(uint64(n))
		return
	}
	add := uint64(flags) << 32
	for {
		old := w.Load()
		if w.CompareAndSwap(old, (old+uint64(n))|add) {
			return
		}
	}
}

// release drops one reference of event i after setting flags (and the
// sink bit, when sink >= 0), completing the event when it was the last.
func (t *Tracker) release(i int32, flags uint32, sink int) {
	s := &t.slots[i]
	if sink >= 0 {
		if bit := uint64(1) << min(sink, 63); s.sinks.Load()&bit == 0 {
			s.sinks.Or(bit)
		}
	}
	var now uint64
	if flags == 0 {
		now = s.word.Add(^uint64(0))
	} else {
		add := uint64(flags) << 32
		for {
			old := s.word.Load()
			now = (old - 1) | add
			if s.word.CompareAndSwap(old, now) {
				break
			}
		}
	}
	if uint32(now) == 0 {
		t.complete(i, uint32(now>>32), s.sinks.Load())
	}
}

// note records the first err event of event i.
func (t *Tracker) note(i int32, node string, meta []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.notes[i]; ok {
		return
	}
	if t.notes == nil {
		t.notes = map[int32]errNote{}
	}
	t.notes[i] = errNote{node: node, meta: meta}
}

func (t *Tracker) complete(i int32, flags uint32, sinks uint64) {
	o := Outcome{flags: flags, sinks: sinks}
	if flags&flagErr != 0 {
		t.mu.Lock()
		n := t.notes[i]
		delete(t.notes, i)
		t.mu.Unlock()
		o.errNode, o.errMeta = n.node, n.meta
	}
	if t.onOne != nil {
		t.onOne(int(i), o)
	}
	if t.left.Add(-1) == 0 && t.onDone != nil {
		t.onDone()
	}
}

// SinkID names one sink of a graph in an Outcome; see Graph.SinkID.
type SinkID int

// Outcome is what became of one tracked event and the events derived from
// it.
type Outcome struct {
	flags   uint32
	sinks   uint64
	errNode string
	errMeta []byte
}

// Failed reports that the graph failed (a node returned an error) before
// the event was done, or that a processor abandoned it (Abandon): events
// derived from it may have been discarded.
func (o Outcome) Failed() bool { return o.flags&flagFailed != 0 }

// Errored reports that an event derived from it was emitted on an "err"
// port, linked or not.
func (o Outcome) Errored() bool { return o.flags&flagErr != 0 }

// UnlinkedErr reports that an event derived from it was emitted on an
// "err" port with no link: a failure nothing in the flow handled.
func (o Outcome) UnlinkedErr() bool { return o.flags&flagUnlinkedErr != 0 }

// Unlinked reports that an event derived from it was emitted on a port
// other than "err" with no link (the end of the line for it).
func (o Outcome) Unlinked() bool { return o.flags&flagUnlinked != 0 }

// Reached reports that an event derived from it was consumed by the sink
// id. Sinks beyond the 63rd of a graph share the last bit.
func (o Outcome) Reached(id SinkID) bool { return o.sinks&(1<<min(int(id), 63)) != 0 }

// Sunk reports that an event derived from it was consumed by any sink.
func (o Outcome) Sunk() bool { return o.sinks != 0 }

// Dropped reports that no event derived from it reached a sink or a port
// with no link, and the graph did not fail: a processor dropped it (a
// filter, or a node that emits nothing for some inputs).
func (o Outcome) Dropped() bool {
	return o.sinks == 0 && o.flags&(flagFailed|flagUnlinked|flagUnlinkedErr) == 0
}

// ErrEvent returns the node and metadata of the first event derived from it
// that was emitted on an "err" port (its meta.error says why), when Errored.
func (o Outcome) ErrEvent() (node string, meta []byte) { return o.errNode, o.errMeta }
