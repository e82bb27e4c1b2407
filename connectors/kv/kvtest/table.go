package kvtest

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/pipeline"
)

// step is one event sent to the connector and what it must produce.
type step struct {
	ns      string        // namespace; "t" when empty
	meta    string        // the event's meta
	data    string        // the event's data; "" for none
	advance time.Duration // moves the clock before the step
	want    []string      // exact out events, in order (Out/OutC)
	err     error         // when set: exactly one err event wrapping this sentinel
	errKV   string        // when set: the err event's exact meta.kv
	errHas  []string      // substrings the err event's meta.error must contain
}

// tcase is one scenario, run on a fresh backend.
type tcase struct {
	name  string
	opts  func(*kv.Options)
	steps []step
}

// S is a step expecting out events.
func s(meta, data string, want ...string) step { return step{meta: meta, data: data, want: want} }

// e is a step expecting an err event.
func e(meta, data string, err error, errKV string, has ...string) step {
	return step{meta: meta, data: data, err: err, errKV: errKV, errHas: has}
}

func at(d time.Duration, st step) step { st.advance = d; return st }

func inNS(ns string, st step) step { st.ns = ns; return st }

// runStep sends st and checks the outcome.
func runStep(t *testing.T, h *Harness, i int, st step) {
	t.Helper()
	if st.advance != 0 {
		h.Clock.Advance(st.advance)
	}
	ns := st.ns
	if ns == "" {
		ns = "t"
	}
	got := h.Do(ns, st.meta, st.data)
	if st.err == nil {
		if g, w := join(Strings(got)), join(st.want); g != w {
			t.Fatalf("step %d: meta %s data %s:\n got: %s\nwant: %s", i, st.meta, st.data, g, w)
		}
		return
	}
	if len(got) != 1 || got[0].Port != "err" {
		t.Fatalf("step %d: meta %s data %s: want one err event (%v), got:\n%s", i, st.meta, st.data, st.err, join(Strings(got)))
	}
	checkErrEvent(t, i, Event(st.meta, st.data), got[0], st.err, st.errKV, st.errHas...)
}

// checkErrEvent checks the err event ev emitted for input in.
func checkErrEvent(t *testing.T, i int, in pipeline.Event, got Emitted, sentinel error, wantKV string, has ...string) {
	t.Helper()
	ev := got.Event
	if !bytes.Equal(ev.Data, in.Data) {
		t.Errorf("step %d: err data %q, want the original payload %q", i, ev.Data, in.Data)
	}
	if ev.Origin() != in.Origin() {
		t.Errorf("step %d: err event not derived from its input", i)
	}
	meta := gjson.ParseBytes(ev.Meta)
	if !gjson.ValidBytes(ev.Meta) || !meta.IsObject() {
		t.Fatalf("step %d: err meta is not a JSON object: %s", i, ev.Meta)
	}
	msg := meta.Get("error").String()
	if !strings.Contains(msg, sentinel.Error()) {
		t.Errorf("step %d: meta.error %q does not report %q", i, msg, sentinel)
	}
	for _, h := range has {
		if !strings.Contains(msg, h) {
			t.Errorf("step %d: meta.error %q does not mention %q", i, msg, h)
		}
	}
	if wantKV != "" {
		if g := meta.Get("kv").Raw; g != wantKV {
			t.Errorf("step %d: err meta.kv = %s, want %s", i, g, wantKV)
		}
	}
	checkCorrelation(t, i, in.Meta, ev.Meta)
	meta.ForEach(func(k, _ gjson.Result) bool {
		switch k.Str {
		case "error", "kv", "correlation":
		default:
			t.Errorf("step %d: err meta leaks field %q: %s", i, k.Str, ev.Meta)
		}
		return true
	})
}

// checkCorrelation asserts out carries in's correlation byte for byte.
func checkCorrelation(t *testing.T, i int, inMeta, outMeta []byte) {
	t.Helper()
	var want gjson.Result
	if gjson.ValidBytes(inMeta) {
		want = gjson.GetBytes(inMeta, "correlation")
	}
	got := gjson.GetBytes(outMeta, "correlation")
	if want.Exists() != got.Exists() || want.Raw != got.Raw {
		t.Errorf("step %d: correlation %q, want %q", i, got.Raw, want.Raw)
	}
}

// get is the out event of a get.
func get(key, data string, found bool) string {
	return Out(data, `"op":"get","key":`+strconv.Quote(key)+`,"found":`+strconv.FormatBool(found))
}

func op(o, key, data string, found bool, extra ...string) string {
	return Out(data, `"op":"`+o+`","key":`+strconv.Quote(key)+`,"found":`+strconv.FormatBool(found)+strings.Join(extra, ""))
}

func row(key, data string, last bool) string {
	x := ""
	if last {
		x = `,"last":true`
	}
	return op("scan", key, data, true, x)
}

// expiryJSON is the value of expiry and touch for a key with an expiry.
func expiryJSON(ttlMs, expireAt int64) string {
	return `{"ttl_ms":` + strconv.FormatInt(ttlMs, 10) + `,"expire_at":` + strconv.FormatInt(expireAt, 10) + `}`
}

