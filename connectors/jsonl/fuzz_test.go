package jsonl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// FuzzReader reads arbitrary input with both codecs and a small line limit
// and checks the Reader's contract line by line against a model built with
// encoding/json: nothing panics, every non-blank line yields exactly one
// event (on out, or on err with meta.error and meta.line), in line order,
// lines over the limit are refused, invalid JSON never reaches out,
// and every out event has valid JSON data and an object (or no) meta that
// are I-JSON: valid UTF-8, no lone surrogate escape, no object with two
// members of the same name.
func FuzzReader(f *testing.F) {
	seeds := []string{
		`{"data":1,"meta":{"kv":{"get":"a"}}}` + "\n" + `{"data":"x"}`,
		"{\"data\": oops\n\n  \r\n{\"meta\":{}}\r\n",
		`[1,2]` + "\n" + `"str"` + "\n" + `null`,
		`{"data":1,"meta":[]}` + "\n" + `{"other":1}`,
		`{"data":NaN}` + "\n" + `{"data":1e999}` + "\n" + `{"data":123456789012345678901234567890}`,
		"{\"data\":\"\xff\xfe\"}\n{\"meta\":{\"k\xc3\":1}}",
		`{"data":{"amount":5,"amount":1000000}}` + "\n" + `{"meta":{"kv":{"put":"a","p\u0075t":"b"}}}`,
		`{"data":{"\ud800":1,"\udfff":2}}` + "\n" + `{"data":["\ud800","\udc00\ud800"],"meta":{"correlation":"\udfff"}}`,
		`{"data":` + string(bytes.Repeat([]byte("["), 300)) + string(bytes.Repeat([]byte("]"), 300)) + `}`,
		`{"data":1}{"data":2}` + "\n" + `{"data":1} trailing`,
		string(bytes.Repeat([]byte("x"), 300)) + "\n" + `{"data":3}`,
	}
	for i, s := range seeds {
		f.Add([]byte(s), i%2 == 0, uint16(64+i*40))
	}
	f.Fuzz(func(t *testing.T, input []byte, jsonCodec bool, maxLine uint16) {
		limit := int(maxLine)%4096 + 1
		codec := CodecEvent
		if jsonCodec {
			codec = CodecJSON
		}
		rec := newRecorder()
		// Flush signals are not read here: make room for all of them.
		rec.flushed = make(chan struct{}, bytes.Count(input, []byte("\n"))+2)
		src := NewReader(bytes.NewReader(input), ReaderOptions{Codec: codec, MaxLineBytes: limit, FlushEvery: 3})
		if err := src.Run(context.Background(), rec); err != nil {
			t.Fatalf("Run: %v", err)
		}
		byLine := map[uint64]pipeline.Event{}
		ports := map[uint64]string{}
		next := map[string]int{}
		for i, n := range rec.lineNumbers(t, string(input), limit) {
			port := rec.order[i]
			byLine[n], ports[n] = rec.events[port][next[port]], port
			next[port]++
		}
		lines := bytes.Split(input, []byte("\n"))
		if len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		for i, line := range lines {
			n := uint64(i + 1)
			content := bytes.TrimRight(line, "\r\n")
			ev, emitted := byLine[n]
			blank := len(bytes.TrimSpace(content)) == 0
			switch {
			case len(content) > limit:
				if ports[n] != pipeline.PortErr {
					t.Fatalf("line %d is %d bytes, over the limit of %d, and was not refused (%q)", n, len(content), limit, ports[n])
				}
			case blank:
				if emitted {
					t.Fatalf("blank line %d emitted %s", n, ev.AppendJSON(nil))
				}
				continue
			case !emitted:
				t.Fatalf("line %d (%q) emitted nothing", n, content)
			case !json.Valid(bytes.TrimSpace(content)) && ports[n] != pipeline.PortErr:
				t.Fatalf("invalid JSON line %d (%q) reached out as %s", n, content, ev.AppendJSON(nil))
			}
			if ports[n] == pipeline.PortErr {
				if msg := gjson.GetBytes(ev.Meta, "error"); msg.Type != gjson.String || msg.Str == "" {
					t.Fatalf("line %d: error event without meta.error: %s", n, ev.Meta)
				}
				if l := gjson.GetBytes(ev.Meta, "line"); l.Uint() != n {
					t.Fatalf("line %d: error event names line %s", n, l.Raw)
				}
				if !json.Valid(ev.DataJSON()) || len(ev.Data) > maxRawErrorBytes*6+2 {
					t.Fatalf("line %d: error event data is not a bounded JSON string: %d bytes", n, len(ev.Data))
				}
				continue
			}
			if !json.Valid(ev.DataJSON()) {
				t.Fatalf("line %d: out data is not valid JSON: %q", n, ev.Data)
			}
			if ev.Meta != nil && (!json.Valid(ev.Meta) || ev.Meta[0] != '{') {
				t.Fatalf("line %d: out meta is not a JSON object: %q", n, ev.Meta)
			}
			for _, part := range [][]byte{ev.Data, ev.Meta} {
				if err := notIJSON(part); err != "" {
					t.Fatalf("line %d: out event %s: %s", n, ev.AppendJSON(nil), err)
				}
			}
			if jsonCodec && ev.Meta != nil {
				t.Fatalf("line %d: json codec produced meta %q", n, ev.Meta)
			}
		}
		if len(byLine) > len(lines) {
			t.Fatalf("%d events for %d lines", len(byLine), len(lines))
		}
	})
}

// notIJSON says what makes valid JSON b not I-JSON, using only encoding/json
// and a scan of the escapes: "" when it is I-JSON.
func notIJSON(b []byte) string {
	if !utf8.Valid(b) {
		return "invalid UTF-8"
	}
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if b[i+1] != 'u' {
			i++
			continue
		}
		r, _ := strconv.ParseUint(string(b[i+2:i+6]), 16, 32)
		switch {
		case r >= 0xd800 && r < 0xdc00:
			if i+12 > len(b) || b[i+6] != '\\' || b[i+7] != 'u' {
				return "lone high surrogate"
			}
			if r2, _ := strconv.ParseUint(string(b[i+8:i+12]), 16, 32); r2 < 0xdc00 || r2 > 0xdfff {
				return "lone high surrogate"
			}
			i += 11
		case r >= 0xdc00 && r <= 0xdfff:
			return "lone low surrogate"
		default:
			i += 5
		}
	}
	d := json.NewDecoder(bytes.NewReader(b))
	var stack []map[string]bool // nil for an array
	name := false               // the next string is a member name
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		if s, ok := tok.(string); ok && name {
			if stack[len(stack)-1][s] {
				return fmt.Sprintf("duplicate name %q", s)
			}
			stack[len(stack)-1][s] = true
			name = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, map[string]bool{})
			name = true
			continue
		case json.Delim('['):
			stack = append(stack, nil)
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		name = len(stack) > 0 && stack[len(stack)-1] != nil
	}
}
