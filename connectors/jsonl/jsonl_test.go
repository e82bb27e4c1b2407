package jsonl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// recorder is a SourceEmitter that records emitted events per port and
// counts flushes.
type recorder struct {
	mu      sync.Mutex
	events  map[string][]pipeline.Event
	order   []string // the port of every event, in emission order
	flushes int
	flushed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{events: map[string][]pipeline.Event{}, flushed: make(chan struct{}, 1000)}
}

func (r *recorder) Emit(port string, ev pipeline.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events[port] = append(r.events[port], ev)
	r.order = append(r.order, port)
}

func (r *recorder) Flush(context.Context) error {
	r.mu.Lock()
	r.flushes++
	r.mu.Unlock()
	r.flushed <- struct{}{}
	return nil
}

func (r *recorder) lines(port string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, ev := range r.events[port] {
		out = append(out, string(ev.AppendJSON(nil)))
	}
	return out
}

// lineNumbers returns, for every event emitted, the number of the input
// line it stands for: the reader emits one event per non-blank line, in
// order, and for blank lines longer than limit bytes (when limit > 0). It
// fails the test when the counts differ.
func (r *recorder) lineNumbers(t testing.TB, input string, limit int) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	lines := strings.Split(input, "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var nums []uint64
	for i, l := range lines {
		if strings.TrimSpace(l) != "" || (limit > 0 && len(strings.TrimRight(l, "\r\n")) > limit) {
			nums = append(nums, uint64(i+1))
		}
	}
	if len(nums) != len(r.order) {
		t.Fatalf("%d events for %d non-blank lines", len(r.order), len(nums))
	}
	return nums
}

// seqs returns the input line numbers of the events emitted on port.
func (r *recorder) seqs(t testing.TB, input, port string) []uint64 {
	nums := r.lineNumbers(t, input, 0)
	var out []uint64
	for i, p := range r.order {
		if p == port {
			out = append(out, nums[i])
		}
	}
	return out
}

