package redisstream

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// directCases are entries for direct against toMessage and bus.ToEvent.
// direct says whether direct must take the entry itself (the usual
// entries) rather than leave it to toMessage; meta, when set, is the event
// meta both must give (delivery fields appended: see withDelivery).
var directCases = []struct {
	name   string
	values map[string]any
	direct bool
	meta   string
}{
	{name: "the benchmark's entry", values: map[string]any{"data": `{"i":7}`, "kv": `{"put":"p/7"}`}, direct: true,
		meta: `{"kv":{"put":"p/7"},"message_id":"1-2",` + deliveryMeta + `}`},
	{name: "published by flowrun", values: map[string]any{"data": `{"a":1}`, "correlation_id": "42", "kv": `{"get":"k"}`, "tag": "[x", "flowrun_json": "kv"}, direct: true,
		meta: `{"correlation":"42","kv":{"get":"k"},"message_id":"1-2",` + deliveryMeta + `,"tag":"[x"}`},
	{name: "flowrun_json with spaces", values: map[string]any{"data": `1`, "a": `[1]`, "b": `{"c":2}`, "flowrun_json": " b , a"}, direct: true,
		meta: `{"a":[1],"b":{"c":2},"message_id":"1-2",` + deliveryMeta + `}`},
	{name: "flowrun_json empty: strings only", values: map[string]any{"data": `1`, "a": `[1]`, "flowrun_json": ""}, direct: true,
		meta: `{"a":"[1]","message_id":"1-2",` + deliveryMeta + `}`},
	{name: "no data field", values: map[string]any{"user": "ann", "kv": `{"increment":"hits"}`}, direct: true,
		meta: `{"kv":{"increment":"hits"},"message_id":"1-2",` + deliveryMeta + `,"user":"ann"}`},
	{name: "no fields", values: map[string]any{}, direct: true, meta: `{"message_id":"1-2",` + deliveryMeta + `}`},
	{name: "empty data", values: map[string]any{"data": ""}, direct: true},
	{name: "blank data", values: map[string]any{"data": " \n\t"}, direct: true},
	{name: "data with spaces", values: map[string]any{"data": " {\"a\": [1, 2]}\n"}, direct: true},
	{name: "data a string", values: map[string]any{"data": `"é<>"`}, direct: true},
	{name: "data not JSON", values: map[string]any{"data": "hello", "kv": `{"put":"k"}`}},
	{name: "data with a member twice", values: map[string]any{"data": `{"a":1,"a":2}`}},
	{name: "data with invalid UTF-8", values: map[string]any{"data": "\"\xff\""}},
	{name: "data with a lone surrogate", values: map[string]any{"data": `"\ud800"`}},
	{name: "a key given bare and prefixed", values: map[string]any{"data": `1`, "kv": `{"put":"bare"}`, "meta.kv": `{"put":"prefixed"}`}, direct: true,
		meta: `{"kv":{"put":"prefixed"},"message_id":"1-2",` + deliveryMeta + `}`},
	{name: "meta.data and meta.meta.", values: map[string]any{"data": `1`, "meta.data": "x", "meta.meta.": "y", "meta.meta.k": "z"}, direct: true,
		meta: `{"data":"x","message_id":"1-2","meta.":"y","meta.k":"z",` + deliveryMeta + `}`},
	{name: "meta. alone", values: map[string]any{"meta.": "empty key"}, direct: true,
		meta: `{"":"empty key","message_id":"1-2",` + deliveryMeta + `}`},
	{name: "delivery fields written by a producer", values: map[string]any{"data": `1`, "redis_stream": "forged", "meta.redis_consumer": "forged", "flowrun_delivered": "9", "message_id": "forged"}, direct: true,
		meta: `{"message_id":"1-2",` + deliveryMeta + `}`},
	{name: "correlation alone", values: map[string]any{"data": `1`, "correlation": "c"}},
	{name: "correlation and correlation_id", values: map[string]any{"data": `1`, "correlation": "c", "correlation_id": "d"}},
	{name: "a decode error", values: map[string]any{"data": `1`, "flowrun_decode_error": "bad"}},
	{name: "foreign value that only looks like JSON", values: map[string]any{"data": `1`, "note": "{not json", "list": " [1,2] "}, direct: true,
		meta: `{"list":[1,2],"message_id":"1-2","note":"{not json",` + deliveryMeta + `}`},
	{name: "foreign JSON value with a member twice", values: map[string]any{"data": `1`, "v": `{"a":1,"a":2}`}, direct: true,
		meta: `{"message_id":"1-2",` + deliveryMeta + `,"v":"{\"a\":1,\"a\":2}"}`},
	{name: "listed JSON value that is not JSON", values: map[string]any{"data": `1`, "v": `{oops`, "flowrun_json": "v"}},
	{name: "listed JSON value with invalid UTF-8", values: map[string]any{"data": `1`, "v": "\"\xff\"", "flowrun_json": "v"}},
	{name: "strings to escape", values: map[string]any{"data": `1`, "s": "a<b>&\"c\"\n", "u": "é\u2028", "k\"ey": "v"}, direct: true},
	{name: "HTML characters", values: map[string]any{"data": `1`, "s": "a<b", "t&u": "v>w"}, direct: true,
		meta: `{"message_id":"1-2",` + deliveryMeta + `,"s":"a\u003cb","t\u0026u":"v\u003ew"}`},
	{name: "value with invalid UTF-8", values: map[string]any{"data": `1`, "s": "\xff"}},
	{name: "key with invalid UTF-8", values: map[string]any{"data": `1`, "\xfe": "v"}},
	{name: "a value that is not a string", values: map[string]any{"data": `1`, "n": int64(5)}},
	{name: "too many fields to take", values: manyFields(maxDirectFields + 1)},
	{name: "as many fields as it takes", values: manyFields(maxDirectFields), direct: true},
}

