// Package replay runs recorded events through a flow offline: events from a
// JSON-lines input are fed into one of the flow's sources, and every event
// that reaches a sink is captured as one JSON line
// {"sink": NAME, "data": ..., "meta": ...}.
//
// Output order is deterministic: every input event is tracked through the
// graph (pipeline.Tracker), and the events derived from it are written once
// it is done and every input event before it has been written, ordered by
// sink declaration order, then by arrival at that sink.
package replay

import (
	"bufio"
	"cmp"
	"context"
	"io"
	"slices"
	"sync"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// trackChunk is how many input events share one tracker.
const trackChunk = 1024

// SliceEvents is how many input events the source of a replay should
// flush at once (jsonl.ReaderOptions.FlushEvery), and maxUnwritten, by
// default, bounds the input events fed into the flow and not yet written
// to twice as many: beyond it the source waits, in Flush, for the oldest to
// be written, so that a replay's memory does not grow with how far the
// reader runs ahead of the store (queues full of events, and outputs held
// for input order).
//
// Two slices of 4,096 events are in the store while the next is read. A
// slice reaches a kv store as one request, so its commit groups hold a
// whole slice or more, where slices of 1,024 under a bound of 4,096 left
// them at ~1,600 (the in-flight events split between the group being
// built, the one being applied and the one being synced). Pebble inserts
// a group into its memtable in key order, each search starting where the
// last one ended: the larger the group, the closer the next key and the
// shorter the search. Replaying 1,000,000 puts on a quiet machine, this
// took 1.11x the wall time of `flowrun run` (whose reader flushes 4,096
// events too) against 1.19x with one slice in the store, and 0.83x the CPU
// of slices of 1,024 under a bound of 4,096, at 112-117 MB of peak RSS
// against 103-114 MB (docs/performance.md, replay against run).
const SliceEvents = 4 * trackChunk

const maxUnwritten = 2 * SliceEvents

// Capture collects the events reaching a flow's sinks and writes them as
// JSON lines in input order, as the input events they derive from complete.
type Capture struct {
	mu        sync.Mutex
	sinks     map[string]int
	bases     map[*pipeline.Tracker]uint64 // number of each tracker's first event
	tracked   uint64                       // input events tracked so far
	next      uint64                       // number of the first input event not yet written
	unwritten ring                         // unwritten.at(k) is input event next+k
	prefixes  [][]byte                     // per sink: {"sink":NAME,"data":
	w         *bufio.Writer
	buf       []byte
	check     ijson.Checker
	written   uint64
	err       error // first write error
	// progress (cap 1) wakes the source waiting in waitRoom: it is
	// signalled once the unwritten input events are down to roomAt, not
	// at every write, so that a waiting source is woken once per wait.
	progress chan struct{}
	waiting  bool   // the source waits in waitRoom
	roomAt   uint64 // the most unwritten input events it waits for
	// Kept by waitRoom, on the source's goroutine: the calls that had
	// to wait, and the times the source was woken.
	waits, wakeups uint64
}

// unwritten is what is known of one input event whose captured output is
// not written yet: it, or an earlier input event, has not completed.
type unwritten struct {
	done  bool
	n     int        // captured events: first, then more
	first captured   // held inline: most input events have one output
	more  []captured // the outputs after the first
}

// add appends p to u's outputs.
func (u *unwritten) add(p captured) {
	if u.n == 0 {
		u.first = p
	} else {
		u.more = append(u.more, p)
	}
	u.n++
}

// each calls f with u's outputs ordered by sink (declaration order), then
// by arrival.
func (u *unwritten) each(f func(captured)) {
	if u.n == 0 {
		return
	}
	if u.n == 1 {
		f(u.first)
		return
	}
	out := append([]captured{u.first}, u.more...)
	slices.SortStableFunc(out, func(a, b captured) int { return cmp.Compare(a.sink, b.sink) })
	for _, p := range out {
		f(p)
	}
}

// ring is a queue of unwritten entries in a circular buffer, so that
// entries are neither allocated one by one nor copied as the queue slides
// forward: it grows to the most input events unwritten at once. Its
// length is a power of two, so that a position is found with a mask
// rather than a division.
type ring struct {
	buf  []unwritten
	head int // index in buf of entry 0
	n    int // entries in use
}

// at returns entry k, growing the queue to k+1 entries.
func (r *ring) at(k int) *unwritten {
	if k >= len(r.buf) {
		r.grow(k + 1)
	}
	r.n = max(r.n, k+1)
	return &r.buf[(r.head+k)&(len(r.buf)-1)]
}

// grow makes room for n entries: the next power of two, at least 64 and
// twice the current length.
func (r *ring) grow(n int) {
	size := max(64, 2*len(r.buf))
	for size < n {
		size *= 2
	}
	grown := make([]unwritten, size)
	for i := range r.n {
		grown[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = grown, 0
}

// pop drops entry 0.
func (r *ring) pop() {
	r.buf[r.head] = unwritten{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
}

// captured is one event that reached the sink numbered sink.
type captured struct {
	sink int
	ev   pipeline.Event
}

// NewCapture returns a capture writing to w.
func NewCapture(w io.Writer) *Capture {
	return &Capture{sinks: map[string]int{}, bases: map[*pipeline.Tracker]uint64{}, w: bufio.NewWriterSize(w, 64<<10),
		progress: make(chan struct{}, 1)}
}

// Sink returns the processor that stands in for the sink named name. The
// order of the first Sink call for each name (the flow's declaration order,
// when called while building it) orders the output of events derived from
// the same input line.
func (c *Capture) Sink(name string) pipeline.Processor {
	c.mu.Lock()
	idx, ok := c.sinks[name]
	if !ok {
		idx = len(c.sinks)
		c.sinks[name] = idx
		// The start of every line of this sink, escaped once.
		prefix := gjson.AppendJSONString([]byte(`{"sink":`), name)
		c.prefixes = append(c.prefixes, append(prefix, `,"data":`...))
	}
	c.mu.Unlock()
	return &captureSink{c: c, idx: idx}
}

// captureSink is the processor standing in for one sink.
type captureSink struct {
	c   *Capture
	idx int
}

func (s *captureSink) Process(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	// Events arrive in runs from one tracker: look its base up once per
	// run, not once per event.
	var last *pipeline.Tracker
	var base uint64
	var ok bool
	for _, ev := range events {
		o := ev.Origin()
		if tr := o.Tracker(); tr != last || last == nil {
			last = tr
			base, ok = c.bases[tr]
		}
		if !ok {
			// Not derived from a tracked input event: nothing to
			// order it by.
			c.write(captured{sink: s.idx, ev: ev})
			continue
		}
		c.slot(base + uint64(o.Index())).add(captured{sink: s.idx, ev: ev})
	}
	return c.err
}

// Close flushes what has been written: when the last sink closes, every
// input event has completed.
func (s *captureSink) Close(context.Context) error {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	if s.c.err != nil {
		return s.c.err
	}
	return s.c.w.Flush()
}

// track returns a tracker for the next n input events.
func (c *Capture) track(n int) *pipeline.Tracker {
	c.mu.Lock()
	defer c.mu.Unlock()
	base := c.tracked
	c.tracked += uint64(n)
	var tr *pipeline.Tracker
	tr = pipeline.NewTracker(n, func(i int, _ pipeline.Outcome) { c.done(base + uint64(i)) }, func() {
		c.mu.Lock()
		delete(c.bases, tr)
		c.mu.Unlock()
	})
	c.bases[tr] = base
	return tr
}

// slot returns the unwritten entry of input event seq, which is not written
// yet. c.mu is held.
func (c *Capture) slot(seq uint64) *unwritten {
	return c.unwritten.at(int(seq - c.next))
}

// done marks input event seq complete and writes every complete event
// from the first one not yet written.
func (c *Capture) done(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slot(seq).done = true
	for c.unwritten.n > 0 {
		u := c.unwritten.at(0)
		if !u.done {
			break
		}
		u.each(c.write)
		c.unwritten.pop()
		c.next++
	}
	if c.waiting && c.tracked-c.next <= c.roomAt {
		c.waiting = false
		select {
		case c.progress <- struct{}{}:
		default:
		}
	}
}

// write writes one captured event. c.mu is held.
func (c *Capture) write(p captured) {
	if c.err != nil {
		return
	}
	c.buf = appendLineAfter(&c.check, c.buf[:0], c.prefixes[p.sink], p.ev)
	if _, err := c.w.Write(c.buf); err != nil {
		c.err = err
		return
	}
	c.written++
}

// Release flushes what has been written and reports the first write
// error. Events still waiting for earlier ones (only when the graph
// failed) are written as they are.
func (c *Capture) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.unwritten.n {
		c.unwritten.at(k).each(c.write)
	}
	c.unwritten = ring{}
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}

// unwrittenCount returns how many input events are tracked and not yet
// written.
func (c *Capture) unwrittenCount() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tracked - c.next
}

// waitRoom waits until at most max input events are tracked and not yet
// written, or ctx ends. done wakes it once that is so.
func (c *Capture) waitRoom(ctx context.Context, max uint64) error {
	for first := true; ; first = false {
		c.mu.Lock()
		if c.tracked-c.next <= max {
			c.waiting = false
			c.mu.Unlock()
			return nil
		}
		c.waiting, c.roomAt = true, max
		c.mu.Unlock()
		if first {
			c.waits++
		}
		select {
		case <-c.progress:
			c.wakeups++
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Written returns how many events have been written so far.
func (c *Capture) Written() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.written
}

// AppendLine appends {"sink":NAME,"data":...,"meta":...} and a newline:
// one line of valid UTF-8 JSON (invalid UTF-8 in the event is repaired,
// see ijson.AppendEvent).
func AppendLine(dst []byte, sink string, ev pipeline.Event) []byte {
	return appendLine(new(ijson.Checker), dst, sink, ev)
}

func appendLine(c *ijson.Checker, dst []byte, sink string, ev pipeline.Event) []byte {
	dst = append(dst, `{"sink":`...)
	dst = gjson.AppendJSONString(dst, sink)
	dst = append(dst, `,"data":`...)
	return appendEvent(c, dst, ev)
}

// appendLineAfter is appendLine given the start of the line up to the
// data: {"sink":NAME,"data":
func appendLineAfter(c *ijson.Checker, dst, prefix []byte, ev pipeline.Event) []byte {
	return appendEvent(c, append(dst, prefix...), ev)
}

// appendEvent appends the rest of a line: the data, the meta and the end.
func appendEvent(c *ijson.Checker, dst []byte, ev pipeline.Event) []byte {
	dst = ijson.AppendEvent(c, dst, ev.DataJSON())
	dst = append(dst, `,"meta":`...)
	dst = ijson.AppendEvent(c, dst, ev.MetaJSON())
	return append(dst, '}', '\n')
}

// WindowedSource wraps the source that feeds a replay so that every event
// it emits is tracked for the capture's ordering.
//
// Events the inner source emits on its "err" port (malformed input lines)
// are tracked and fed into the flow like the others, as flowrun run does:
// they reach whatever the source's err port is linked to.
type WindowedSource struct {
	Inner   pipeline.Source
	Capture *Capture
	// MaxUnwritten bounds the input events in the flow and not yet
	// written; the source waits beyond it. Default SliceEvents.
	MaxUnwritten int
}

func (s *WindowedSource) max() uint64 {
	if s.MaxUnwritten > 0 {
		return uint64(s.MaxUnwritten)
	}
	return maxUnwritten
}

// Run implements pipeline.Source.
func (s *WindowedSource) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	return s.Inner.Run(ctx, &windowEmitter{SourceEmitter: emit, s: s})
}

type windowEmitter struct {
	pipeline.SourceEmitter
	s    *WindowedSource
	tr   *pipeline.Tracker
	used int // events tracked with tr
}

// Flush sends the queued events on, then waits while too many input
// events are in the flow and not yet written (maxUnwritten).
func (w *windowEmitter) Flush(ctx context.Context) error {
	if err := w.SourceEmitter.Flush(ctx); err != nil {
		return err
	}
	if w.s.Capture == nil {
		return nil
	}
	return w.s.Capture.waitRoom(ctx, w.s.max())
}

func (w *windowEmitter) Emit(port string, ev pipeline.Event) {
	if w.s.Capture != nil {
		if w.tr == nil || w.used == w.tr.Len() {
			w.tr, w.used = w.s.Capture.track(trackChunk), 0
		}
		ev = w.tr.Track(w.used, ev)
		w.used++
	}
	w.SourceEmitter.Emit(port, ev)
}
