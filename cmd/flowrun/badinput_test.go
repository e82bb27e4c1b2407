package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// badInputFlow sends every outcome, results and failures of both the source
// and the store, to stdout.
const badInputFlow = `name: bad
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state }
  results: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> results/in
  - store/out -> results/in
  - store/err -> results/in
`

// repeatReader yields prefix, n copies of b, then suffix, without holding
// more than one copy of anything.
func repeatReader(prefix string, b byte, n int, suffix string) io.Reader {
	return io.MultiReader(strings.NewReader(prefix), io.LimitReader(byteReader(b), int64(n)), strings.NewReader(suffix))
}

type byteReader byte

func (r byteReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// watchHeap samples the heap in use until the returned function is called,
// which returns the largest growth seen over the starting value.
func watchHeap() func() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapInuse, ms.HeapInuse
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapInuse)
			}
		}
	}()
	return func() uint64 {
		close(stop)
		<-done
		return peak - base
	}
}

// nested returns n opening brackets, inner, then n closing ones.
func nested(n int, inner string) string {
	return strings.Repeat("[", n) + inner + strings.Repeat("]", n)
}

func ev(meta, data string) string {
	if data == "" {
		return `{"meta":` + meta + `}`
	}
	return `{"data":` + data + `,"meta":` + meta + `}`
}

