package kv

import (
	"reflect"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/pipeline"
)

func newDecodeConnector(opts Options) *Connector {
	c := &Connector{opts: opts}
	c.opts.EnsureDefaults()
	c.dec = decoder{opts: &c.opts}
	return c
}

// simpleCase is an event's meta and data, and whether decodeSimple takes
// them.
type simpleCase struct {
	meta, data string
	simple     bool
}

// checkSimpleCase runs checkDecodeSimple on tc.
func checkSimpleCase(t *testing.T, c *Connector, tc simpleCase) {
	t.Helper()
	var data []byte
	if tc.data != "" {
		data = []byte(tc.data)
	}
	checkDecodeSimple(t, c, pipeline.Event{Meta: []byte(tc.meta), Data: data}, &tc.simple)
}

// checkDecodeSimple fails t when decodeSimple accepts ev and the general
// path does not give the same command, or when it disagrees with wantOK.
func checkDecodeSimple(t *testing.T, c *Connector, ev pipeline.Event, wantOK *bool) {
	t.Helper()
	// A slot of a reused scratch holds the previous slice's command:
	// decodeSimple must leave nothing of it.
	fast := command{op: opCas, old: []byte("stale"), def: []byte("1"), ttlMs: 5, refresh: true, idem: "x", sub: []command{{}}}
	fastCorr, ok := c.decodeSimple(ev, &fast)
	if wantOK != nil && ok != *wantOK {
		t.Errorf("meta %s data %s: simple path taken = %t, want %t", ev.Meta, ev.Data, ok, *wantOK)
	}
	if !ok {
		return
	}
	general, corr, err := c.decodeGeneral(ev)
	if err != nil {
		t.Fatalf("meta %s data %s: simple path accepts what the general path refuses: %v", ev.Meta, ev.Data, err)
	}
	if !fastCorr.known || !corr.known || string(fastCorr.raw) != string(corr.raw) || (fastCorr.raw == nil) != (corr.raw == nil) {
		t.Errorf("meta %s: correlation %q (known %t), general path %q (known %t)", ev.Meta, fastCorr.raw, fastCorr.known, corr.raw, corr.known)
	}
	if !reflect.DeepEqual(fast, general) {
		t.Errorf("meta %s data %s:\nsimple  %+v\ngeneral %+v", ev.Meta, ev.Data, fast, general)
	}
}