func deep(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

func casesTable() []tcase {
	kvCAS := func(key, current string) string {
		return `{"op":"cas","key":"` + key + `","current":` + current + `}`
	}
	return []tcase{
		{name: "tremor sequence", steps: []step{
			s(M(`"get":"snot"`), ``, get("snot", `null`, false)),
			s(M(`"put":"snot"`), `"badger"`, op("put", "snot", `"badger"`, true)),
			s(M(`"swap":"snot"`), `"velociraptor"`, op("swap", "snot", `"badger"`, true)),
			s(M(`"put":"heinz"`), `"ketchup"`, op("put", "heinz", `"ketchup"`, true)),
			s(M(`"scan":""`), ``, row("heinz", `"ketchup"`, false), row("snot", `"velociraptor"`, true)),
			s(M(`"scan":"heinz","end":"meins"`), ``, row("heinz", `"ketchup"`, true)),
			s(M(`"scan":"","end":"heinz"`), ``),
			e(M(`"cas":"heinz","old":"gies"`), `"mustard"`, kv.ErrCASMismatch, kvCAS("heinz", `"ketchup"`), `expected "gies"`, `found "ketchup"`),
			s(M(`"cas":"heinz","old":"ketchup"`), `"gies"`, op("cas", "heinz", `null`, true)),
			s(M(`"delete":"heinz"`), ``, op("delete", "heinz", `"gies"`, true)),
			s(M(`"get":"heinz"`), ``, get("heinz", `null`, false)),
			s(M(`"get":"snot"`), ``, get("snot", `"velociraptor"`, true)),
		}},
		{name: "get default and canonical values", steps: []step{
			s(M(`"get":"a","default":{ "z": 1, "a" : [true, null] }`), ``, get("a", `{"a":[true,null],"z":1}`, false)),
			s(M(`"put":"a"`), ` { "b" : [1, 2.50, -0, 1e3], "a": "\u0041\n\u00e9", "c": {"y":1,"x":2}, "a": "last" } `,
				op("put", "a", `{"a":"last","b":[1,2.50,-0,1e3],"c":{"x":2,"y":1}}`, true)),
			s(M(`"get":"a","default":0`), ``, get("a", `{"a":"last","b":[1,2.50,-0,1e3],"c":{"x":2,"y":1}}`, true)),
			s(M(`"put":"s"`), `"tab\there \"q\" \\ \u0001 \u00e9 é"`, op("put", "s", `"tab\there \"q\" \\ \u0001 é é"`, true)),
			s(M(`"put":"n"`), `0`, op("put", "n", `0`, true)),
			s(M(`"put":"f"`), `false`, op("put", "f", `false`, true)),
			s(M(`"put":"f"`), `false`, op("put", "f", `false`, true)),
		}},
		{name: "put swap refusals", steps: []step{
			e(M(`"put":"a"`), ``, kv.ErrNullValue, `{"op":"put","key":"a"}`, `put "a"`),
			e(M(`"put":"a"`), `null`, kv.ErrNullValue, `{"op":"put","key":"a"}`),
			e(M(`"swap":"a"`), ` null `, kv.ErrNullValue, `{"op":"swap","key":"a"}`),
			e(M(`"cas":"a"`), `null`, kv.ErrNullValue, `{"op":"cas","key":"a"}`),
			e(M(`"put":"a"`), `{"a":`, kv.ErrInvalidJSON, `{"op":"put","key":"a"}`),
			e(M(`"put":"a"`), `[1,]`, kv.ErrInvalidJSON, ``),
			e(M(`"put":"a"`), deep(kv.MaxDepth+1), kv.ErrInvalidJSON, ``, "nesting"),
			s(M(`"put":"d"`), deep(kv.MaxDepth), op("put", "d", deep(kv.MaxDepth), true)),
			e(M(`"put":"a","value":1`), `1`, kv.ErrInvalidCommand, ``, "batch"),
			s(M(`"get":"a"`), ``, get("a", `null`, false)),
			s(M(`"swap":"a"`), `1`, op("swap", "a", `null`, false)),
			s(M(`"swap":"a"`), `2`, op("swap", "a", `1`, true)),
		}},
		{name: "cas", steps: []step{
			s(M(`"cas":"k"`), `1`, op("cas", "k", `null`, false)),
			e(M(`"cas":"k"`), `2`, kv.ErrCASMismatch, kvCAS("k", `1`), "absent", "found 1"),
			e(M(`"cas":"k","old":null`), `2`, kv.ErrCASMismatch, kvCAS("k", `1`)),
			s(M(`"cas":"k","old":1`), `{"b":1,"a":{"d":2,"c":3}}`, op("cas", "k", `null`, true)),
			s(M(`"cas":"k","old":{"a":{"c":3,"d":2},"b":1}`), `"x"`, op("cas", "k", `null`, true)),
			e(M(`"cas":"k","old":"y"`), `"z"`, kv.ErrCASMismatch, kvCAS("k", `"x"`)),
			e(M(`"cas":"absent","old":"y"`), `"z"`, kv.ErrCASMismatch, kvCAS("absent", `null`), "found no value"),
			s(M(`"get":"k"`), ``, get("k", `"x"`, true)),
			s(M(`"get":"absent"`), ``, get("absent", `null`, false)),
			e(M(`"cas":"k","old":1.0`), `1`, kv.ErrCASMismatch, ``),
		}},
		{name: "delete and cad", steps: []step{
			s(M(`"delete":"a"`), ``, op("delete", "a", `null`, false)),
			s(M(`"put":"a"`), `{"x":[1,2]}`, op("put", "a", `{"x":[1,2]}`, true)),
			e(M(`"cad":"a","old":{"x":[2,1]}`), ``, kv.ErrCASMismatch, `{"op":"cad","key":"a","current":{"x":[1,2]}}`),
			e(M(`"cad":"a"`), ``, kv.ErrInvalidCommand, `{"op":"cad","key":"a"}`, `"old"`),
			e(M(`"cad":"a","old":null`), ``, kv.ErrInvalidCommand, ``),
			s(M(`"cad":"a","old":{ "x" : [1,2] }`), ``, op("cad", "a", `{"x":[1,2]}`, true)),
			e(M(`"cad":"a","old":1`), ``, kv.ErrCASMismatch, `{"op":"cad","key":"a","current":null}`),
			s(M(`"put":"b"`), `1`, op("put", "b", `1`, true)),
			s(M(`"delete":"b"`), ``, op("delete", "b", `1`, true)),
			s(M(`"delete":"b"`), ``, op("delete", "b", `null`, false)),
			s(M(`"exists":"b"`), ``, op("exists", "b", `false`, false)),
		}},
		{name: "scan ranges and order", steps: []step{
			s(M(`"scan":""`), ``),
			s(M(`"put":"é"`), `1`, op("put", "é", `1`, true)),
			s(M(`"put":"z"`), `2`, op("put", "z", `2`, true)),
			s(M(`"put":"Ω"`), `3`, op("put", "Ω", `3`, true)),
			s(M(`"put":"日本"`), `4`, op("put", "日本", `4`, true)),
			s(M(`"put":"a"`), `5`, op("put", "a", `5`, true)),
			s(M(`"put":"a\u0000"`), `6`, Out(`6`, `"op":"put","key":"a\u0000","found":true`)),
			s(M(`"scan":""`), ``, row("a", `5`, false), Out(`6`, `"op":"scan","key":"a\u0000","found":true`),
				row("z", `2`, false), row("é", `1`, false), row("Ω", `3`, false), row("日本", `4`, true)),
			s(M(`"scan":"b","end":"a"`), ``),
			s(M(`"scan":"z","end":"z"`), ``),
			s(M(`"scan":"z","end":"z\u0000"`), ``, row("z", `2`, true)),
			s(M(`"scan":"b","end":"Ω"`), ``, row("z", `2`, false), row("é", `1`, true)),
			s(M(`"scan":"b","limit":2`), ``, row("z", `2`, false), row("é", `1`, true)),
			s(M(`"scan":"","limit":0`), ``),
			s(M(`"scan":"日本\uffff"`), ``),
			s(M(`"scan":"a","end":""`), ``),
		}},
		{name: "correlation and meta hygiene", steps: []step{
			s(MC(`"put":"a"`, `"abc"`), `1`, OutC(`1`, `"op":"put","key":"a","found":true`, `"abc"`)),
			s(MC(`"get":"a"`, `42.50`), ``, OutC(`1`, `"op":"get","key":"a","found":true`, `42.50`)),
			s(MC(`"get":"a"`, `{"z": 1, "a":[true]}`), ``, OutC(`1`, `"op":"get","key":"a","found":true`, `{"z": 1, "a":[true]}`)),
			s(MC(`"get":"a"`, `null`), ``, OutC(`1`, `"op":"get","key":"a","found":true`, `null`)),
			s(`{"trace":"t1","kv":{"get":"a"},"error":"old","correlation":[1]}`, ``, OutC(`1`, `"op":"get","key":"a","found":true`, `[1]`)),
			s(`{"trace":"t1","kv":{"get":"a"}}`, ``, get("a", `1`, true)),
			s(MC(`"put":"b"`, `7`), `2`, OutC(`2`, `"op":"put","key":"b","found":true`, `7`)),
			s(MC(`"scan":""`, `{"id":"q"}`), ``,
				OutC(`1`, `"op":"scan","key":"a","found":true`, `{"id":"q"}`),
				OutC(`2`, `"op":"scan","key":"b","found":true,"last":true`, `{"id":"q"}`)),
			e(MC(`"cas":"a","old":2`, `"c-1"`), `3`, kv.ErrCASMismatch, kvCAS("a", `1`)),
			e(`{"other":1,"correlation":{"x":1}}`, `3`, kv.ErrInvalidCommand, ``, "meta.kv is missing"),
			e(`{"kv":{"put":"a"},"trace":"t","correlation":true}`, ``, kv.ErrNullValue, `{"op":"put","key":"a"}`),
		}},
		{name: "decoding errors", steps: []step{
			e(``, `1`, kv.ErrInvalidCommand, ``, "meta.kv is missing"),
			e(`{}`, `1`, kv.ErrInvalidCommand, ``, "meta.kv is missing"),
			e(`{"kv":"get"}`, ``, kv.ErrInvalidCommand, ``, "must be an object"),
			e(`{"kv":[{"get":"a"}]}`, ``, kv.ErrInvalidCommand, ``, "must be an object"),
			e(`{"kv":{"get":"a"}`, ``, kv.ErrInvalidCommand, ``, "not valid JSON"),
			e(`[1]`, ``, kv.ErrInvalidCommand, ``),
			e(M(``), ``, kv.ErrInvalidCommand, ``, "no command"),
			e(M(`"fetch":"a"`), ``, kv.ErrUnknownCommand, ``, `"fetch"`),
			e(M(`"GET":"a"`), ``, kv.ErrUnknownCommand, ``),
			e(M(`"limit":1`), ``, kv.ErrInvalidCommand, ``, "no command"),
			e(M(`"get":"a","put":"b"`), `1`, kv.ErrInvalidCommand, `{"op":"get","key":"a"}`, `"put"`),
			e(M(`"get":"a","get":"b"`), ``, kv.ErrInvalidCommand, ``, "twice"),
			e(M(`"get":"a","limit":1`), ``, kv.ErrInvalidCommand, `{"op":"get","key":"a"}`, `"limit"`, "get"),
			e(M(`"get":"a","color":1`), ``, kv.ErrInvalidCommand, ``, `"color"`),
			e(M(`"delete":"a","old":1`), ``, kv.ErrInvalidCommand, ``),
			e(M(`"put":"a","old":1`), `1`, kv.ErrInvalidCommand, ``),
			e(M(`"get":""`), ``, kv.ErrInvalidKey, `{"op":"get","key":""}`, "non-empty"),
			e(M(`"get":5`), ``, kv.ErrInvalidKey, `{"op":"get"}`, "a number 5"),
			e(M(`"get":null`), ``, kv.ErrInvalidKey, `{"op":"get"}`),
			e(M(`"put":true`), `1`, kv.ErrInvalidKey, `{"op":"put"}`),
			e(M(`"delete":{"a":1}`), ``, kv.ErrInvalidKey, ``),
			e(M(`"increment":["a"]`), ``, kv.ErrInvalidKey, ``),
			e("{\"kv\":{\"get\":\"a\xffb\"}}", ``, kv.ErrInvalidKey, ``, "UTF-8"),
			// A lone surrogate escape decodes to U+FFFD: "\ud800" and
			// "\udfff" would be one key.
			e(M(`"put":"a\ud800"`), `1`, kv.ErrInvalidKey, ``, "lone surrogate"),
			e(M(`"get":"\udfff"`), ``, kv.ErrInvalidKey, ``, "lone surrogate"),
			e(M(`"scan":"a","end":"\udc00\ud800"`), ``, kv.ErrInvalidKey, ``, "end holds a lone surrogate"),
			e(M(`"keys":"\ud800x"`), ``, kv.ErrInvalidKey, ``, "prefix holds a lone surrogate"),
			e(M(`"put":"k","idem":"\ud800"`), `1`, kv.ErrInvalidKey, ``, "lone surrogate"),
			e(M(`"scan":5`), ``, kv.ErrInvalidKey, ``),
			e(M(`"scan":"","end":5`), ``, kv.ErrInvalidCommand, ``, `"end"`),
			e(M(`"scan":"","end":null`), ``, kv.ErrInvalidCommand, ``, `"end"`),
			e(M(`"scan":"","limit":"1"`), ``, kv.ErrInvalidCommand, ``, `"limit"`),
			e(M(`"scan":"","limit":-1`), ``, kv.ErrInvalidCommand, ``, `"limit"`),
			e(M(`"scan":"","limit":1.5`), ``, kv.ErrInvalidCommand, ``, `"limit"`),
			e(M(`"scan":"","limit":1e2`), ``, kv.ErrInvalidCommand, ``, `"limit"`),
			e(M(`"keys":"","after":1`), ``, kv.ErrInvalidCommand, ``, `"after"`),
			e(M(`"keys":1`), ``, kv.ErrInvalidKey, ``, "prefix"),
			e(M(`"count":true`), ``, kv.ErrInvalidKey, ``),
			e(M(`"increment":"a","by":"1"`), ``, kv.ErrInvalidCommand, ``, `"by"`),
			e(M(`"increment":"a","by":null`), ``, kv.ErrInvalidCommand, ``, `"by"`),
			e(M(`"increment":"a","by":99999999999999999999`), ``, kv.ErrOverflow, ``),
			e(M(`"put":"a","ttl":0`), `1`, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"put":"a","ttl":-1`), `1`, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"put":"a","ttl":"10"`), `1`, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"put":"a","ttl":1e300`), `1`, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"put":"a","expire_at":1.5`), `1`, kv.ErrInvalidCommand, ``, `"expire_at"`),
			e(M(`"put":"a","expire_at":"1"`), `1`, kv.ErrInvalidCommand, ``, `"expire_at"`),
			e(M(`"put":"a","expire_at":0`), `1`, kv.ErrInvalidCommand, ``, `"expire_at"`),
			e(M(`"put":"a","ttl":1,"expire_at":1`), `1`, kv.ErrInvalidCommand, ``, "not both"),
			e(M(`"swap":"a","ttl":1`), `1`, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"get":"a","default":[`), ``, kv.ErrInvalidCommand, ``),
			e(M(`"batch":{}`), ``, kv.ErrInvalidCommand, `{"op":"batch"}`, "array"),
			s(M(`"count":null`), ``, op("count", "", `0`, false)),
		}},
		{name: "increment", steps: []step{
			s(M(`"increment":"n"`), ``, op("increment", "n", `1`, false)),
			s(M(`"increment":"n","by":5`), ``, op("increment", "n", `6`, true)),
			s(M(`"increment":"n","by":-10`), ``, op("increment", "n", `-4`, true)),
			s(M(`"increment":"n","by":0.5`), ``, op("increment", "n", `-3.5`, true)),
			s(M(`"increment":"n","by":3.5`), ``, op("increment", "n", `0.0`, true)),
			s(M(`"increment":"n"`), ``, op("increment", "n", `1.0`, true)),
			s(M(`"put":"i"`), `1`, op("put", "i", `1`, true)),
			s(M(`"increment":"i","by":2.0`), ``, op("increment", "i", `3.0`, true)),
			s(M(`"put":"big"`), `9223372036854775806`, op("put", "big", `9223372036854775806`, true)),
			s(M(`"increment":"big"`), ``, op("increment", "big", `9223372036854775807`, true)),
			e(M(`"increment":"big"`), ``, kv.ErrOverflow, `{"op":"increment","key":"big"}`, "9223372036854775807"),
			s(M(`"get":"big"`), ``, get("big", `9223372036854775807`, true)),
			s(M(`"put":"small"`), `-9223372036854775807`, op("put", "small", `-9223372036854775807`, true)),
			s(M(`"increment":"small","by":-1`), ``, op("increment", "small", `-9223372036854775808`, true)),
			e(M(`"increment":"small","by":-1`), ``, kv.ErrOverflow, ``),
			s(M(`"put":"huge"`), `1e308`, op("put", "huge", `1e308`, true)),
			e(M(`"increment":"huge","by":1e308`), ``, kv.ErrOverflow, ``),
			s(M(`"put":"s"`), `"12"`, op("put", "s", `"12"`, true)),
			e(M(`"increment":"s"`), ``, kv.ErrNotNumber, `{"op":"increment","key":"s"}`, `"12"`),
			s(M(`"put":"o"`), `{"n":1}`, op("put", "o", `{"n":1}`, true)),
			e(M(`"increment":"o"`), ``, kv.ErrNotNumber, ``),
			s(M(`"get":"s"`), ``, get("s", `"12"`, true)),
			s(M(`"increment":"z","by":0`), ``, op("increment", "z", `0`, false)),
		}},
		{name: "exists count keys get_all clear", steps: []step{
			s(M(`"exists":"a1"`), ``, op("exists", "a1", `false`, false)),
			s(M(`"keys":null`), ``, op("keys", "", `[]`, false, `,"next":null`)),
			s(M(`"get_all":null`), ``, op("get_all", "", `{}`, false)),
			s(M(`"put":"a1"`), `1`, op("put", "a1", `1`, true)),
			s(M(`"put":"a2"`), `2`, op("put", "a2", `2`, true)),
			s(M(`"put":"a3"`), `{"b":1,"a":2}`, op("put", "a3", `{"a":2,"b":1}`, true)),
			s(M(`"put":"b1"`), `4`, op("put", "b1", `4`, true)),
			s(M(`"exists":"a1"`), ``, op("exists", "a1", `true`, true)),
			s(M(`"count":"a"`), ``, op("count", "a", `3`, true)),
			s(M(`"count":null`), ``, op("count", "", `4`, true)),
			s(M(`"count":""`), ``, op("count", "", `4`, true)),
			s(M(`"count":"a1"`), ``, op("count", "a1", `1`, true)),
			s(M(`"count":"c"`), ``, op("count", "c", `0`, false)),
			s(M(`"keys":"a","limit":2`), ``, op("keys", "a", `["a1","a2"]`, true, `,"next":"a2"`)),
			s(M(`"keys":"a","limit":2,"after":"a2"`), ``, op("keys", "a", `["a3"]`, true, `,"next":null`)),
			s(M(`"keys":"a","limit":3`), ``, op("keys", "a", `["a1","a2","a3"]`, true, `,"next":null`)),
			s(M(`"keys":null,"after":"a"`), ``, op("keys", "", `["a1","a2","a3","b1"]`, true, `,"next":null`)),
			s(M(`"keys":"b","after":"a3"`), ``, op("keys", "b", `["b1"]`, true, `,"next":null`)),
			s(M(`"keys":"a","after":"b"`), ``, op("keys", "a", `[]`, false, `,"next":null`)),
			s(M(`"keys":null,"limit":0`), ``, op("keys", "", `[]`, false, `,"next":""`)),
			s(M(`"get_all":"a"`), ``, op("get_all", "a", `{"a1":1,"a2":2,"a3":{"a":2,"b":1}}`, true)),
			s(M(`"get_all":"b1"`), ``, op("get_all", "b1", `{"b1":4}`, true)),
			s(M(`"clear":"a"`), ``, op("clear", "a", `3`, true)),
			s(M(`"count":null`), ``, op("count", "", `1`, true)),
			s(M(`"get":"a1"`), ``, get("a1", `null`, false)),
			s(M(`"clear":"a"`), ``, op("clear", "a", `0`, false)),
			s(M(`"clear":null`), ``, op("clear", "", `1`, true)),
			s(M(`"scan":""`), ``),
		}},
		{name: "ttl and expiry", steps: []step{
			s(M(`"put":"a","ttl":10`), `"v"`, op("put", "a", `"v"`, true)),
			s(M(`"put":"b","expire_at":`+strconv.FormatInt(Start+5000, 10)), `"w"`, op("put", "b", `"w"`, true)),
			s(M(`"put":"c","ttl":1`), `1`, op("put", "c", `1`, true)),
			s(M(`"put":"c"`), `2`, op("put", "c", `2`, true)),
			s(M(`"put":"d"`), `3`, op("put", "d", `3`, true)),
			s(M(`"cas":"e","ttl":0.5`), `4`, op("cas", "e", `null`, false)),
			s(M(`"increment":"n"`), ``, op("increment", "n", `1`, false)),
			at(4999*time.Millisecond, s(M(`"get":"b"`), ``, get("b", `"w"`, true))),
			at(time.Millisecond, s(M(`"get":"b"`), ``, get("b", `null`, false))),
			s(M(`"get":"e","default":"gone"`), ``, get("e", `"gone"`, false)),
			s(M(`"get":"a"`), ``, get("a", `"v"`, true)),
			s(M(`"count":null`), ``, op("count", "", `4`, true)),
			at(5*time.Second, s(M(`"get":"a"`), ``, get("a", `null`, false))),
			s(M(`"exists":"a"`), ``, op("exists", "a", `false`, false)),
			s(M(`"scan":""`), ``, row("c", `2`, false), row("d", `3`, false), row("n", `1`, true)),
			s(M(`"count":null`), ``, op("count", "", `3`, true)),
			s(M(`"keys":null`), ``, op("keys", "", `["c","d","n"]`, true, `,"next":null`)),
			s(M(`"get_all":null`), ``, op("get_all", "", `{"c":2,"d":3,"n":1}`, true)),
			e(M(`"cas":"a","old":"v"`), `"x"`, kv.ErrCASMismatch, kvCAS("a", `null`)),
			e(M(`"cad":"a","old":"v"`), ``, kv.ErrCASMismatch, `{"op":"cad","key":"a","current":null}`),
			s(M(`"swap":"b"`), `1`, op("swap", "b", `null`, false)),
			s(M(`"delete":"a"`), ``, op("delete", "a", `null`, false)),
			s(M(`"cas":"a","ttl":1`), `"new"`, op("cas", "a", `null`, false)),
			s(M(`"put":"t","ttl":2`), `10`, op("put", "t", `10`, true)),
			s(M(`"increment":"t"`), ``, op("increment", "t", `11`, true)),
			at(2*time.Second, s(M(`"increment":"t"`), ``, op("increment", "t", `1`, false))),
			s(M(`"get":"a"`), ``, get("a", `null`, false)),
			s(M(`"clear":null`), ``, op("clear", "", `5`, true)),
		}},
		{name: "increment with expiry", steps: []step{
			// The first increment creates the key with the expiry: a window starts.
			s(M(`"increment":"w","ttl":10`), ``, op("increment", "w", `1`, false)),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(10000, Start+10000), true)),
			// Later ones keep it, whatever ttl they give.
			at(4*time.Second, s(M(`"increment":"w","ttl":10`), ``, op("increment", "w", `2`, true))),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(6000, Start+10000), true)),
			s(M(`"increment":"w"`), ``, op("increment", "w", `3`, true)),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(6000, Start+10000), true)),
			// Once expired, the key restarts from 0 with a new window.
			at(6*time.Second, s(M(`"increment":"w","ttl":10`), ``, op("increment", "w", `1`, false))),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(10000, Start+20000), true)),
			// refresh sets the expiry on every increment.
			at(time.Second, s(M(`"increment":"w","ttl":10,"refresh":true`), ``, op("increment", "w", `2`, true))),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(10000, Start+21000), true)),
			s(M(`"increment":"w","expire_at":`+strconv.FormatInt(Start+30000, 10)+`,"refresh":true`), ``, op("increment", "w", `3`, true)),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(19000, Start+30000), true)),
			s(M(`"increment":"w","refresh":false,"ttl":1`), ``, op("increment", "w", `4`, true)),
			s(M(`"expiry":"w"`), ``, op("expiry", "w", expiryJSON(19000, Start+30000), true)),
			// An expire_at creates the key with that instant.
			s(M(`"increment":"x","by":5,"expire_at":`+strconv.FormatInt(Start+12000, 10)), ``, op("increment", "x", `5`, false)),
			s(M(`"expiry":"x"`), ``, op("expiry", "x", expiryJSON(1000, Start+12000), true)),
			at(time.Second, s(M(`"get":"x"`), ``, get("x", `null`, false))),
			// Without ttl, an increment creating a key gives it no expiry.
			s(M(`"increment":"y"`), ``, op("increment", "y", `1`, false)),
			s(M(`"expiry":"y"`), ``, op("expiry", "y", `{"ttl_ms":null,"expire_at":null}`, true)),
			e(M(`"increment":"w","refresh":true`), ``, kv.ErrInvalidCommand, `{"op":"increment","key":"w"}`, `"refresh" needs "ttl" or "expire_at"`),
			e(M(`"increment":"w","ttl":1,"refresh":1`), ``, kv.ErrInvalidCommand, ``, `"refresh" must be true or false`),
			e(M(`"increment":"w","ttl":0`), ``, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"increment":"w","ttl":1,"expire_at":1`), ``, kv.ErrInvalidCommand, ``, "not both"),
			// A failed increment leaves the expiry as it was.
			s(M(`"put":"s","ttl":5`), `"a"`, op("put", "s", `"a"`, true)),
			e(M(`"increment":"s","ttl":60,"refresh":true`), ``, kv.ErrNotNumber, ``),
			s(M(`"expiry":"s"`), ``, op("expiry", "s", expiryJSON(5000, Start+17000), true)),
			s(M(`"batch":[{"increment":"b","ttl":2},{"increment":"b","ttl":9},{"expiry":"b"}]`), ``,
				Out(`[1,2,`+expiryJSON(2000, Start+14000)+`]`, `"op":"batch","found":true`)),
		}},
		{name: "expiry and touch", steps: []step{
			s(M(`"expiry":"a"`), ``, op("expiry", "a", `null`, false)),
			s(M(`"touch":"a","ttl":5`), ``, op("touch", "a", `null`, false)),
			s(M(`"get":"a"`), ``, get("a", `null`, false)), // touch creates nothing
			s(M(`"put":"a"`), `1`, op("put", "a", `1`, true)),
			s(M(`"expiry":"a"`), ``, op("expiry", "a", `{"ttl_ms":null,"expire_at":null}`, true)),
			s(M(`"touch":"a","ttl":5`), ``, op("touch", "a", expiryJSON(5000, Start+5000), true)),
			s(M(`"get":"a"`), ``, get("a", `1`, true)),
			at(time.Second+500*time.Millisecond, s(M(`"expiry":"a"`), ``, op("expiry", "a", expiryJSON(3500, Start+5000), true))),
			// touch extends (or shortens) the expiry of a live key.
			s(M(`"touch":"a","expire_at":`+strconv.FormatInt(Start+60000, 10)), ``, op("touch", "a", expiryJSON(58500, Start+60000), true)),
			at(10*time.Second, s(M(`"get":"a"`), ``, get("a", `1`, true))),
			s(M(`"touch":"a","ttl":0.001`), ``, op("touch", "a", expiryJSON(1, Start+11501), true)),
			at(time.Millisecond, s(M(`"expiry":"a"`), ``, op("expiry", "a", `null`, false))),
			// An expired key cannot be touched back to life.
			s(M(`"touch":"a","ttl":60`), ``, op("touch", "a", `null`, false)),
			s(M(`"get":"a"`), ``, get("a", `null`, false)),
			s(M(`"put":"b","ttl":1`), `{"x":1}`, op("put", "b", `{"x":1}`, true)),
			s(M(`"touch":"b","ttl":100,"idem":"t1"`), ``, op("touch", "b", expiryJSON(100000, Start+111501), true)),
			s(M(`"touch":"b","ttl":100,"idem":"t1"`), ``, op("touch", "b", expiryJSON(100000, Start+111501), true, `,"replayed":true`)),
			at(2*time.Second, s(M(`"get":"b"`), ``, get("b", `{"x":1}`, true))),
			e(M(`"touch":"b"`), ``, kv.ErrInvalidCommand, `{"op":"touch","key":"b"}`, `"ttl" or "expire_at"`, "required"),
			e(M(`"touch":"b","ttl":-1`), ``, kv.ErrInvalidCommand, ``, `"ttl"`),
			e(M(`"expiry":"b","ttl":1`), ``, kv.ErrInvalidCommand, ``, `"ttl" is not accepted by expiry`),
			e(M(`"expiry":"b","idem":"x"`), ``, kv.ErrInvalidCommand, ``, "only accepted by commands that write"),
			e(M(`"expiry":""`), ``, kv.ErrInvalidKey, ``),
			s(M(`"batch":[{"touch":"b","ttl":1},{"expiry":"b"},{"touch":"none","ttl":1}]`), ``,
				Out(`[`+expiryJSON(1000, Start+14501)+`,`+expiryJSON(1000, Start+14501)+`,null]`, `"op":"batch","found":true`)),
		}},
		{name: "put and an existing expiry", steps: []step{
			// A put without ttl clears the expiry; keep_ttl keeps it.
			s(M(`"put":"a","ttl":10`), `1`, op("put", "a", `1`, true)),
			s(M(`"put":"a"`), `2`, op("put", "a", `2`, true)),
			s(M(`"expiry":"a"`), ``, op("expiry", "a", `{"ttl_ms":null,"expire_at":null}`, true)),
			at(20*time.Second, s(M(`"get":"a"`), ``, get("a", `2`, true))),
			s(M(`"put":"b","ttl":10`), `1`, op("put", "b", `1`, true)),
			at(time.Second, s(M(`"put":"b","keep_ttl":true`), `2`, op("put", "b", `2`, true))),
			s(M(`"expiry":"b"`), ``, op("expiry", "b", expiryJSON(9000, Start+30000), true)),
			s(M(`"put":"b","keep_ttl":false`), `3`, op("put", "b", `3`, true)),
			s(M(`"expiry":"b"`), ``, op("expiry", "b", `{"ttl_ms":null,"expire_at":null}`, true)),
			// A put with ttl replaces the expiry.
			s(M(`"put":"c","ttl":10`), `1`, op("put", "c", `1`, true)),
			s(M(`"put":"c","ttl":2`), `2`, op("put", "c", `2`, true)),
			s(M(`"expiry":"c"`), ``, op("expiry", "c", expiryJSON(2000, Start+23000), true)),
			// keep_ttl on an absent or expired key stores it without expiry.
			at(2*time.Second, s(M(`"put":"c","keep_ttl":true`), `3`, op("put", "c", `3`, true))),
			s(M(`"expiry":"c"`), ``, op("expiry", "c", `{"ttl_ms":null,"expire_at":null}`, true)),
			s(M(`"put":"d","keep_ttl":true`), `4`, op("put", "d", `4`, true)),
			s(M(`"expiry":"d"`), ``, op("expiry", "d", `{"ttl_ms":null,"expire_at":null}`, true)),
			s(M(`"batch":[{"put":"e","value":1,"ttl":5},{"put":"e","value":2,"keep_ttl":true},{"expiry":"e"}]`), ``,
				Out(`[1,2,`+expiryJSON(5000, Start+28000)+`]`, `"op":"batch","found":true`)),
			e(M(`"put":"a","keep_ttl":true,"ttl":1`), `1`, kv.ErrInvalidCommand, `{"op":"put","key":"a"}`, `"keep_ttl"`, "not both"),
			e(M(`"put":"a","keep_ttl":"yes"`), `1`, kv.ErrInvalidCommand, ``, `"keep_ttl" must be true or false`),
			e(M(`"cas":"a","keep_ttl":true`), `1`, kv.ErrInvalidCommand, ``, `"keep_ttl" is not accepted by cas`),
		}},
		{name: "enrichment at a data path", opts: func(o *kv.Options) { o.Result = "data.player" }, steps: []step{
			// The event keeps its data and meta; the result object goes at data.player.
			s(`{"kv":{"get":"p1"},"correlation":"c1","trace":"t"}`, `{"id":"p1","n":1}`,
				`out {"data":{"id":"p1","n":1,"player":{"op":"get","key":"p1","found":false,"value":null}},"meta":{"kv":{"op":"get","key":"p1","found":false},"correlation":"c1","trace":"t"}}`),
			s(M(`"put":"p1"`), `{"name":"ann"}`,
				`out {"data":{"name":"ann","player":{"op":"put","key":"p1","found":true,"value":{"name":"ann"}}},"meta":{"kv":{"op":"put","key":"p1","found":true}}}`),
			s(M(`"get":"p1"`), `{"id":"p1","player":"replaced"}`,
				`out {"data":{"id":"p1","player":{"op":"get","key":"p1","found":true,"value":{"name":"ann"}}},"meta":{"kv":{"op":"get","key":"p1","found":true}}}`),
			s(M(`"get":"p1"`), ``,
				`out {"data":{"player":{"op":"get","key":"p1","found":true,"value":{"name":"ann"}}},"meta":{"kv":{"op":"get","key":"p1","found":true}}}`),
			s(M(`"increment":"n","ttl":5`), `{}`,
				`out {"data":{"player":{"op":"increment","key":"n","found":false,"value":1}},"meta":{"kv":{"op":"increment","key":"n","found":false}}}`),
			// A scan gives one event, its rows in value; an empty one gives one too.
			s(M(`"scan":""`), `{}`,
				`out {"data":{"player":{"op":"scan","key":"","found":true,"value":[{"key":"n","value":1},{"key":"p1","value":{"name":"ann"}}]}},"meta":{"kv":{"op":"scan","key":"","found":true}}}`),
			s(M(`"scan":"x"`), `{}`,
				`out {"data":{"player":{"op":"scan","key":"x","found":false,"value":[]}},"meta":{"kv":{"op":"scan","key":"x","found":false}}}`),
			s(M(`"keys":null,"limit":1`), `{}`,
				`out {"data":{"player":{"op":"keys","key":"","found":true,"next":"n","value":["n"]}},"meta":{"kv":{"op":"keys","key":"","found":true,"next":"n"}}}`),
			s(M(`"batch":[{"get":"p1"},{"exists":"q"}]`), `{"a":1}`,
				`out {"data":{"a":1,"player":{"op":"batch","found":true,"value":[{"name":"ann"},false]}},"meta":{"kv":{"op":"batch","found":true}}}`),
			s(M(`"delete":"q","idem":"d1"`), `{}`,
				`out {"data":{"player":{"op":"delete","key":"q","found":false,"value":null}},"meta":{"kv":{"op":"delete","key":"q","found":false}}}`),
			s(M(`"delete":"q","idem":"d1"`), `{}`,
				`out {"data":{"player":{"op":"delete","key":"q","found":false,"replayed":true,"value":null}},"meta":{"kv":{"op":"delete","key":"q","found":false,"replayed":true}}}`),
			// Failures go to err as without enrichment.
			e(MC(`"cas":"p1","old":1`, `"c2"`), `{"x":1}`, kv.ErrCASMismatch, `{"op":"cas","key":"p1","current":{"name":"ann"}}`),
			// Data that cannot hold the result is refused before the command runs.
			e(M(`"put":"z"`), `5`, kv.ErrResultPath, `{"op":"put","key":"z"}`, "data.player", "data is a number 5, not an object"),
			e(M(`"put":"z"`), `[1]`, kv.ErrResultPath, ``, "data is an array"),
			s(M(`"exists":"z"`), `{}`,
				`out {"data":{"player":{"op":"exists","key":"z","found":false,"value":false}},"meta":{"kv":{"op":"exists","key":"z","found":false}}}`),
		}},
		{name: "enrichment at a meta path", opts: func(o *kv.Options) { o.Result = "meta.lookup.player" }, steps: []step{
			s(M(`"put":"p"`), `1`,
				`out {"data":1,"meta":{"kv":{"op":"put","key":"p","found":true},"lookup":{"player":{"op":"put","key":"p","found":true,"value":1}}}}`),
			s(`{"kv":{"get":"p"},"lookup":{"other":2},"correlation":[1]}`, `"payload"`,
				`out {"data":"payload","meta":{"kv":{"op":"get","key":"p","found":true},"lookup":{"other":2,"player":{"op":"get","key":"p","found":true,"value":1}},"correlation":[1]}}`),
			e(`{"kv":{"get":"p"},"lookup":"s"}`, `1`, kv.ErrResultPath, `{"op":"get","key":"p"}`, "meta.lookup is a string"),
			e(`{"kv":{"delete":"p"},"lookup":7}`, `1`, kv.ErrResultPath, ``),
			s(M(`"get":"p"`), ``,
				`out {"data":null,"meta":{"kv":{"op":"get","key":"p","found":true},"lookup":{"player":{"op":"get","key":"p","found":true,"value":1}}}}`),
		}},
		{name: "limits", opts: func(o *kv.Options) {
			o.MaxKeyLength = 5
			o.MaxValueBytes = 16
			o.MaxGetAll = 2
			o.MaxScan = 3
			o.MaxBatch = 2
		}, steps: []step{
			s(M(`"put":"ééééé"`), `1`, op("put", "ééééé", `1`, true)),
			e(M(`"put":"abcdef"`), `1`, kv.ErrKeyTooLong, `{"op":"put","key":"abcdef"}`, "6 characters", "limit is 5", `put "abcdef"`),
			e(M(`"get":"`+strings.Repeat("k", 300)+`"`), ``, kv.ErrKeyTooLong, ``, "300 characters", "..."),
			e(M(`"scan":"abcdef"`), ``, kv.ErrKeyTooLong, ``),
			e(M(`"scan":"","end":"abcdef"`), ``, kv.ErrKeyTooLong, ``),
			e(M(`"count":"abcdef"`), ``, kv.ErrKeyTooLong, ``),
			s(M(`"put":"v"`), `"0123456789abcd"`, op("put", "v", `"0123456789abcd"`, true)),
			e(M(`"put":"v"`), `"0123456789abcde"`, kv.ErrValueTooLarge, `{"op":"put","key":"v"}`, "17 bytes", "limit is 16 bytes"),
			s(M(`"put":"v"`), `{ "a" : 1 ,  "b" : 2 }`, op("put", "v", `{"a":1,"b":2}`, true)),
			s(M(`"get":"v"`), ``, get("v", `{"a":1,"b":2}`, true)),
			s(M(`"put":"w"`), `1`, op("put", "w", `1`, true)),
			e(M(`"get_all":null`), ``, kv.ErrTooManyEntries, `{"op":"get_all","key":""}`, "limit is 2"),
			s(M(`"get_all":"v"`), ``, op("get_all", "v", `{"v":{"a":1,"b":2}}`, true)),
			e(M(`"scan":"","limit":4`), ``, kv.ErrTooManyEntries, ``, "maximum of 3"),
			s(M(`"put":"x"`), `1`, op("put", "x", `1`, true)),
			s(M(`"scan":""`), ``, row("v", `{"a":1,"b":2}`, false), row("w", `1`, false), row("x", `1`, true)),
			s(M(`"keys":null`), ``, op("keys", "", `["v","w","x"]`, true, `,"next":"x"`)),
			e(M(`"batch":[{"get":"a"},{"get":"b"},{"get":"c"}]`), ``, kv.ErrTooManyEntries, `{"op":"batch"}`, "limit is 2"),
			s(M(`"count":null`), ``, op("count", "", `4`, true)),
		}},
		{name: "result budget", opts: func(o *kv.Options) { o.MaxResultBytes = 100 }, steps: budgetResultSteps()},
		{name: "result budget of keys and get", opts: func(o *kv.Options) { o.MaxResultBytes = 10 }, steps: []step{
			s(M(`"put":"k1"`), `1`, op("put", "k1", `1`, true)),
			s(M(`"put":"k2"`), `1`, op("put", "k2", `1`, true)),
			s(M(`"put":"k3"`), `1`, op("put", "k3", `1`, true)),
			e(M(`"keys":null`), ``, kv.ErrBudgetExceeded, `{"op":"keys","key":""}`, "max_result_bytes (10 bytes)", "after 3 keys"),
			s(M(`"keys":null,"limit":2`), ``, op("keys", "", `["k1","k2"]`, true, `,"next":"k2"`)),
			s(M(`"put":"b"`), `"0123456789"`, op("put", "b", `"0123456789"`, true)),
			e(M(`"get":"b"`), ``, kv.ErrBudgetExceeded, `{"op":"get","key":"b"}`, `get "b"`, "max_result_bytes (10 bytes)", "raise"),
			e(M(`"swap":"b"`), `2`, kv.ErrBudgetExceeded, `{"op":"swap","key":"b"}`, "max_result_bytes"),
			e(M(`"delete":"b"`), ``, kv.ErrBudgetExceeded, `{"op":"delete","key":"b"}`, "max_result_bytes"),
			e(M(`"cad":"b","old":"0123456789"`), ``, kv.ErrBudgetExceeded, `{"op":"cad","key":"b"}`, "max_result_bytes"),
			s(M(`"exists":"b"`), ``, op("exists", "b", `true`, true)),
			s(M(`"get":"k1"`), ``, get("k1", `1`, true)),
		}},
		{name: "work budget", opts: func(o *kv.Options) { o.MaxKeysVisited = 10 }, steps: budgetWorkSteps()},
		{name: "idempotency keys", opts: func(o *kv.Options) { o.IdemRetention = time.Hour }, steps: []step{
			s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false)),
			s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false, `,"replayed":true`)),
			s(M(`"increment":"n","idem":"m2"`), ``, op("increment", "n", `2`, true)),
			s(M(`"get":"n"`), ``, get("n", `2`, true)),
			// The recorded result is the first one, whatever the store holds now.
			s(M(`"put":"n"`), `10`, op("put", "n", `10`, true)),
			s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false, `,"replayed":true`)),
			e(M(`"increment":"n","by":5,"idem":"m1"`), ``, kv.ErrIdemConflict, `{"op":"increment","key":"n"}`, `"m1"`, "different command"),
			e(M(`"put":"n","idem":"m1"`), `1`, kv.ErrIdemConflict, ``),
			s(M(`"get":"n"`), ``, get("n", `10`, true)),
			// A failed command records nothing: its redelivery runs again.
			e(M(`"cas":"c","old":1,"idem":"m3"`), `2`, kv.ErrCASMismatch, `{"op":"cas","key":"c","current":null}`),
			s(M(`"put":"c"`), `1`, op("put", "c", `1`, true)),
			s(M(`"cas":"c","old":1,"idem":"m3"`), `2`, op("cas", "c", `null`, true)),
			s(M(`"cas":"c","old":1,"idem":"m3"`), `2`, op("cas", "c", `null`, true, `,"replayed":true`)),
			s(M(`"put":"p","idem":"m4","ttl":60`), `{"b":1,"a":2}`, op("put", "p", `{"a":2,"b":1}`, true)),
			s(M(`"put":"p","idem":"m4","ttl":60`), `{"a":2,"b":1}`, op("put", "p", `{"a":2,"b":1}`, true, `,"replayed":true`)),
			s(M(`"swap":"p","idem":"m5"`), `3`, op("swap", "p", `{"a":2,"b":1}`, true)),
			s(M(`"swap":"p","idem":"m5"`), `3`, op("swap", "p", `{"a":2,"b":1}`, true, `,"replayed":true`)),
			s(M(`"delete":"p","idem":"m6"`), ``, op("delete", "p", `3`, true)),
			s(M(`"delete":"p","idem":"m6"`), ``, op("delete", "p", `3`, true, `,"replayed":true`)),
			s(M(`"batch":[{"increment":"b"},{"increment":"b"}],"idem":"m7"`), ``, Out(`[1,2]`, `"op":"batch","found":true`)),
			s(M(`"batch":[{"increment":"b"},{"increment":"b"}],"idem":"m7"`), ``, Out(`[1,2]`, `"op":"batch","found":true,"replayed":true`)),
			s(M(`"get":"b"`), ``, get("b", `2`, true)),
			// A batch of reads records its key too, and answers the first reads.
			s(M(`"batch":[{"get":"b"}],"idem":"m9"`), ``, Out(`[2]`, `"op":"batch","found":true`)),
			s(M(`"increment":"b"`), ``, op("increment", "b", `3`, true)),
			s(M(`"batch":[{"get":"b"}],"idem":"m9"`), ``, Out(`[2]`, `"op":"batch","found":true,"replayed":true`)),
			s(M(`"put":"b"`), `2`, op("put", "b", `2`, true)),
			// Idempotency records are not keys: scans, counts and clears skip them.
			s(M(`"count":null`), ``, op("count", "", `3`, true)),
			s(M(`"clear":null,"idem":"m8"`), ``, op("clear", "", `3`, true)),
			s(M(`"clear":null,"idem":"m8"`), ``, op("clear", "", `3`, true, `,"replayed":true`)),
			s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false, `,"replayed":true`)),
			// Namespaces have their own keys.
			inNS("other", s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false))),
			// Past the retention, a key is forgotten and the command applies again.
			at(time.Hour, s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false))),
			s(M(`"increment":"n","idem":"m1"`), ``, op("increment", "n", `1`, false, `,"replayed":true`)),
		}},
		{name: "idempotency key refusals", opts: func(o *kv.Options) { o.MaxKeyLength = 5 }, steps: []step{
			e(M(`"get":"a","idem":"m1"`), ``, kv.ErrInvalidCommand, `{"op":"get","key":"a"}`, "only accepted by commands that write"),
			e(M(`"scan":"","idem":"m1"`), ``, kv.ErrInvalidCommand, ``, "only accepted by commands that write"),
			e(M(`"put":"a","idem":1`), `1`, kv.ErrInvalidCommand, ``, `"idem" must be a non-empty string`),
			e(M(`"put":"a","idem":""`), `1`, kv.ErrInvalidCommand, ``, "non-empty"),
			e(M(`"put":"a","idem":"abcdef"`), `1`, kv.ErrKeyTooLong, ``, "6 characters"),
			e(M(`"batch":[{"put":"a","value":1,"idem":"m1"}]`), ``, kv.ErrInvalidCommand, `{"op":"batch","index":0}`, "give it on the batch"),
			e(M(`"batch":[{"get":"a","idem":"m1"}]`), ``, kv.ErrInvalidCommand, `{"op":"batch","index":0}`, "only accepted by commands that write"),
			s(M(`"get":"a"`), ``, get("a", `null`, false)),
		}},
		{name: "batch", steps: []step{
			s(M(`"batch":[]`), ``, Out(`[]`, `"op":"batch","found":true`)),
			s(M(`"batch":[{"put":"x","value":1},{"increment":"x"},{"get":"x"},{"swap":"y","value":{"b":1,"a":2}},{"scan":"","limit":5},{"exists":"y"},{"count":null},{"keys":null},{"get_all":"y"}]`), `"ignored"`,
				Out(`[1,2,2,null,[{"key":"x","value":2},{"key":"y","value":{"a":2,"b":1}}],true,2,["x","y"],{"y":{"a":2,"b":1}}]`, `"op":"batch","found":true`)),
			e(MC(`"batch":[{"put":"z","value":1},{"delete":"x"},{"cas":"y","old":99,"value":3}]`, `"b1"`), `{"p":1}`, kv.ErrCASMismatch,
				`{"op":"batch","index":2,"current":{"a":2,"b":1}}`, "batch[2]", `cas "y"`),
			s(M(`"get":"z"`), ``, get("z", `null`, false)),
			s(M(`"get":"x"`), ``, get("x", `2`, true)),
			e(M(`"batch":[{"put":"z","value":1},{"fetch":"x"}]`), ``, kv.ErrUnknownCommand, `{"op":"batch","index":1}`, "batch[1]"),
			e(M(`"batch":[{"put":"z","value":1},{"batch":[]}]`), ``, kv.ErrInvalidCommand, `{"op":"batch","index":1}`),
			e(M(`"batch":[{"put":"z"}]`), ``, kv.ErrInvalidCommand, `{"op":"batch","index":0}`, `"value"`),
			e(M(`"batch":[{"put":"z","value":null}]`), ``, kv.ErrNullValue, ``),
			e(M(`"batch":[{"put":"z","value":1},"get"]`), ``, kv.ErrInvalidCommand, `{"op":"batch","index":1}`),
			e(M(`"batch":[{"put":"z","value":1},{"increment":"z"},{"increment":"x","by":9223372036854775807}]`), ``, kv.ErrOverflow, `{"op":"batch","index":2}`),
			s(M(`"get":"z"`), ``, get("z", `null`, false)),
			s(M(`"batch":[{"cas":"z","value":1},{"cas":"z","old":1,"value":2},{"cad":"z","old":2},{"get":"z","default":0}]`), ``,
				Out(`[null,null,2,0]`, `"op":"batch","found":true`)),
			e(M(`"batch":[{"clear":null},{"get":"q","limit":1}]`), ``, kv.ErrInvalidCommand, `{"op":"batch","index":1}`),
			s(M(`"count":null`), ``, op("count", "", `2`, true)),
			s(M(`"batch":[{"clear":null},{"count":null}]`), ``, Out(`[2,0]`, `"op":"batch","found":true`)),
		}},
	}
}