// TestBadInput runs `flowrun run` on input whose second line is bad, and
// checks that the line gets one clear error (naming the line when the
// source refused it), that the next line is still processed and that the
// store holds exactly what the first, valid line wrote.
func TestBadInput(t *testing.T) {
	type tc struct {
		name string
		line string    // the bad line (without newline)
		big  io.Reader // instead of line: a generated line
		want string    // substring of meta.error
		// lineNo: the error comes from the source and names line 2.
		lineNo bool
	}
	kvCmd := func(fields string) string { return `{"kv":{` + fields + `},"correlation":"bad"}` }
	tests := []tc{
		{name: "malformed JSON", line: `{"data": oops`, want: "invalid JSON", lineNo: true},
		{name: "truncated line", line: `{"data":1,"meta":{"kv":{"put":"x"}`, want: "invalid JSON", lineNo: true},
		{name: "not an event object", line: `[1,2,3]`, want: "expected an event object", lineNo: true},
		{name: "meta not an object", line: `{"data":1,"meta":"kv"}`, want: `"meta" must be a JSON object`, lineNo: true},
		{name: "kv a string", line: ev(`{"kv":"put"}`, `1`), want: "invalid command"},
		{name: "kv an array", line: ev(`{"kv":[{"put":"x"}]}`, `1`), want: "invalid command"},
		{name: "kv null", line: ev(`{"kv":null}`, `1`), want: "invalid command"},
		{name: "no kv", line: ev(`{"other":1}`, `1`), want: "invalid command"},
		{name: "two commands", line: ev(kvCmd(`"put":"x","delete":"before"`), `1`), want: "invalid command"},
		// Duplicate object keys anywhere (I-JSON, RFC 7493): refused by
		// the source, so no two components read the line differently.
		{name: "field twice", line: ev(kvCmd(`"put":"x","put":"y"`), `1`), want: `duplicate object key "put" at meta.kv.put`, lineNo: true},
		{name: "field twice, escaped", line: ev(kvCmd(`"put":"x","p\u0075t":"y"`), `1`), want: `duplicate object key "put" at meta.kv.put`, lineNo: true},
		{name: "duplicate key in data", line: ev(kvCmd(`"put":"x"`), `{"amount":5,"amount":1000000}`), want: `duplicate object key "amount" at data.amount`, lineNo: true},
		{name: "duplicate key nested deep", line: ev(kvCmd(`"put":"x"`), `{"a":[1,{"b":{"c":{"d":1,"d":2}}}]}`), want: `duplicate object key "d" at data.a[1].b.c.d`, lineNo: true},
		{name: "duplicate correlation", line: `{"data":1,"meta":{"kv":{"put":"x"},"correlation":"bad","correlation":"other"}}`, want: `duplicate object key "correlation" at meta.correlation`, lineNo: true},
		{name: "duplicate data", line: `{"data":1,"meta":{"kv":{"put":"x"}},"data":2}`, want: `duplicate object key "data" at data`, lineNo: true},
		// Lone surrogate escapes and invalid UTF-8 in keys, and anywhere in
		// meta: refused by the source (decoded, they would all be U+FFFD).
		{name: "lone surrogates in data keys", line: ev(kvCmd(`"put":"x"`), `{"\ud800":1,"\udfff":2}`), want: "lone surrogate escape in an object key at data", lineNo: true},
		{name: "lone surrogate in a meta key", line: ev(`{"kv":{"put":"x"},"\udc00":1}`, `1`), want: "lone surrogate escape in an object key at meta", lineNo: true},
		{name: "lone surrogate in the kv key", line: ev(kvCmd(`"put":"\ud800"`), `1`), want: "lone surrogate escape at meta.kv.put", lineNo: true},
		{name: "invalid UTF-8 in a data key", line: ev(kvCmd(`"put":"x"`), "{\"a\xff\":1}"), want: "invalid UTF-8 in an object key at data", lineNo: true},
		{name: "invalid UTF-8 correlation", line: "{\"data\":1,\"meta\":{\"kv\":{\"put\":\"x\"},\"correlation\":\"b\xffad\"}}", want: "invalid UTF-8 at meta.correlation", lineNo: true},
		{name: "unknown command", line: ev(kvCmd(`"frobnicate":"before"`), ``), want: "unknown command"},
		{name: "no command", line: ev(kvCmd(`"by":1`), ``), want: ""},
		// Wrong types, field by field.
		{name: "key a number", line: ev(kvCmd(`"put":5`), `1`), want: "invalid key"},
		{name: "key an object", line: ev(kvCmd(`"delete":{"k":1}`), ``), want: "invalid key"},
		{name: "key null", line: ev(kvCmd(`"increment":null`), ``), want: "invalid key"},
		{name: "ttl a string", line: ev(kvCmd(`"put":"x","ttl":"5"`), `1`), want: "invalid command"},
		{name: "ttl negative", line: ev(kvCmd(`"put":"x","ttl":-1`), `1`), want: "invalid command"},
		{name: "ttl zero", line: ev(kvCmd(`"put":"x","ttl":0`), `1`), want: "invalid command"},
		{name: "expire_at a float", line: ev(kvCmd(`"put":"x","expire_at":1.5`), `1`), want: "invalid command"},
		{name: "expire_at a string", line: ev(kvCmd(`"cas":"x","expire_at":"soon"`), `1`), want: "invalid command"},
		{name: "ttl and expire_at", line: ev(kvCmd(`"put":"x","ttl":5,"expire_at":99999999999999`), `1`), want: "invalid command"},
		{name: "by a string", line: ev(kvCmd(`"increment":"before","by":"2"`), ``), want: "invalid command"},
		{name: "by a bool", line: ev(kvCmd(`"increment":"before","by":true`), ``), want: "invalid command"},
		{name: "limit negative", line: ev(kvCmd(`"keys":"","limit":-1`), ``), want: "invalid command"},
		{name: "limit a float", line: ev(kvCmd(`"scan":"","limit":1.5`), ``), want: "invalid command"},
		{name: "limit a string", line: ev(kvCmd(`"scan":"","limit":"3"`), ``), want: "invalid command"},
		{name: "end a number", line: ev(kvCmd(`"scan":"","end":9`), ``), want: "invalid command"},
		{name: "after a number", line: ev(kvCmd(`"keys":"","after":9`), ``), want: "invalid command"},
		{name: "prefix a number", line: ev(kvCmd(`"clear":1`), ``), want: "invalid key"},
		{name: "old missing on cad", line: ev(kvCmd(`"cad":"before"`), ``), want: ""},
		{name: "field of another command", line: ev(kvCmd(`"get":"before","by":1`), ``), want: "invalid command"},
		{name: "value outside a batch", line: ev(kvCmd(`"put":"x","value":1`), `1`), want: "invalid command"},
		{name: "batch not an array", line: ev(kvCmd(`"batch":{"put":"x"}`), ``), want: ""},
		{name: "batch element not an object", line: ev(kvCmd(`"batch":[{"put":"x","value":1},"get"]`), ``), want: "batch[1]"},
		{name: "batch element fails", line: ev(kvCmd(`"batch":[{"put":"x","value":1},{"increment":"x","by":"no"}]`), ``), want: "batch[1]"},
		{name: "put without data", line: ev(kvCmd(`"put":"x"`), ``), want: "null value"},
		// Keys.
		{name: "empty key", line: ev(kvCmd(`"put":""`), `1`), want: "invalid key"},
		{name: "key of 10000 characters", line: ev(kvCmd(`"put":"`+strings.Repeat("k", 10000)+`"`), `1`), want: "key too long"},
		{name: "invalid UTF-8 key", line: ev(kvCmd("\"put\":\"a\xff\xfeb\""), `1`), want: "invalid UTF-8 at meta.kv.put", lineNo: true},
		{name: "truncated UTF-8 key", line: ev(kvCmd("\"get\":\"\xe6\x97\""), ``), want: "invalid UTF-8 at meta.kv.get", lineNo: true},
		// Values.
		{name: "value over the size limit", big: repeatReader(`{"meta":{"kv":{"put":"x"},"correlation":"bad"},"data":"`, 'v', 5<<20, "\"}\n"), want: "value too large"},
		{name: "10000-level nested data", line: ev(kvCmd(`"put":"x"`), nested(10000, "1")), want: "invalid JSON"},
		{name: "10000-level nested field", line: ev(kvCmd(`"put":"x","ttl":`+nested(10000, "")), `1`), want: "invalid command"},
		{name: "10000-level nested meta", line: `{"data":1,"meta":{"kv":{"put":"x"},"deep":` + nested(10000, "") + `}`, want: "invalid JSON", lineNo: true},
		{name: "100 MB line", big: repeatReader(`{"meta":{"kv":{"put":"x"}},"data":"`, 'x', 100<<20, "\"}\n"), want: "longer than the limit", lineNo: true},
		{name: "NaN data", line: `{"data":NaN,"meta":{"kv":{"put":"x"}}}`, want: "invalid JSON", lineNo: true},
		{name: "Infinity data", line: `{"data":Infinity,"meta":{"kv":{"put":"x"}}}`, want: "invalid JSON", lineNo: true},
		{name: "-Infinity by", line: `{"meta":{"kv":{"increment":"before","by":-Infinity}}}`, want: "invalid JSON", lineNo: true},
		{name: "by beyond float64", line: ev(kvCmd(`"increment":"before","by":1e999`), ``), want: ""},
		{name: "by beyond int64", line: ev(kvCmd(`"increment":"before","by":9223372036854775807`), ``), want: "numeric overflow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			flow := filepath.Join(dir, "flow.yaml")
			if err := os.WriteFile(flow, []byte(badInputFlow), 0o644); err != nil {
				t.Fatal(err)
			}
			bad := tt.big
			if bad == nil {
				bad = strings.NewReader(tt.line + "\n")
			}
			in := io.MultiReader(
				strings.NewReader(`{"data":1,"meta":{"kv":{"put":"before"},"correlation":"before"}}`+"\n"),
				bad,
				strings.NewReader(`{"meta":{"kv":{"get_all":null},"correlation":"after"}}`+"\n"+
					`{"meta":{"kv":{"count":null},"correlation":"count"}}`+"\n"))
			peak := watchHeap()
			var out, errOut bytes.Buffer
			code := execute(env{stdin: in, stdout: &out, stderr: &errOut}, []string{"run", flow})
			grown := peak()
			if code != 0 {
				t.Fatalf("exit %d; stderr:\n%s", code, errOut.String())
			}
			// Results and errors reach stdout through different links, so
			// their relative order is not fixed: find each by correlation.
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			for _, l := range lines {
				assertValidLine(t, l)
			}
			if len(lines) != 4 {
				t.Fatalf("got %d output lines, want 4 (put, error, get_all, count):\n%.2000s", len(lines), out.String())
			}
			var errLine string
			byCorr := map[string]string{}
			for _, l := range lines {
				if gjson.Get(l, "meta.error").Exists() {
					if errLine != "" {
						t.Fatalf("two error lines:\n%.500s\n%.500s", errLine, l)
					}
					errLine = l
					continue
				}
				byCorr[gjson.Get(l, "meta.correlation").String()] = l
			}
			if errLine == "" || byCorr["before"] == "" || byCorr["after"] == "" || byCorr["count"] == "" {
				t.Fatalf("want one error and the results of lines 1, 3 and 4:\n%.2000s", out.String())
			}
			lines = []string{byCorr["before"], errLine, byCorr["after"], byCorr["count"]}
			msg := gjson.Get(lines[1], "meta.error")
			if msg.Type != gjson.String || !strings.Contains(msg.Str, tt.want) {
				t.Fatalf("bad line gave %.500s, want meta.error containing %q", lines[1], tt.want)
			}
			if len(msg.Str) > 300 {
				t.Errorf("error message is %d bytes: too long to read", len(msg.Str))
			}
			if tt.lineNo && (!strings.Contains(msg.Str, "line 2") || gjson.Get(lines[1], "meta.line").Int() != 2) {
				t.Errorf("source error does not name line 2: %s", msg.Str)
			}
			if !tt.lineNo && tt.line != "" && gjson.Get(tt.line, "meta.correlation").Exists() &&
				gjson.Get(lines[1], "meta.correlation").String() != "bad" {
				t.Errorf("error lost the correlation: %.300s", lines[1])
			}
			// The store is unchanged: only the first line's write.
			if got := gjson.Get(lines[2], "data").Raw; got != `{"before":1}` {
				t.Errorf("store after the bad line holds %.300s, want only before=1", got)
			}
			if got := gjson.Get(lines[3], "data").Raw; got != "1" {
				t.Errorf("count after the bad line = %s, want 1", got)
			}
			// The reader keeps at most max_line_bytes (16 MiB) of a line;
			// holding a 100 MB line whole would show here.
			if grown > 80<<20 {
				t.Errorf("heap grew by %d MiB while handling the input: the line was buffered", grown>>20)
			}
		})
	}
}

