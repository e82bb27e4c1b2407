// Package jsonl reads and writes flowrun events as JSON lines: the stdin,
// stdout and file connectors, and the null sink.
//
// Two codecs exist. With CodecEvent (the default) each line is an event
// envelope {"data": <any JSON>, "meta": {...}}; with CodecJSON each line is
// the payload itself and the metadata is empty. A Reader never stops on a bad
// line: it reports the line on its "err" port (and to ReaderOptions.OnError)
// and goes on with the next one.
package jsonl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// Codec names accepted by ReaderOptions and WriterOptions.
const (
	// CodecEvent reads and writes {"data": ..., "meta": {...}} lines.
	CodecEvent = "event"
	// CodecJSON reads and writes the payload alone; metadata is empty on
	// read and dropped on write.
	CodecJSON = "json"
)

// Defaults for ReaderOptions.
const (
	// DefaultMaxLineBytes is the longest line a Reader accepts (16 MiB).
	DefaultMaxLineBytes = 16 << 20
	// DefaultFlushEvery is how many events a Reader queues before it
	// flushes them downstream even while more input is buffered (or
	// DefaultFlushBytes of them). Slices of 4,096 let the kv store commit
	// groups of that many, where Pebble inserts each record for less than
	// in groups of 256 (docs/performance.md).
	DefaultFlushEvery = 4096
	// DefaultFlushBytes is how many bytes of events a Reader queues
	// before it flushes them downstream even while more input is
	// buffered (1 MiB).
	DefaultFlushBytes = 1 << 20
	// DefaultName names the source in error messages.
	DefaultName = "input"
	// maxRawErrorBytes bounds the copy of an overlong line kept in the
	// error event, so a 100 MB line never costs 100 MB.
	maxRawErrorBytes = 4096
	// chunkSize is the size of the reads made on the underlying reader.
	chunkSize = 64 << 10
)

// Errors reported for malformed lines, wrapped in a *LineError.
var (
	// ErrInvalidLine reports a line that is not valid JSON or, with
	// CodecEvent, not an event envelope.
	ErrInvalidLine = errors.New("invalid line")
	// ErrLineTooLong reports a line longer than ReaderOptions.MaxLineBytes.
	ErrLineTooLong = errors.New("line too long")
	// ErrUnknownCodec reports a codec name other than CodecEvent or
	// CodecJSON.
	ErrUnknownCodec = errors.New("unknown codec")
)

// LineError describes one malformed input line. Its Error text is the same
// string a Reader puts in the error event's meta.error.
type LineError struct {
	// Source is ReaderOptions.Name.
	Source string
	// Line is the 1-based line number.
	Line uint64
	// Reason says what is wrong with the line.
	Reason string
	// Err is ErrInvalidLine or ErrLineTooLong.
	Err error
	// Cause, when not nil, is the *ijson.Error that made the line invalid
	// (a duplicate key, invalid UTF-8 in meta, ...).
	Cause error
}

// Error returns "<source>: line N: <reason>".
func (e *LineError) Error() string {
	return fmt.Sprintf("%s: line %d: %s", e.Source, e.Line, e.Reason)
}

// Unwrap returns ErrInvalidLine or ErrLineTooLong, and Cause when set, so
// errors.Is(err, ijson.ErrDuplicateKey) works.
func (e *LineError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}

// ReaderOptions configure a Reader.
type ReaderOptions struct {
	// Name is the source's name in error messages. Default DefaultName.
	Name string
	// Codec is CodecEvent or CodecJSON. Default CodecEvent.
	Codec string
	// MaxLineBytes is the longest accepted line, excluding the newline.
	// Longer lines are skipped without being held in memory and reported
	// as errors. Default DefaultMaxLineBytes.
	MaxLineBytes int
	// FlushEvery is the most events queued before a flush sends them
	// downstream as one slice. Default
	// DefaultFlushEvery.
	FlushEvery int
	// FlushBytes is the most bytes of events (their data and meta)
	// queued before a flush: a slice of large events is flushed before it
	// reaches FlushEvery, so that a slice, and a queue of slices, is
	// bounded in bytes too. Default DefaultFlushBytes.
	FlushBytes int
	// OnError, when set, is called for every malformed line with the error
	// event (already emitted on "err") and a *LineError. A non-nil return
	// stops the Reader, whose Run returns that error; nil goes on.
	OnError func(ev pipeline.Event, err error) error
}