func TestDecodeSimpleMatchesGeneral(t *testing.T) {
	c := newDecodeConnector(Options{MaxKeyLength: 20, MaxValueBytes: 50})
	long := strings.Repeat("k", 20)
	for _, tc := range []simpleCase{
		{`{"kv":{"get":"k0000012345"}}`, ``, true},
		{`{"kv":{"exists":"a b~"}}`, ``, true},
		{`{"kv":{"delete":"x"}}`, ``, true},
		{`{"kv":{"put":"k1"}}`, `"v"`, true},
		{`{"kv":{"put":"k1"}}`, `{"b":1,"a":2}`, true}, // canonicalised, as the general path does
		{`{"kv":{"increment":"k1"}}`, ``, true},
		{`{"kv":{"increment":"k1","by":1}}`, ``, true},
		{`{"kv":{"increment":"k1","by":-42}}`, ``, true},
		{`{"kv":{"increment":"k1","by":0}}`, ``, true},
		{`{"kv":{"increment":"k1","by":-0}}`, ``, true},
		{`{"kv":{"increment":"k1","by":999999999999999999}}`, ``, true},
		{`{"kv":{"get":"` + long + `"}}`, ``, true},
		// Left to the general path.
		{`{"kv":{"increment":"k1","by":9999999999999999999}}`, ``, false},
		{`{"kv":{"increment":"k1","by":01}}`, ``, false},
		{`{"kv":{"increment":"k1","by":1.5}}`, ``, false},
		{`{"kv":{"increment":"k1","by":1e3}}`, ``, false},
		{`{"kv":{"increment":"k1","by":-}}`, ``, false},
		{`{"kv":{"get":"k1","by":1}}`, ``, false},
		{`{"kv":{"get":"` + long + `k"}}`, ``, false},
		{`{"kv":{"get":""}}`, ``, false},
		{`{"kv":{"get":"a\"b"}}`, ``, false},
		{`{"kv":{"get":"a\u0062"}}`, ``, false},
		{`{"kv":{"get":"é"}}`, ``, false},
		{`{"kv":{"get":"a"}} `, ``, false},
		{`{"kv":{"get":"a"}}}`, ``, false},
		{`{"kv":{"get":"a"},"correlation":1}`, ``, true},
		{`{"kv":{"increment":"a","by":2},"correlation":{"id":"x","kv":{"put":"b"}}}`, ``, true},
		{`{"kv":{"put":"a"},"correlation":[1,"}",null]}`, `1`, true},
		{`{"kv":{"get":"a"},"correlation":"a\"b"}`, ``, true},
		{`{"kv":{"get":"a"},"correlation": 1}`, ``, false},
		{`{"kv":{"get":"a"},"correlation":1 }`, ``, false},
		{`{"kv":{"get":"a"},"correlation":}`, ``, false},
		{`{"kv":{"get":"a"},"correlation":[1}`, ``, false},
		{`{"kv":{"get":"a"},"correlation":1}}`, ``, false},
		// Other members beside kv, as a bus source's meta has them.
		{`{"kv":{"get":"a"},"correlation":1,"x":2}`, ``, true},
		{`{"kv":{"get":"a"},"other":1}`, ``, true},
		{`{"correlation":"m-1","delivery_count":1,"kv":{"put":"p/1"},"message_id":"1-0","stream":"in"}`, `{"i":1}`, true},
		{`{"a":{"b":["}",{"c":"]"}],"d":"\"{"},"kv":{"increment":"n","by":3},"z":null}`, ``, true},
		{`{"a":true,"b":false,"c":-1.5e3,"kv":{"get":"a"}}`, ``, true},
		// The first kv and the first correlation count, as gjson finds them.
		{`{"kv":{"get":"a"},"correlation":{"a":1},"kv":{"get":"b"}}`, ``, true},
		{`{"correlation":1,"kv":{"get":"a"},"correlation":2}`, ``, true},
		{`{"kv":{"get":"a"},"kv":{"scan":"b"}}`, ``, true},
		{`{"kv":{"scan":"b"},"kv":{"get":"a"}}`, ``, false},
		// Left to the general path: names with escapes (which may spell
		// kv), whitespace between members, an invalid member anywhere.
		{`{"k\u0076":{"get":"a"}}`, ``, false},
		{`{"x\"":1,"kv":{"get":"a"}}`, ``, false},
		{`{"correlation":1,"k\u0076":{"get":"b"},"kv":{"get":"a"}}`, ``, false},
		{`{"kv":{"get":"a"}, "x":1}`, ``, false},
		{`{"kv":{"get":"a"},"x" :1}`, ``, false},
		{`{"kv":{"get":"a"},"x":1 }`, ``, false},
		{`{ "kv":{"get":"a"}}`, ``, false},
		{`{"kv":{"get":"a"},"x":tru}`, ``, false},
		{`{"kv":{"get":"a"},"x":"a\nb\u00e9"}`, ``, true},
		{`{"kv":{"get":"a"},"x":"a` + "\n" + `b"}`, ``, false},
		{`{"kv":{"get":"a"},"x":"a` + "\x01" + `"}`, ``, false},
		{`{"kv":{"get":"a"},"x":[1,}`, ``, false},
		{`{"kv":{"get":"a"},"x":{"y":1}}}`, ``, false},
		{`{"kv":{"get":"a"},"x":"}`, ``, false},
		{`{"kv":{"get":"a"},}`, ``, false},
		{`{"kv":{"get":"a"},"x"}`, ``, false},
		{`{"x":1}`, ``, false},
		{`{}`, ``, false},
		{`{"kv":{"get":"a","default":1}}`, ``, false},
		{`{"kv": {"get":"a"}}`, ``, false},
		{`{"kv":{"touch":"a"}}`, ``, false},
		{`{"kv":{"scan":"a"}}`, ``, false},
		{`{"kv":{"put":"k1"}}`, ``, false},
		{`{"kv":{"put":"k1"}}`, `null`, false},
		{`{"kv":{"put":"k1"}}`, `"` + strings.Repeat("v", 60) + `"`, false},
		{`{"kv":{"put":"k1"}}`, `{"a":1,"a":2}`, true}, // the value is canonicalised alike
		{`{"kv":{"get":"a`, ``, false},
		{``, ``, false},
	} {
		checkSimpleCase(t, c, tc)
	}
	// Options that need the general path.
	ev := pipeline.Event{Meta: []byte(`{"kv":{"put":"k1"},"id":"a","x.y":"b","correlation":"c"}`), Data: []byte(`1`)}
	for name, opts := range map[string]Options{
		"idem_from missing":     {IdemFrom: "none"},
		"idem_from a path":      {IdemFrom: "x.y"},
		"idem_from correlation": {IdemFrom: "correlation"},
		"input_from":            {InputFrom: "id"},
	} {
		var cmd command
		if _, ok := newDecodeConnector(opts).decodeSimple(ev, &cmd); ok {
			t.Errorf("%s: simple path taken", name)
		}
	}
}