// assertValidLine fails t unless l is valid UTF-8 JSON (encoding/json
// refuses nesting deeper than 10000 levels, which is valid JSON: gjson
// judges those lines).
func assertValidLine(t *testing.T, l string) {
	t.Helper()
	valid := json.Valid([]byte(l)) || strings.Count(l, "[")+strings.Count(l, "{") > 10000 && gjson.Valid(l)
	if !utf8.ValidString(l) || !valid {
		t.Errorf("output line is not valid UTF-8 JSON: %.300q", l)
	}
}

// TestEdgeValuesAccepted covers input that is not an error: numbers beyond
// int64 are stored exactly as written (and refused by increment), invalid
// UTF-8 inside a value is stored as U+FFFD, as docs/kv.md specifies.
func TestEdgeValuesAccepted(t *testing.T) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(badInputFlow), 0o644); err != nil {
		t.Fatal(err)
	}
	const big = `123456789012345678901234567890123456789`
	input := ev(`{"kv":{"put":"big"},"correlation":1}`, big) + "\n" +
		ev(`{"kv":{"put":"neg"},"correlation":2}`, `-9223372036854775809`) + "\n" +
		ev(`{"kv":{"put":"exp"},"correlation":3}`, `1.5e308`) + "\n" +
		ev(`{"kv":{"increment":"big"},"correlation":4}`, ``) + "\n" +
		ev(`{"kv":{"increment":"neg","by":-1},"correlation":5}`, ``) + "\n" +
		ev(`{"kv":{"increment":"exp","by":1e308},"correlation":6}`, ``) + "\n" +
		ev(`{"kv":{"put":"utf"},"correlation":7}`, "\"a\xffb\"") + "\n" +
		ev(`{"kv":{"put":"sur"},"correlation":9}`, `"a\ud800b"`) + "\n" +
		ev(`{"kv":{"get_all":null},"correlation":8}`, ``) + "\n"
	code, out, stderr := runCLI(t, input, "run", flow)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// Results and errors reach stdout through different links: order the
	// lines by correlation.
	lines := make([]string, 9)
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		assertValidLine(t, l)
		if c := gjson.Get(l, "meta.correlation").Int(); c >= 1 && c <= 9 {
			lines[c-1] = l
		}
	}
	for i, l := range lines {
		if l == "" {
			t.Fatalf("no output for line %d:\n%s", i+1, out)
		}
	}
	if d := gjson.Get(lines[0], "data").Raw; d != big {
		t.Errorf("put of a number beyond int64 returned %s, want it exactly", d)
	}
	for i := 3; i <= 5; i++ {
		if !gjson.Get(lines[i], "meta.error").Exists() {
			t.Errorf("increment of an out-of-range number succeeded: %s", lines[i])
		}
	}
	all := gjson.Get(lines[7], "data")
	if all.Get("big").Raw != big || all.Get("neg").Raw != `-9223372036854775809` || all.Get("exp").Raw != `1.5e308` {
		t.Errorf("numbers not stored exactly as given: %s", all.Raw)
	}
	if u := all.Get("utf").Str; u != "a\uFFFDb" {
		t.Errorf("invalid UTF-8 in a value stored as %q, want %q", u, "a\uFFFDb")
	}
	if u := all.Get("sur").Str; u != "a\uFFFDb" {
		t.Errorf("a lone surrogate escape in a value stored as %q, want %q", u, "a\uFFFDb")
	}
}