func TestReaderDecode(t *testing.T) {
	tests := []struct {
		name     string
		codec    string
		input    string
		out      []string
		outSeq   []uint64
		errMeta  []string
		errData  []string
		errorsIs error
	}{
		{
			name:   "event codec",
			input:  `{"data":{"a":1},"meta":{"kv":{"get":"k"}}}` + "\n" + `{"data":2}` + "\n",
			out:    []string{`{"data":{"a":1},"meta":{"kv":{"get":"k"}}}`, `{"data":2,"meta":{}}`},
			outSeq: []uint64{1, 2},
		},
		{
			name:   "blank lines skipped but counted, CRLF, no final newline",
			input:  "\n  \r\n" + `{"data":"x"}` + "\r\n\n" + `{"meta":{"m":true}}`,
			out:    []string{`{"data":"x","meta":{}}`, `{"data":null,"meta":{"m":true}}`},
			outSeq: []uint64{3, 5},
		},
		{
			name:   "meta null is empty",
			input:  `{"data":1,"meta":null}`,
			out:    []string{`{"data":1,"meta":{}}`},
			outSeq: []uint64{1},
		},
		{
			name:    "invalid JSON",
			input:   `{"data":1}` + "\n" + `{"data":` + "\n" + `{"data":3}`,
			out:     []string{`{"data":1,"meta":{}}`, `{"data":3,"meta":{}}`},
			outSeq:  []uint64{1, 3},
			errMeta: []string{`{"error":"in: line 2: invalid JSON: unexpected end of JSON input (at byte 8)","line":2}`},
			errData: []string{`"{\"data\":"`},
		},
		{
			name:    "not an object",
			input:   `[1,2]`,
			errMeta: []string{`{"error":"in: line 1: expected an event object {\"data\": ..., \"meta\": {...}}","line":1}`},
			errData: []string{`"[1,2]"`},
		},
		{
			name:    "neither data nor meta",
			input:   `{"dta":1}`,
			errMeta: []string{`{"error":"in: line 1: expected an event object {\"data\": ..., \"meta\": {...}}, found neither \"data\" nor \"meta\"","line":1}`},
			errData: []string{`"{\"dta\":1}"`},
		},
		{
			name:    "meta not an object",
			input:   `{"data":1,"meta":[1]}`,
			errMeta: []string{`{"error":"in: line 1: \"meta\" must be a JSON object","line":1}`},
			errData: []string{`"{\"data\":1,\"meta\":[1]}"`},
		},
		{
			name:     "duplicate key in data",
			input:    `{"data":{"amount":5,"amount":1000000},"meta":{"kv":{"put":"k"}}}`,
			errMeta:  []string{`{"error":"in: line 1: duplicate object key \"amount\" at data.amount (byte 20)","line":1}`},
			errData:  []string{`"{\"data\":{\"amount\":5,\"amount\":1000000},\"meta\":{\"kv\":{\"put\":\"k\"}}}"`},
			errorsIs: ijson.ErrDuplicateKey,
		},
		{
			name:     "duplicate key in meta.kv, escaped",
			input:    `{"data":1,"meta":{"kv":{"put":"a","p\u0075t":"b"}}}`,
			errMeta:  []string{`{"error":"in: line 1: duplicate object key \"put\" at meta.kv.put (byte 34)","line":1}`},
			errData:  []string{`"{\"data\":1,\"meta\":{\"kv\":{\"put\":\"a\",\"p\\u0075t\":\"b\"}}}"`},
			errorsIs: ijson.ErrDuplicateKey,
		},
		{
			name:     "duplicate top-level data",
			input:    `{"data":1,"data":2}`,
			errMeta:  []string{`{"error":"in: line 1: duplicate object key \"data\" at data (byte 10)","line":1}`},
			errData:  []string{`"{\"data\":1,\"data\":2}"`},
			errorsIs: ijson.ErrDuplicateKey,
		},
		{
			name:     "lone surrogate in a key",
			input:    `{"data":{"\ud800":1,"\udfff":2}}`,
			errMeta:  []string{"{\"error\":\"in: line 1: lone surrogate escape in an object key at data[\\\"\uFFFD\\\"] (byte 9)\",\"line\":1}"},
			errData:  []string{`"{\"data\":{\"\\ud800\":1,\"\\udfff\":2}}"`},
			errorsIs: ijson.ErrLoneSurrogate,
		},
		{
			name:     "invalid UTF-8 in meta",
			input:    "{\"data\":1,\"meta\":{\"correlation\":\"a\xffb\"}}",
			errMeta:  []string{`{"error":"in: line 1: invalid UTF-8 at meta.correlation (byte 32)","line":1}`},
			errData:  []string{`"{\"data\":1,\"meta\":{\"correlation\":\"a\ufffdb\"}}"`},
			errorsIs: ijson.ErrInvalidUTF8,
		},
		{
			name:     "invalid UTF-8 in an escaped meta",
			input:    "{\"data\":1,\"m\\u0065ta\":{\"correlation\":\"a\xffb\"}}",
			errMeta:  []string{`{"error":"in: line 1: invalid UTF-8 at meta.correlation (byte 37)","line":1}`},
			errData:  []string{`"{\"data\":1,\"m\\u0065ta\":{\"correlation\":\"a\ufffdb\"}}"`},
			errorsIs: ijson.ErrInvalidUTF8,
		},
		{
			name:     "lone surrogate in a kv key",
			input:    `{"meta":{"kv":{"put":"\udfff"}}}`,
			errMeta:  []string{`{"error":"in: line 1: lone surrogate escape at meta.kv.put (byte 21)","line":1}`},
			errData:  []string{`"{\"meta\":{\"kv\":{\"put\":\"\\udfff\"}}}"`},
			errorsIs: ijson.ErrLoneSurrogate,
		},
		{
			name:   "invalid UTF-8 and lone surrogates in data are repaired",
			input:  "{\"data\":{\"a\":\"x\xffy\",\"b\":[\"\\ud800\",\"\\ud83d\\ude00\"]},\"meta\":{\"kv\":{\"put\":\"k\"}}}\n",
			out:    []string{"{\"data\":{\"a\":\"x\uFFFDy\",\"b\":[\"\\ufffd\",\"\\ud83d\\ude00\"]},\"meta\":{\"kv\":{\"put\":\"k\"}}}"},
			outSeq: []uint64{1},
		},
		{
			name:   "json codec repairs",
			codec:  CodecJSON,
			input:  "{\"a\":\"\xfe\\udc00\"}",
			out:    []string{"{\"data\":{\"a\":\"\uFFFD\\ufffd\"},\"meta\":{}}"},
			outSeq: []uint64{1},
		},
		{
			name:     "json codec duplicate",
			codec:    CodecJSON,
			input:    `[{"a":1,"a":1}]`,
			errMeta:  []string{`{"error":"in: line 1: duplicate object key \"a\" at [0].a (byte 8)","line":1}`},
			errData:  []string{`"[{\"a\":1,\"a\":1}]"`},
			errorsIs: ijson.ErrDuplicateKey,
		},
		{
			name:   "json codec",
			codec:  CodecJSON,
			input:  `{"a":1}` + "\n" + `"s"` + "\n" + `[1]`,
			out:    []string{`{"data":{"a":1},"meta":{}}`, `{"data":"s","meta":{}}`, `{"data":[1],"meta":{}}`},
			outSeq: []uint64{1, 2, 3},
		},
		{
			name:    "json codec invalid",
			codec:   CodecJSON,
			input:   `{"a":}`,
			errMeta: []string{`{"error":"in: line 1: invalid JSON: invalid character '}' looking for beginning of value (at byte 6)","line":1}`},
			errData: []string{`"{\"a\":}"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := newRecorder()
			var hooked []error
			src := NewReader(strings.NewReader(tt.input), ReaderOptions{Name: "in", Codec: tt.codec,
				OnError: func(ev pipeline.Event, err error) error {
					hooked = append(hooked, err)
					return nil
				}})
			if err := src.Run(context.Background(), rec); err != nil {
				t.Fatalf("Run: %v", err)
			}
			assertEqual(t, "out", rec.lines("out"), tt.out)
			assertEqual(t, "out seq", rec.seqs(t, tt.input, "out"), tt.outSeq)
			var metas, datas []string
			for _, ev := range rec.events["err"] {
				metas = append(metas, string(ev.Meta))
				datas = append(datas, string(ev.Data))
			}
			assertEqual(t, "err meta", metas, tt.errMeta)
			assertEqual(t, "err data", datas, tt.errData)
			if len(hooked) != len(tt.errMeta) {
				t.Fatalf("OnError called %d times, want %d", len(hooked), len(tt.errMeta))
			}
			for _, err := range hooked {
				if !errors.Is(err, ErrInvalidLine) {
					t.Errorf("OnError error %v is not ErrInvalidLine", err)
				}
				if tt.errorsIs != nil && !errors.Is(err, tt.errorsIs) {
					t.Errorf("OnError error %v is not %v", err, tt.errorsIs)
				}
			}
		})
	}
}

func assertEqual[T comparable](t *testing.T, what string, got, want []T) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d items %v, want %d %v", what, len(got), got, len(want), want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s[%d]:\n got  %v\n want %v", what, i, got[i], want[i])
		}
	}
}

func TestReaderOnErrorAborts(t *testing.T) {
	stop := errors.New("strict")
	rec := newRecorder()
	src := NewReader(strings.NewReader("{\"data\":1}\nbad\n{\"data\":3}\n"), ReaderOptions{
		OnError: func(ev pipeline.Event, err error) error {
			var le *LineError
			if !errors.As(err, &le) || le.Line != 2 {
				t.Errorf("OnError got %v, want a *LineError for line 2", err)
			}
			return stop
		}})
	if err := src.Run(context.Background(), rec); !errors.Is(err, stop) {
		t.Fatalf("Run = %v, want %v", err, stop)
	}
	if got := rec.lines("out"); len(got) != 1 {
		t.Fatalf("emitted %v after aborting, want only line 1", got)
	}
}

func TestReaderUnknownCodec(t *testing.T) {
	src := NewReader(strings.NewReader(""), ReaderOptions{Codec: "xml"})
	if err := src.Run(context.Background(), newRecorder()); !errors.Is(err, ErrUnknownCodec) {
		t.Fatalf("Run = %v, want ErrUnknownCodec", err)
	}
}

// zeros is a reader producing n bytes of 'x' without holding them.
type zeros struct{ n int }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), z.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	z.n -= k
	return k, nil
}

func TestReaderOverlongLineIsSkippedWithoutBuffering(t *testing.T) {
	const lineLen = 100 << 20
	in := io.MultiReader(strings.NewReader(`{"data":1}`+"\n"), &zeros{n: lineLen}, strings.NewReader("\n"+`{"data":3}`+"\n"))
	rec := newRecorder()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	src := NewReader(in, ReaderOptions{Name: "big", MaxLineBytes: 1 << 20})
	if err := src.Run(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("reading a %d-byte line allocated %d bytes; it must be skipped, not buffered", lineLen, alloc)
	}
	if got := fmt.Sprint(rec.order); got != "[out err out]" {
		t.Errorf("ports in order %s, want [out err out]", got)
	}
	errs := rec.events["err"]
	if len(errs) != 1 {
		t.Fatalf("got %d error events, want 1", len(errs))
	}
	want := `{"error":"big: line 2: line is 104857600 bytes, longer than the limit of 1048576 bytes","line":2}`
	if string(errs[0].Meta) != want {
		t.Errorf("error meta\n got  %s\n want %s", errs[0].Meta, want)
	}
	if n := len(errs[0].Data); n > maxRawErrorBytes+2 || n < 100 {
		t.Errorf("error data is %d bytes, want a truncated copy of at most %d", n, maxRawErrorBytes+2)
	}
}

func TestReaderAcceptsLineAtLimit(t *testing.T) {
	payload := `"` + strings.Repeat("y", 200<<10) + `"`
	line := `{"data":` + payload + `}`
	rec := newRecorder()
	src := NewReader(strings.NewReader(line+"\n"), ReaderOptions{MaxLineBytes: len(line)})
	if err := src.Run(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if got := rec.events["out"]; len(got) != 1 || string(got[0].Data) != payload {
		t.Fatalf("line of exactly MaxLineBytes was not read back intact (%d events, %d errors)", len(got), len(rec.events["err"]))
	}
}

func TestReaderFlushesInteractiveInput(t *testing.T) {
	pr, pw := io.Pipe()
	rec := newRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- NewReader(pr, ReaderOptions{}).Run(ctx, rec) }()
	for i := 1; i <= 3; i++ {
		if _, err := pw.Write([]byte(`{"data":1}` + "\n")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-rec.flushed:
		case <-time.After(5 * time.Second):
			t.Fatalf("line %d was not flushed while the input waits for more", i)
		}
		if n := len(rec.lines("out")); n != i {
			t.Fatalf("after line %d, %d events emitted", i, n)
		}
	}
	// Cancelling stops Run promptly although the pipe blocks.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after ctx was cancelled")
	}
	pw.Close()
}

func TestReaderFlushEvery(t *testing.T) {
	var b strings.Builder
	for range 1000 {
		b.WriteString(`{"data":1}` + "\n")
	}
	rec := newRecorder()
	if err := NewReader(strings.NewReader(b.String()), ReaderOptions{FlushEvery: 100}).Run(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.lines("out")); n != 1000 {
		t.Fatalf("%d events, want 1000", n)
	}
	if rec.flushes < 10 || rec.flushes > 12 {
		t.Errorf("%d flushes for 1000 events with FlushEvery 100", rec.flushes)
	}
}

// TestReaderFlushBytes: events of 10,000 bytes are flushed in slices of
// at most FlushBytes (here 100,000: 10 events), long before FlushEvery,
// so that a slice of large events is bounded in bytes.
func TestReaderFlushBytes(t *testing.T) {
	var b strings.Builder
	big := strings.Repeat("x", 10_000)
	for range 1000 {
		b.WriteString(`{"data":"` + big + `"}` + "\n")
	}
	rec := newRecorder()
	if err := NewReader(strings.NewReader(b.String()), ReaderOptions{FlushEvery: 1000, FlushBytes: 100_000}).Run(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.lines("out")); n != 1000 {
		t.Fatalf("%d events, want 1000", n)
	}
	if rec.flushes < 100 || rec.flushes > 102 {
		t.Errorf("%d flushes for 1000 events of 10 kB with FlushBytes 100,000, want 100", rec.flushes)
	}
}

func TestWriterCodecs(t *testing.T) {
	events := []pipeline.Event{
		{Data: []byte(`{"a":1}`), Meta: []byte(`{"m":2}`)},
		{},
	}
	tests := []struct {
		codec string
		want  string
	}{
		{CodecEvent, `{"data":{"a":1},"meta":{"m":2}}` + "\n" + `{"data":null,"meta":{}}` + "\n"},
		{CodecJSON, `{"a":1}` + "\n" + "null\n"},
	}
	for _, tt := range tests {
		t.Run(tt.codec, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(&buf, WriterOptions{Codec: tt.codec})
			if err := w.Process(context.Background(), events, nil); err != nil {
				t.Fatal(err)
			}
			// Flushed after the slice, before Close.
			if buf.String() != tt.want {
				t.Errorf("got %q, want %q", buf.String(), tt.want)
			}
			if err := w.(pipeline.Closer).Close(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestWriterReportsWriteErrors(t *testing.T) {
	w := NewWriter(failWriter{}, WriterOptions{Name: "out"})
	err := w.Process(context.Background(), []pipeline.Event{{Data: []byte("1")}}, nil)
	if err == nil || !strings.Contains(err.Error(), "out: write: broken pipe") {
		t.Fatalf("Process = %v, want the write error", err)
	}
}

func TestFileModes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "out.jsonl")
	write := func(mode Mode, data string) {
		t.Helper()
		sink, err := OpenFileSink(path, mode, WriterOptions{Codec: CodecJSON})
		if err != nil {
			t.Fatal(err)
		}
		if err := sink.Process(ctx, []pipeline.Event{{Data: []byte(data)}}, nil); err != nil {
			t.Fatal(err)
		}
		if err := sink.(pipeline.Closer).Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	read := func() string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	write(ModeTruncate, "1")
	write(ModeAppend, "2")
	if got := read(); got != "1\n2\n" {
		t.Fatalf("after truncate+append: %q", got)
	}
	write(ModeWrite, "3")
	if got := read(); got != "3\n" {
		t.Fatalf("write mode must truncate: %q", got)
	}

	src, err := OpenFileSource(path, ReaderOptions{Codec: CodecJSON})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	if err := src.Run(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := src.(pipeline.Closer).Close(ctx); err != nil {
		t.Fatal(err)
	}
	assertEqual(t, "read back", rec.lines("out"), []string{`{"data":3,"meta":{}}`})

	if _, err := OpenFileSource(filepath.Join(dir, "missing.jsonl"), ReaderOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("opening a missing file: %v, want ErrNotExist", err)
	}
	if _, err := OpenFileSink(path, ModeRead, WriterOptions{}); !errors.Is(err, ErrUnknownMode) {
		t.Errorf("sink in read mode: %v, want ErrUnknownMode", err)
	}
}

func TestReaderThroughGraph(t *testing.T) {
	var out bytes.Buffer
	g := pipeline.New(pipeline.Options{})
	in := "{\"data\":1}\nnot json\n{\"data\":2,\"meta\":{\"k\":1}}\n"
	var errs bytes.Buffer
	must(t, g.AddSource("src", NewReader(strings.NewReader(in), ReaderOptions{Name: "src"}), ReaderPorts...))
	must(t, g.AddProcessor("sink", NewWriter(&out, WriterOptions{})))
	must(t, g.AddProcessor("errs", NewWriter(&errs, WriterOptions{})))
	must(t, g.AddProcessor("null", NewNull()))
	must(t, g.Link("src", "out", "sink"))
	must(t, g.Link("src", "out", "null"))
	must(t, g.Link("src", "err", "errs"))
	must(t, g.Run(context.Background()))
	if want := "{\"data\":1,\"meta\":{}}\n{\"data\":2,\"meta\":{\"k\":1}}\n"; out.String() != want {
		t.Errorf("sink got %q, want %q", out.String(), want)
	}
	if !strings.Contains(errs.String(), `"src: line 2: invalid JSON`) {
		t.Errorf("err sink got %q", errs.String())
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkReader reads 10,000 event lines per iteration: an increment
// with an object payload, and a put with a 100-byte string value (the
// events of `flowrun bench --workload put`).
func BenchmarkReader(b *testing.B) {
	lines := map[string]string{
		"increment": `{"data":{"steam_id":"76561198000000000","count":3},"meta":{"kv":{"increment":"warnings_1"}}}`,
		"put100":    `{"data":"` + strings.Repeat("v", 98) + `","meta":{"kv":{"put":"k0000001234"}}}`,
	}
	for _, name := range []string{"increment", "put100"} {
		b.Run(name, func(b *testing.B) {
			var buf bytes.Buffer
			for range 10000 {
				buf.WriteString(lines[name] + "\n")
			}
			b.SetBytes(int64(buf.Len()))
			for b.Loop() {
				rec := &countEmitter{}
				if err := NewReader(bytes.NewReader(buf.Bytes()), ReaderOptions{}).Run(context.Background(), rec); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*10000)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkWriter writes 10,000 put results per iteration (a 100-byte
// string value and the kv connector's result meta) to io.Discard.
func BenchmarkWriter(b *testing.B) {
	events := make([]pipeline.Event, 10000)
	for i := range events {
		events[i] = pipeline.Event{Data: []byte(`"` + strings.Repeat("v", 98) + `"`),
			Meta: []byte(`{"kv":{"op":"put","key":"k0000001234","found":true},"correlation":"c-1234"}`)}
	}
	w := NewWriter(io.Discard, WriterOptions{})
	for b.Loop() {
		if err := w.Process(context.Background(), events, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(events))/b.Elapsed().Seconds(), "events/s")
}

type countEmitter struct{ n int }

func (c *countEmitter) Emit(string, pipeline.Event) { c.n++ }
func (c *countEmitter) Flush(context.Context) error { return nil }

// writes records each Write call.
type writes struct{ calls []string }

func (w *writes) Write(p []byte) (int, error) {
	w.calls = append(w.calls, string(p))
	return len(p), nil
}

func TestWriterWritesWholeLines(t *testing.T) {
	var rec writes
	w := NewWriter(&rec, WriterOptions{BufferBytes: 50})
	var events []pipeline.Event
	for i := range 20 {
		events = append(events, pipeline.Event{Data: []byte(`"` + strings.Repeat("x", i) + `"`)})
	}
	if err := w.Process(context.Background(), events, nil); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) < 5 {
		t.Fatalf("%d writes for 20 lines with a 50-byte buffer, want several", len(rec.calls))
	}
	lines := 0
	for _, c := range rec.calls {
		if !strings.HasSuffix(c, "\n") {
			t.Fatalf("write %q does not end on a line boundary", c)
		}
		lines += strings.Count(c, "\n")
	}
	if lines != 20 {
		t.Errorf("wrote %d lines, want 20", lines)
	}
}

// TestWriterLinesAreValidUTF8JSON: whatever invalid UTF-8 an event made
// inside the graph holds, even in text that is not JSON, every line
// written is valid UTF-8 JSON.
func TestWriterLinesAreValidUTF8JSON(t *testing.T) {
	events := []pipeline.Event{
		{Data: []byte(`1`), Meta: []byte("{\"correlation\":\"c\xff\"}")},
		{Data: []byte(`["\ud800","ok"]`), Meta: []byte(`{"correlation":"\udfff"}`)},
		{Data: []byte("\"\xfe\""), Meta: []byte("{\"k\xff\":1}")},
		{Data: []byte("{\"a\":\"\xff"), Meta: []byte("[\xff")},
		{Data: []byte(`{"a":1,"a":2}`)},
	}
	for _, codec := range []string{CodecEvent, CodecJSON} {
		var out bytes.Buffer
		w := NewWriter(&out, WriterOptions{Codec: codec})
		if err := w.Process(context.Background(), events, nil); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != len(events) {
			t.Fatalf("%s: %d lines for %d events", codec, len(lines), len(events))
		}
		for i, l := range lines {
			if !utf8.ValidString(l) || !json.Valid([]byte(l)) {
				t.Errorf("%s: line %d %q is not valid UTF-8 JSON", codec, i+1, l)
			}
		}
		if codec == CodecEvent && lines[0] != "{\"data\":1,\"meta\":{\"correlation\":\"c\uFFFD\"}}" {
			t.Errorf("invalid UTF-8 correlation written as %q, want it repaired", lines[0])
		}
	}
}

// TestFileSinkSymlinks: a file sink refuses a path that is a symbolic link
// (an existing target or a dangling one), leaving the target as it was,
// unless FollowSymlinks is set; links among parent directories are
// followed.
func TestFileSinkSymlinks(t *testing.T) {
	for _, mode := range []Mode{ModeWrite, ModeAppend, ModeTruncate} {
		for _, follow := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/follow=%v", mode, follow), func(t *testing.T) {
				dir := t.TempDir()
				target := filepath.Join(dir, "precious")
				must(t, os.WriteFile(target, []byte("keep\n"), 0o644))
				link := filepath.Join(dir, "out.jsonl")
				must(t, os.Symlink(target, link))
				dangling := filepath.Join(dir, "dangling.jsonl")
				must(t, os.Symlink(filepath.Join(dir, "nowhere"), dangling))

				p, err := OpenFileSink(link, mode, WriterOptions{FollowSymlinks: follow})
				if !follow {
					if !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), "follow_symlinks") {
						t.Fatalf("open through a symlink: %v, want ErrSymlink naming follow_symlinks", err)
					}
					if b, _ := os.ReadFile(target); string(b) != "keep\n" {
						t.Errorf("target changed to %q", b)
					}
					if _, err := OpenFileSink(dangling, mode, WriterOptions{}); !errors.Is(err, ErrSymlink) {
						t.Errorf("open through a dangling symlink: %v, want ErrSymlink", err)
					}
					if _, err := os.Stat(filepath.Join(dir, "nowhere")); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("the dangling link's target was created: %v", err)
					}
					return
				}
				must(t, err)
				must(t, p.Process(context.Background(), []pipeline.Event{{Data: []byte(`1`)}}, nil))
				must(t, p.(pipeline.Closer).Close(context.Background()))
				want := `{"data":1,"meta":{}}` + "\n"
				if mode == ModeAppend {
					want = "keep\n" + want
				}
				if b, _ := os.ReadFile(target); string(b) != want {
					t.Errorf("target holds %q, want %q", b, want)
				}
			})
		}
	}
	t.Run("symlinked parent directory", func(t *testing.T) {
		dir := t.TempDir()
		real := filepath.Join(dir, "real")
		must(t, os.Mkdir(real, 0o755))
		must(t, os.Symlink(real, filepath.Join(dir, "alias")))
		p, err := OpenFileSink(filepath.Join(dir, "alias", "out.jsonl"), ModeWrite, WriterOptions{})
		must(t, err)
		must(t, p.(pipeline.Closer).Close(context.Background()))
		if _, err := os.Stat(filepath.Join(real, "out.jsonl")); err != nil {
			t.Errorf("file not written through the parent link: %v", err)
		}
	})
}