// TestDecodeSimpleIdemFrom: with idem_from naming a member, the simple
// path takes a command that writes only with that member a plain string,
// and then the same idempotency key as the general path.
func TestDecodeSimpleIdemFrom(t *testing.T) {
	c := newDecodeConnector(Options{IdemFrom: "message_id", MaxKeyLength: 20})
	for _, tc := range []simpleCase{
		{`{"delivery_count":1,"kv":{"put":"p/1"},"message_id":"in:7","stream":"in"}`, `1`, true},
		{`{"kv":{"increment":"n","by":2},"message_id":"m-1"}`, ``, true},
		{`{"message_id":"m-1","kv":{"delete":"n"}}`, ``, true},
		{`{"message_id":"m-1","kv":{"get":"n"},"message_id":"m-2"}`, ``, true},
		{`{"message_id":"m-1","kv":{"put":"n"},"message_id":"m-2"}`, `1`, true},
		// Reads need no idempotency key.
		{`{"kv":{"get":"n"}}`, ``, true},
		{`{"kv":{"exists":"n"},"message_id":7}`, ``, true},
		// Left to the general path, which refuses or unescapes them.
		{`{"kv":{"put":"n"}}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":""}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":7}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":null}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":"a\u0062"}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":"é"}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":"` + strings.Repeat("m", 21) + `"}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":"` + strings.Repeat("m", 20) + `"}`, `1`, true},
		{`{"kv":{"put":"n"},"message_id":"a`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":"a"x}`, `1`, false},
		{`{"kv":{"put":"n"},"message_id":1x}`, `1`, false},
	} {
		checkSimpleCase(t, c, tc)
	}
}

func FuzzDecodeSimple(f *testing.F) {
	for _, s := range []string{`{"kv":{"get":"k1"}}`, `{"kv":{"increment":"k1","by":-7}}`, `{"kv":{"put":"a"}}`, `{"kv":{"get":"k1"},"correlation":{"a":[1]}}`,
		`{"correlation":"m-1","delivery_count":1,"kv":{"put":"p/1"},"message_id":"1-0","stream":"in"}`, `{"a":["}",{"b":"\\"}],"kv":{"get":"x"},"kv":1}`} {
		f.Add([]byte(s), []byte(`"v"`))
	}
	f.Add([]byte(`{"kv":{"put":"p"},"message_id":"m-1"}`), []byte(`1`))
	c := newDecodeConnector(Options{MaxKeyLength: 16})
	idem := newDecodeConnector(Options{MaxKeyLength: 16, IdemFrom: "message_id"})
	f.Fuzz(func(t *testing.T, meta, data []byte) {
		checkDecodeSimple(t, c, pipeline.Event{Meta: meta, Data: data}, nil)
		checkDecodeSimple(t, idem, pipeline.Event{Meta: meta, Data: data}, nil)
	})
}
