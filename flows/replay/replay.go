// Package replay runs recorded events through a flow in batch: events from a
// JSON-lines input are fed into one of the flow's sources, and every event
// that reaches a sink is captured as one JSON line
// {"sink": NAME, "data": ..., "meta": ...}.
//
// Output order is deterministic: the input is fed in windows, the graph is
// allowed to go idle after each window, and the window's captured events are
// written ordered by the input line they derive from (Event.Seq), then by
// sink declaration order, then by arrival at that sink.
package replay

import (
	"bufio"
	"context"
	"io"
	"sort"
	"sync"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// Capture collects the events reaching a flow's sinks and writes them as
// JSON lines when Release is called.
type Capture struct {
	mu      sync.Mutex
	sinks   map[string]int
	pending []captured
	w       *bufio.Writer
	buf     []byte
	check   ijson.Checker
	written uint64
}

type captured struct {
	sink int
	name string
	ev   pipeline.Event
}

// NewCapture returns a capture writing to w.
func NewCapture(w io.Writer) *Capture {
	return &Capture{sinks: map[string]int{}, w: bufio.NewWriterSize(w, 64<<10)}
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
	}
	c.mu.Unlock()
	return pipeline.ProcessorFunc(func(_ context.Context, batch []pipeline.Event, _ pipeline.Emitter) error {
		c.mu.Lock()
		for _, ev := range batch {
			c.pending = append(c.pending, captured{sink: idx, name: name, ev: ev})
		}
		c.mu.Unlock()
		return nil
	})
}

// Release writes every captured event in deterministic order and flushes.
func (c *Capture) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	sort.SliceStable(c.pending, func(i, j int) bool {
		a, b := c.pending[i], c.pending[j]
		if a.ev.Seq != b.ev.Seq {
			return a.ev.Seq < b.ev.Seq
		}
		return a.sink < b.sink
	})
	for _, p := range c.pending {
		c.buf = appendLine(&c.check, c.buf[:0], p.name, p.ev)
		if _, err := c.w.Write(c.buf); err != nil {
			return err
		}
	}
	c.written += uint64(len(c.pending))
	clear(c.pending)
	c.pending = c.pending[:0]
	return c.w.Flush()
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
	dst = ijson.AppendEvent(c, dst, ev.DataJSON())
	dst = append(dst, `,"meta":`...)
	dst = ijson.AppendEvent(c, dst, ev.MetaJSON())
	return append(dst, '}', '\n')
}

// Idler is what a windowed source needs from the graph: a way to wait until
// everything fed so far has been processed.
type Idler interface {
	WaitIdle(ctx context.Context) error
}

// WindowedSource wraps the source that feeds a replay so that after every
// flush it waits for the graph to go idle and releases the capture. Set
// Graph before the graph runs.
//
// Events the inner source emits on its "err" port (malformed input lines)
// are not fed into the flow: replay reports them through the reader's own
// error hook and skips them.
type WindowedSource struct {
	Inner   pipeline.Source
	Capture *Capture
	Graph   Idler
}

// Run implements pipeline.Source.
func (s *WindowedSource) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	return s.Inner.Run(ctx, &windowEmitter{SourceEmitter: emit, s: s})
}

type windowEmitter struct {
	pipeline.SourceEmitter
	s *WindowedSource
}

func (w *windowEmitter) Emit(port string, ev pipeline.Event) {
	if port == pipeline.PortErr {
		return
	}
	w.SourceEmitter.Emit(port, ev)
}

func (w *windowEmitter) Flush(ctx context.Context) error {
	if err := w.SourceEmitter.Flush(ctx); err != nil {
		return err
	}
	if w.s.Capture == nil {
		return nil
	}
	// Idle waiting must not be cut short by a shutdown signal: the window's
	// events are being drained either way.
	if err := w.s.Graph.WaitIdle(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	return w.s.Capture.Release()
}