// EnsureDefaults fills unset fields with their defaults.
func (o *ReaderOptions) EnsureDefaults() {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.Codec == "" {
		o.Codec = CodecEvent
	}
	if o.MaxLineBytes <= 0 {
		o.MaxLineBytes = DefaultMaxLineBytes
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = DefaultFlushEvery
	}
	if o.FlushBytes <= 0 {
		o.FlushBytes = DefaultFlushBytes
	}
}

// ReaderPorts are the output ports of a Reader.
var ReaderPorts = []string{pipeline.PortOut, pipeline.PortErr}

// Reader is a pipeline.Source that emits one event per JSON line of its
// input on "out", and one error event per malformed line on "err".
type Reader struct {
	r     io.Reader
	opts  ReaderOptions
	check ijson.Checker // used by Run's goroutine only
}

// NewReader returns a source reading JSON lines from r. Run reads r until
// EOF or until ctx is cancelled; r is not closed.
//
// Reads happen on a goroutine owned by Run, so that cancelling ctx stops Run
// promptly even while r blocks (an interactive stdin). Run then returns at
// once; the goroutine stays parked in its blocked Read until that Read
// returns (new input, EOF or r being closed) and then exits without
// reading again. Events are flushed downstream whenever no more input is
// already available, so interactive input is processed line by line, and
// otherwise every FlushEvery events.
//
// An unknown codec makes Run return an error wrapping ErrUnknownCodec.
func NewReader(r io.Reader, opts ReaderOptions) pipeline.Source {
	opts.EnsureDefaults()
	return &Reader{r: r, opts: opts}
}

// Run implements pipeline.Source.
func (rd *Reader) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	if rd.opts.Codec != CodecEvent && rd.opts.Codec != CodecJSON {
		return fmt.Errorf("%s: %w %q (want %q or %q)", rd.opts.Name, ErrUnknownCodec, rd.opts.Codec, CodecEvent, CodecJSON)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	feed := newFeeder(ctx, rd.r)
	br := bufio.NewReaderSize(feed, chunkSize)
	var (
		lineNo      uint64
		queued      int
		queuedBytes int    // data and meta of the queued events
		long        []byte // the overlong line being accumulated, up to the limit
		tooLong     bool   // the current line is over the limit: skip the rest
		skipped     int    // bytes of an overlong line seen so far
	)
	flush := func() error {
		if queued == 0 {
			return nil
		}
		queued, queuedBytes = 0, 0
		return emit.Flush(ctx)
	}
	for {
		frag, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Part of a line longer than the buffer: gather it up to the
			// limit, then only count what remains.
			if !tooLong {
				if len(long)+len(frag) > rd.opts.MaxLineBytes {
					tooLong = true
					skipped = len(long) + len(frag)
					if len(long) < maxRawErrorBytes {
						long = append(long, frag[:min(len(frag), maxRawErrorBytes-len(long))]...)
					}
					long = long[:min(len(long), maxRawErrorBytes)]
				} else {
					long = append(long, frag...)
				}
			} else {
				skipped += len(frag)
			}
			continue
		}
		if ctx.Err() != nil {
			// Stopping: the graph flushes what is queued.
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: read: %w", rd.opts.Name, err)
		}
		if !tooLong && len(long)+len(trimEOL(frag)) > rd.opts.MaxLineBytes {
			// The line ends in this fragment and is over the limit: a
			// line shorter than the read buffer never fills it, so the
			// limit must be checked here too.
			tooLong, skipped = true, len(long)
			if len(long) < maxRawErrorBytes {
				long = append(long, frag[:min(len(frag), maxRawErrorBytes-len(long))]...)
			}
			long = long[:min(len(long), maxRawErrorBytes)]
		}
		if len(frag) > 0 || len(long) > 0 || tooLong {
			lineNo++
			line := frag
			if tooLong {
				skipped += len(trimEOL(frag))
				line = long
			} else if len(long) > 0 {
				line = append(long, frag...)
			}
			ev, ok, lerr := rd.decode(lineNo, line, tooLong, skipped)
			if lerr != nil {
				emit.Emit(pipeline.PortErr, ev)
				queued++
				queuedBytes += len(ev.Data) + len(ev.Meta)
				if rd.opts.OnError != nil {
					if herr := rd.opts.OnError(ev, lerr); herr != nil {
						_ = flush()
						return herr
					}
				}
			} else if ok {
				emit.Emit(pipeline.PortOut, ev)
				queued++
				queuedBytes += len(ev.Data) + len(ev.Meta)
			}
			long, tooLong, skipped = long[:0], false, 0
			if cap(long) > chunkSize*4 {
				long = nil // do not pin a big buffer for the rest of the input
			}
		}
		if err != nil { // io.EOF
			return flush()
		}
		if queued >= rd.opts.FlushEvery || queuedBytes >= rd.opts.FlushBytes || (br.Buffered() == 0 && !feed.ready()) {
			if ferr := flush(); ferr != nil {
				if ctx.Err() != nil {
					return nil
				}
				return ferr
			}
		}
	}
}