// budgetResultSteps exercise a result budget of 100 bytes over five keys
// whose values are 32 bytes of JSON each.
func budgetResultSteps() []step {
	v := `"` + strings.Repeat("a", 30) + `"`
	batchOut := func(data string) string { return Out(data, `"op":"batch","found":true`) }
	var steps []step
	for _, k := range []string{"k1", "k2", "k3", "k4", "k5"} {
		steps = append(steps, s(M(`"put":"`+k+`"`), v, op("put", k, v, true)))
	}
	return append(steps,
		// 37, 38 and 38 bytes of entries: the third crosses 100.
		e(M(`"get_all":null`), ``, kv.ErrBudgetExceeded, `{"op":"get_all","key":""}`, `get_all ""`, "max_result_bytes (100 bytes)", "after 3 keys", "raise the connector's max_result_bytes"),
		s(M(`"get_all":"k1"`), ``, op("get_all", "k1", `{"k1":`+v+`}`, true)),
		e(M(`"scan":""`), ``, kv.ErrBudgetExceeded, `{"op":"scan","key":""}`, "max_result_bytes (100 bytes)", "after 3 keys"),
		s(M(`"scan":"","limit":2`), ``, row("k1", v, false), row("k2", v, true)),
		// A batch counts all its elements: three gets fit, four do not.
		s(M(`"batch":[{"get":"k1"},{"get":"k2"},{"get":"k3"}]`), ``, batchOut(`[`+v+`,`+v+`,`+v+`]`)),
		e(M(`"batch":[{"put":"w","value":1},{"get":"k1"},{"get":"k2"},{"get":"k3"},{"get":"k4"}]`), ``, kv.ErrBudgetExceeded,
			`{"op":"batch","index":4}`, "batch[4]", `get "k4"`, "max_result_bytes (100 bytes)"),
		s(M(`"get":"w"`), ``, get("w", `null`, false)), // the failed batch wrote nothing
		e(M(`"batch":[{"get":"k1"},{"get":"k2"},{"delete":"k3"},{"get":"k4"}]`), ``, kv.ErrBudgetExceeded, `{"op":"batch","index":3}`, "batch[3]"),
		s(M(`"get":"k3"`), ``, get("k3", v, true)),
		s(M(`"batch":[{"get":"k1"},{"get_all":"k2"}]`), ``, batchOut(`[`+v+`,{"k2":`+v+`}]`)),
		e(M(`"batch":[{"get_all":"k1"},{"get_all":"k2"},{"get_all":"k3"}]`), ``, kv.ErrBudgetExceeded, `{"op":"batch","index":2}`, "batch[2]", `get_all "k3"`),
		// The budget is per event: the next one starts afresh.
		s(M(`"get":"k5"`), ``, get("k5", v, true)),
	)
}