// readingFlow runs an event through an expression (set), a Lua script and
// the kv store, each recording what it read.
const readingFlow = `name: reading
connectors:
  input:  { type: stdin }
  check:  { type: lua, file: check.lua }
  store:  { type: kv, dir: state }
  out:    { type: stdout }
pipelines:
  mark:
    - set:
        data.expr_s: 'data.s == "x\uFFFDy"'
        data.expr_t: 'data.t == "\uFFFD"'
        meta.kv: '{"put": "k"}'
links:
  - input/out -> mark/in
  - input/err -> out/in
  - mark/out -> check/in
  - mark/err -> out/in
  - check/out -> store/in
  - check/err -> out/in
  - store/out -> out/in
  - store/err -> out/in
`

// TestOneReadingOfEveryEvent: invalid UTF-8 and a lone surrogate escape in
// string values of data are repaired by the source, so expressions, Lua
// and the stored canonical form all read U+FFFD, and the output is valid.
func TestOneReadingOfEveryEvent(t *testing.T) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(readingFlow), 0o644); err != nil {
		t.Fatal(err)
	}
	script := "local d = event.data\nd.lua_s = (d.s == \"x\\239\\191\\189y\")\nd.lua_t = (d.t == \"\\239\\191\\189\")\nemit(\"out\", d)\n"
	if err := os.WriteFile(filepath.Join(dir, "check.lua"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI(t, "{\"data\":{\"s\":\"x\xffy\",\"t\":\"\\ud800\"}}\n", "run", flow)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	line := strings.TrimSuffix(out, "\n")
	assertValidLine(t, line)
	data := gjson.Get(line, "data")
	for _, f := range []string{"expr_s", "expr_t", "lua_s", "lua_t"} {
		if data.Get(f).Type != gjson.True {
			t.Errorf("%s = %s: the component did not read U+FFFD; stored %s", f, data.Get(f).Raw, data.Raw)
		}
	}
	if s, tt := data.Get("s").Str, data.Get("t").Str; s != "x\uFFFDy" || tt != "\uFFFD" {
		t.Errorf("stored s=%q t=%q, want U+FFFD in both", s, tt)
	}
}