// deliveryMeta is the meta the test decoder adds to every entry.
const deliveryMeta = `"redis_consumer":"c1","redis_stream":"s"`

func manyFields(n int) map[string]any {
	v := map[string]any{"data": `1`}
	for i := range n - 1 {
		v[fmt.Sprintf("f%02d", i)] = fmt.Sprint(i)
	}
	return v
}

// checkDirect compares the decoder with message and bus.ToEvent on x:
// event, whether direct takes x or not, must give their event and error;
// when direct takes x, its event must be theirs, without an error. It
// returns whether direct took x.
func checkDirect(t *testing.T, d *decoder, x redis.XMessage, n int) bool {
	t.Helper()
	slow := toMessage(x)
	setDelivery(slow, n, d.stream, d.consumer)
	want, werr := bus.ToEvent(slow)
	got, gerr := d.event(x, n)
	if !bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Meta, want.Meta) || fmt.Sprint(gerr) != fmt.Sprint(werr) {
		t.Errorf("event: %s %s, error %v; want %s %s, error %v", got.Data, got.Meta, gerr, want.Data, want.Meta, werr)
	}
	fast, ok := d.direct(x)
	if !ok {
		return false
	}
	if werr != nil {
		t.Errorf("direct took an entry bus.ToEvent refuses: %v", werr)
	}
	if !bytes.Equal(fast.Data, want.Data) || (fast.Data == nil) != (want.Data == nil) || !bytes.Equal(fast.Meta, want.Meta) {
		t.Errorf("direct: event %q %s, want %q %s", fast.Data, fast.Meta, want.Data, want.Meta)
	}
	return true
}

// TestDirectMatchesMessage: direct takes the usual entries and gives the
// event toMessage and bus.ToEvent give; the rest (payloads that are not
// JSON, values that are not UTF-8, ...) it leaves to them. The message
// dead letters are made of carries the delivery metadata.
func TestDirectMatchesMessage(t *testing.T) {
	d := &decoder{stream: "s", consumer: "c1"}
	for _, tc := range directCases {
		t.Run(tc.name, func(t *testing.T) {
			x := redis.XMessage{ID: "1-2", Values: tc.values}
			took := checkDirect(t, d, x, 3)
			if took != tc.direct {
				t.Errorf("direct took the entry: %v, want %v", took, tc.direct)
			}
			if tc.meta != "" {
				ev, err := d.event(x, 3)
				if err != nil || string(ev.Meta) != tc.meta {
					t.Errorf("meta %s (%v), want %s", ev.Meta, err, tc.meta)
				}
			}
			m := d.message(x, 3)
			if m.UUID != "1-2" || m.Metadata.Get(bus.DeliveredKey) != "3" || m.Metadata.Get(StreamMeta) != "s" || m.Metadata.Get(ConsumerMeta) != "c1" {
				t.Errorf("message %s, delivery metadata %v", m.UUID, m.Metadata)
			}
		})
	}
}

// TestDirectPayloadIsCopied: the event's data direct makes is the
// payload without the spaces around it, in bytes of its own (the entry's
// string is not modified through it).
func TestDirectPayloadIsCopied(t *testing.T) {
	d := &decoder{stream: "s", consumer: "c"}
	payload := " [1, 2] "
	ev, ok := d.direct(redis.XMessage{ID: "1-0", Values: map[string]any{"data": payload}})
	if !ok {
		t.Fatal("direct left a JSON payload")
	}
	if string(ev.Data) != "[1, 2]" {
		t.Fatalf("data %q", ev.Data)
	}
	ev.Data[0] = '{'
	if payload != " [1, 2] " {
		t.Errorf("the entry's payload changed through the event's data: %q", payload)
	}
}

// FuzzDirectMatchesMessage: whatever the entry, direct gives what
// toMessage and bus.ToEvent give, or leaves the entry to them.
func FuzzDirectMatchesMessage(f *testing.F) {
	f.Add(`{"i":1}`, "kv", `{"put":"k"}`, "meta.kv", "x", "flowrun_json", "kv")
	f.Add("hello", "data", "", "meta.data", "[1", "correlation_id", "7")
	f.Add(" 1 ", "meta.meta.", "\xff", "a", "{\"a\":1,\"a\":2}", "b", "[]")
	f.Fuzz(func(t *testing.T, data, k1, v1, k2, v2, k3, v3 string) {
		values := map[string]any{"data": data, k1: v1, k2: v2, k3: v3}
		checkDirect(t, &decoder{stream: "s", consumer: "c"}, redis.XMessage{ID: "9-9", Values: values}, 1)
	})
}

// BenchmarkDecodeEntry measures what an entry of the flow benchmark costs
// until it is an event, made directly (event) or through its message's
// metadata (message, then bus.ToEvent).
func BenchmarkDecodeEntry(b *testing.B) {
	x := redis.XMessage{ID: "1733300000000-12345", Values: map[string]any{"data": `{"i":12345}`, "kv": `{"put":"p/12345"}`}}
	for _, path := range []struct {
		name  string
		event func(*decoder, redis.XMessage, int) (pipeline.Event, error)
	}{
		{"direct", (*decoder).event},
		{"metadata", func(d *decoder, x redis.XMessage, n int) (pipeline.Event, error) {
			return d.bus.ToEvent(d.message(x, n))
		}},
	} {
		b.Run(path.name, func(b *testing.B) {
			d := &decoder{stream: "bench.flow", consumer: "c"}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := path.event(d, x, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