// decode turns one line (newline included or not) into an event; ok is
// false for a blank line. For a malformed line it returns the error event and
// a *LineError.
func (rd *Reader) decode(lineNo uint64, line []byte, tooLong bool, size int) (ev pipeline.Event, ok bool, err error) {
	if tooLong {
		return rd.lineError(lineNo, line, ErrLineTooLong,
			fmt.Sprintf("line is %d bytes, longer than the limit of %d bytes", size, rd.opts.MaxLineBytes))
	}
	line = trimEOL(line)
	trimmed := trimSpace(line)
	if len(trimmed) == 0 {
		return pipeline.Event{}, false, nil
	}
	rep, cerr := rd.check.Check(trimmed, "")
	if cerr != nil {
		if errors.Is(cerr, ijson.ErrSyntax) {
			return rd.lineError(lineNo, line, ErrInvalidLine, "invalid JSON: "+syntaxReason(trimmed))
		}
		return rd.lineErrorCause(lineNo, line, cerr)
	}
	buf := trimmed
	if rep.BadString == nil {
		// Copy once; Data and Meta are sub-slices of the copy.
		buf = append([]byte(nil), trimmed...)
	} else {
		// Invalid UTF-8 or a lone surrogate escape in a string value.
		// Metadata (kv keys, correlation) is refused: repairing it would
		// make different keys equal. Data is repaired, so that every
		// component reads the same U+FFFD.
		if rd.opts.Codec == CodecEvent {
			if bad := rd.check.BadStringIn(trimmed, "meta"); bad != nil {
				return rd.lineErrorCause(lineNo, line, bad)
			}
		}
		var err error
		if buf, err = rd.check.Repaired(trimmed); err != nil {
			return rd.lineErrorCause(lineNo, line, err) // cannot happen: Repair keeps the structure
		}
	}
	if rd.opts.Codec == CodecJSON {
		return pipeline.Event{Data: buf}, true, nil
	}
	if buf[0] != '{' {
		return rd.lineError(lineNo, line, ErrInvalidLine, `expected an event object {"data": ..., "meta": {...}}`)
	}
	ds, de, hasData := rd.check.Member(buf, "data")
	ms, me, hasMeta := rd.check.Member(buf, "meta")
	if !hasData && !hasMeta {
		return rd.lineError(lineNo, line, ErrInvalidLine, `expected an event object {"data": ..., "meta": {...}}, found neither "data" nor "meta"`)
	}
	ev = pipeline.Event{}
	if hasData && string(buf[ds:de]) != "null" {
		ev.Data = buf[ds:de:de]
	}
	if hasMeta && string(buf[ms:me]) != "null" {
		if buf[ms] != '{' {
			return rd.lineError(lineNo, line, ErrInvalidLine, `"meta" must be a JSON object`)
		}
		ev.Meta = buf[ms:me:me]
	}
	return ev, true, nil
}

