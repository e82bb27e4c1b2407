package jsonl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// DefaultWriteBufferBytes is the size of a Writer's output buffer.
const DefaultWriteBufferBytes = 64 << 10

// WriterOptions configure a Writer.
type WriterOptions struct {
	// Name names the sink in error messages. Default "output".
	Name string
	// Codec is CodecEvent (write {"data":...,"meta":...}) or CodecJSON
	// (write the payload only). Default CodecEvent; any other value is
	// treated as CodecEvent by NewWriter (validate codecs at config time).
	Codec string
	// BufferBytes is how much output is gathered before it is written
	// within a slice of events. Default
	// DefaultWriteBufferBytes.
	BufferBytes int
	// FollowSymlinks lets OpenFileSink open a path whose last element is
	// a symbolic link, writing (and, in ModeWrite or ModeTruncate,
	// truncating) the file it points to. By default such a path is
	// refused with ErrSymlink. Symbolic links among the parent
	// directories are always followed.
	FollowSymlinks bool
}

// EnsureDefaults fills unset fields with their defaults.
func (o *WriterOptions) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "output"
	}
	if o.Codec == "" {
		o.Codec = CodecEvent
	}
	if o.BufferBytes <= 0 {
		o.BufferBytes = DefaultWriteBufferBytes
	}
}

// Writer is a sink (a pipeline.Processor with no output ports) writing each
// event it receives as one JSON line. Output is buffered and flushed after
// every slice of events, so a line is visible to readers of the output once the slice
// that carried it has been processed. Writer implements pipeline.Closer:
// Close flushes, and when the Writer owns a file (OpenFileSink) it also
// syncs and closes it.
//
// Every line is valid UTF-8 (invalid UTF-8 in an event is repaired) and
// valid JSON as long as the event holds JSON, as every event does by the
// pipeline's contract (see ijson.AppendEvent). Every Write to the
// underlying writer holds whole lines, so several
// Writers sharing one io.Writer behind a lock never interleave partial
// lines.
type Writer struct {
	w     io.Writer
	opts  WriterOptions
	check ijson.Checker // Process runs on one goroutine
	file  *os.File      // owned file, nil when writing to a caller's io.Writer
	buf   []byte
	close bool
}

// NewWriter returns a sink writing JSON lines to w. w is not closed by the
// Writer. A failed write is returned from Process, which stops the graph:
// a sink that cannot write (a closed stdout, a full disk) must not silently
// drop events.
func NewWriter(w io.Writer, opts WriterOptions) pipeline.Processor {
	return newWriter(w, nil, opts)
}

func newWriter(w io.Writer, f *os.File, opts WriterOptions) *Writer {
	opts.EnsureDefaults()
	return &Writer{w: w, opts: opts, file: f}
}

// Process implements pipeline.Processor.
func (w *Writer) Process(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
	for _, ev := range events {
		// Every line is valid UTF-8 JSON: events from the sources are
		// already, and invalid UTF-8 an event made in the graph carries is
		// repaired (one fast scan when there is none).
		if w.opts.Codec == CodecJSON {
			w.buf = ijson.AppendEvent(&w.check, w.buf, ev.DataJSON())
		} else {
			w.buf = append(w.buf, `{"data":`...)
			w.buf = ijson.AppendEvent(&w.check, w.buf, ev.DataJSON())
			w.buf = append(w.buf, `,"meta":`...)
			w.buf = ijson.AppendEvent(&w.check, w.buf, ev.MetaJSON())
			w.buf = append(w.buf, '}')
		}
		w.buf = append(w.buf, '\n')
		if len(w.buf) >= w.opts.BufferBytes {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	return w.flush()
}

// flush writes the buffered lines.
func (w *Writer) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.w.Write(w.buf)
	if cap(w.buf) > 4*w.opts.BufferBytes {
		w.buf = nil // one huge event must not pin its buffer forever
	} else {
		w.buf = w.buf[:0]
	}
	if err != nil {
		return fmt.Errorf("%s: write: %w", w.opts.Name, err)
	}
	return nil
}

// Close implements pipeline.Closer: it flushes buffered output and, for an
// owned file, syncs it to disk and closes it. Calling Close again is a
// no-op.
func (w *Writer) Close(context.Context) error {
	if w.close {
		return nil
	}
	w.close = true
	err := w.flush()
	if w.file != nil {
		if serr := w.file.Sync(); serr != nil && !errors.Is(serr, os.ErrInvalid) {
			err = errors.Join(err, fmt.Errorf("%s: sync: %w", w.opts.Name, serr))
		}
		if cerr := w.file.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("%s: close: %w", w.opts.Name, cerr))
		}
	}
	return err
}

// Null is a sink that discards every event.
type Null struct{}

// NewNull returns a sink that discards every event.
func NewNull() pipeline.Processor { return Null{} }

// Process implements pipeline.Processor by doing nothing.
func (Null) Process(context.Context, []pipeline.Event, pipeline.Emitter) error { return nil }