// budgetWorkSteps exercise a work budget of 10 keys visited over twelve
// keys k01..k12.
func budgetWorkSteps() []step {
	batchOut := func(data string) string { return Out(data, `"op":"batch","found":true`) }
	var steps []step
	for i := 1; i <= 12; i++ {
		k := fmt.Sprintf("k%02d", i)
		steps = append(steps, s(M(`"put":"`+k+`"`), `1`, op("put", k, `1`, true)))
	}
	return append(steps,
		e(M(`"count":null`), ``, kv.ErrBudgetExceeded, `{"op":"count","key":""}`, `count ""`, "max_keys_visited (10)", "raise the connector's max_keys_visited"),
		s(M(`"count":"k0"`), ``, op("count", "k0", `9`, true)),
		e(M(`"keys":null`), ``, kv.ErrBudgetExceeded, `{"op":"keys","key":""}`, "max_keys_visited (10)"),
		s(M(`"keys":null,"limit":5`), ``, op("keys", "", `["k01","k02","k03","k04","k05"]`, true, `,"next":"k05"`)),
		e(M(`"scan":""`), ``, kv.ErrBudgetExceeded, `{"op":"scan","key":""}`, "max_keys_visited (10)"),
		s(M(`"scan":"k1"`), ``, row("k10", `1`, false), row("k11", `1`, false), row("k12", `1`, true)),
		e(M(`"get_all":null`), ``, kv.ErrBudgetExceeded, `{"op":"get_all","key":""}`, "max_keys_visited (10)"),
		s(M(`"get_all":"k1"`), ``, op("get_all", "k1", `{"k10":1,"k11":1,"k12":1}`, true)),
		// clear counts what it deletes: over the budget it deletes nothing.
		e(M(`"clear":null`), ``, kv.ErrBudgetExceeded, `{"op":"clear","key":""}`, `clear ""`, "max_keys_visited (10)"),
		s(M(`"count":"k0"`), ``, op("count", "k0", `9`, true)),
		// A batch counts all its elements: 9 + 3 keys.
		e(M(`"batch":[{"count":"k0"},{"count":"k1"}]`), ``, kv.ErrBudgetExceeded, `{"op":"batch","index":1}`, "batch[1]", `count "k1"`),
		e(M(`"batch":[{"put":"x","value":1},{"count":"k0"},{"get":"k01"},{"get":"k02"}]`), ``, kv.ErrBudgetExceeded,
			`{"op":"batch","index":3}`, "batch[3]", "max_keys_visited (10)"),
		s(M(`"get":"x"`), ``, get("x", `null`, false)), // the failed batch wrote nothing
		s(M(`"batch":[{"count":"k0"},{"get":"k01"}]`), ``, batchOut(`[9,1]`)),
		s(M(`"clear":"k1"`), ``, op("clear", "k1", `3`, true)),
	)
}