// lineErrorCause is lineError for a line refused by the I-JSON check.
func (rd *Reader) lineErrorCause(lineNo uint64, line []byte, cause error) (pipeline.Event, bool, error) {
	ev, ok, err := rd.lineError(lineNo, line, ErrInvalidLine, cause.Error())
	err.(*LineError).Cause = cause
	return ev, ok, err
}

// lineError builds the error event for a malformed line: the raw line as a
// JSON string (at most maxRawErrorBytes of it) and meta {"error", "line"}.
func (rd *Reader) lineError(lineNo uint64, line []byte, kind error, reason string) (pipeline.Event, bool, error) {
	lerr := &LineError{Source: rd.opts.Name, Line: lineNo, Reason: reason, Err: kind}
	raw := trimEOL(line)
	if len(raw) > maxRawErrorBytes {
		raw = raw[:maxRawErrorBytes]
	}
	data, _ := json.Marshal(string(raw))
	msg, _ := json.Marshal(lerr.Error())
	meta := make([]byte, 0, len(msg)+40)
	meta = append(meta, `{"error":`...)
	meta = append(meta, msg...)
	meta = append(meta, `,"line":`...)
	meta = strconv.AppendUint(meta, lineNo, 10)
	meta = append(meta, '}')
	return pipeline.Event{Data: data, Meta: meta}, false, lerr
}

// trimEOL returns b without the '\r' and '\n' bytes at its end, as
// bytes.TrimRight(b, "\r\n") does, without building a cutset per line.
func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// trimSpace returns bytes.TrimSpace(b), at once for the usual event line,
// which starts with '{' and ends with '}'.
func trimSpace(b []byte) []byte {
	if len(b) > 0 && b[0] == '{' && b[len(b)-1] == '}' {
		return b
	}
	return bytes.TrimSpace(b)
}

// syntaxReason explains why b is not valid JSON. It runs only for bad lines,
// so the slower encoding/json decoder is affordable here.
func syntaxReason(b []byte) string {
	var v any
	err := json.Unmarshal(b, &v)
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("%v (at byte %d)", se, se.Offset)
	case err != nil:
		return err.Error()
	default:
		return "not a single JSON value"
	}
}

// feeder reads the underlying reader on its own goroutine and hands the
// chunks to Read, so that a Read blocked on input does not keep Run from
// seeing ctx cancellation.
type feeder struct {
	ctx    context.Context
	chunks chan chunk
	free   chan []byte
	cur    []byte // unread part of the chunk being consumed
	curBuf []byte // the whole buffer behind cur, returned to free when done
	err    error
}

type chunk struct {
	buf []byte
	n   int
	err error
}

func newFeeder(ctx context.Context, r io.Reader) *feeder {
	f := &feeder{ctx: ctx, chunks: make(chan chunk, 2), free: make(chan []byte, 4)}
	go func() {
		for {
			var buf []byte
			select {
			case buf = <-f.free:
			default:
				buf = make([]byte, chunkSize)
			}
			n, err := r.Read(buf)
			if n == 0 && err == nil {
				continue
			}
			select {
			case f.chunks <- chunk{buf: buf, n: n, err: err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return f
}

// ready reports whether input is available without blocking.
func (f *feeder) ready() bool {
	return len(f.cur) > 0 || len(f.chunks) > 0 || f.err != nil
}

// Read implements io.Reader over the chunks.
func (f *feeder) Read(p []byte) (int, error) {
	for len(f.cur) == 0 {
		if f.curBuf != nil {
			select {
			case f.free <- f.curBuf:
			default:
			}
			f.curBuf = nil
		}
		if f.err != nil {
			return 0, f.err
		}
		select {
		case c := <-f.chunks:
			f.cur, f.curBuf, f.err = c.buf[:c.n], c.buf, c.err
		case <-f.ctx.Done():
			return 0, f.ctx.Err()
		}
	}
	n := copy(p, f.cur)
	f.cur = f.cur[n:]
	return n, nil
}
