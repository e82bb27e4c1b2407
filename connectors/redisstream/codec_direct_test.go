package redisstream

import (
	"bytes"
	"fmt"
	"maps"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/connectors/bus"
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
		meta: `{"kv":{"put":"p/7"},"message_id":"1-2",` + delivery + `}`},
	{name: "published by flowrun", values: map[string]any{"data": `{"a":1}`, "correlation_id": "42", "kv": `{"get":"k"}`, "tag": "[x", "flowrun_json": "kv"}, direct: true,
		meta: `{"correlation":"42","kv":{"get":"k"},"message_id":"1-2",` + delivery + `,"tag":"[x"}`},
	{name: "flowrun_json with spaces", values: map[string]any{"data": `1`, "a": `[1]`, "b": `{"c":2}`, "flowrun_json": " b , a"}, direct: true,
		meta: `{"a":[1],"b":{"c":2},"message_id":"1-2",` + delivery + `}`},
	{name: "flowrun_json empty: strings only", values: map[string]any{"data": `1`, "a": `[1]`, "flowrun_json": ""}, direct: true,
		meta: `{"a":"[1]","message_id":"1-2",` + delivery + `}`},
	{name: "no data field", values: map[string]any{"user": "ann", "kv": `{"increment":"hits"}`}, direct: true,
		meta: `{"kv":{"increment":"hits"},"message_id":"1-2",` + delivery + `,"user":"ann"}`},
	{name: "no fields", values: map[string]any{}, direct: true, meta: `{"message_id":"1-2",` + delivery + `}`},
	{name: "empty data", values: map[string]any{"data": ""}, direct: true},
	{name: "blank data", values: map[string]any{"data": " \n\t"}, direct: true},
	{name: "data with spaces", values: map[string]any{"data": " {\"a\": [1, 2]}\n"}, direct: true},
	{name: "data a string", values: map[string]any{"data": `"é<>"`}, direct: true},
	{name: "data not JSON", values: map[string]any{"data": "hello", "kv": `{"put":"k"}`}},
	{name: "data with a member twice", values: map[string]any{"data": `{"a":1,"a":2}`}},
	{name: "data with invalid UTF-8", values: map[string]any{"data": "\"\xff\""}},
	{name: "data with a lone surrogate", values: map[string]any{"data": `"\ud800"`}},
	{name: "a key given bare and prefixed", values: map[string]any{"data": `1`, "kv": `{"put":"bare"}`, "meta.kv": `{"put":"prefixed"}`}, direct: true,
		meta: `{"kv":{"put":"prefixed"},"message_id":"1-2",` + delivery + `}`},
	{name: "meta.data and meta.meta.", values: map[string]any{"data": `1`, "meta.data": "x", "meta.meta.": "y", "meta.meta.k": "z"}, direct: true,
		meta: `{"data":"x","message_id":"1-2","meta.":"y","meta.k":"z",` + delivery + `}`},
	{name: "meta. alone", values: map[string]any{"meta.": "empty key"}, direct: true,
		meta: `{"":"empty key","message_id":"1-2",` + delivery + `}`},
	{name: "delivery fields written by a producer", values: map[string]any{"data": `1`, "redis_stream": "forged", "meta.redis_consumer": "forged", "flowrun_delivered": "9", "message_id": "forged"}, direct: true,
		meta: `{"message_id":"1-2",` + delivery + `}`},
	{name: "correlation alone", values: map[string]any{"data": `1`, "correlation": "c"}},
	{name: "correlation and correlation_id", values: map[string]any{"data": `1`, "correlation": "c", "correlation_id": "d"}},
	{name: "a decode error", values: map[string]any{"data": `1`, "flowrun_decode_error": "bad"}},
	{name: "foreign value that only looks like JSON", values: map[string]any{"data": `1`, "note": "{not json", "list": " [1,2] "}, direct: true,
		meta: `{"list":[1,2],"message_id":"1-2","note":"{not json",` + delivery + `}`},
	{name: "foreign JSON value with a member twice", values: map[string]any{"data": `1`, "v": `{"a":1,"a":2}`}, direct: true,
		meta: `{"message_id":"1-2",` + delivery + `,"v":"{\"a\":1,\"a\":2}"}`},
	{name: "listed JSON value that is not JSON", values: map[string]any{"data": `1`, "v": `{oops`, "flowrun_json": "v"}},
	{name: "listed JSON value with invalid UTF-8", values: map[string]any{"data": `1`, "v": "\"\xff\"", "flowrun_json": "v"}},
	{name: "strings to escape", values: map[string]any{"data": `1`, "s": "a<b>&\"c\"\n", "u": "é\u2028", "k\"ey": "v"}, direct: true},
	{name: "HTML characters", values: map[string]any{"data": `1`, "s": "a<b", "t&u": "v>w"}, direct: true,
		meta: `{"message_id":"1-2",` + delivery + `,"s":"a\u003cb","t\u0026u":"v\u003ew"}`},
	{name: "value with invalid UTF-8", values: map[string]any{"data": `1`, "s": "\xff"}},
	{name: "key with invalid UTF-8", values: map[string]any{"data": `1`, "\xfe": "v"}},
	{name: "a value that is not a string", values: map[string]any{"data": `1`, "n": int64(5)}},
	{name: "too many fields to take", values: manyFields(maxDirectFields + 1)},
	{name: "as many fields as it takes", values: manyFields(maxDirectFields), direct: true},
}

// delivery is the meta the test decoder adds to every entry.
const delivery = `"redis_consumer":"c1","redis_stream":"s"`

func manyFields(n int) map[string]any {
	v := map[string]any{"data": `1`}
	for i := range n - 1 {
		v[fmt.Sprintf("f%02d", i)] = fmt.Sprint(i)
	}
	return v
}

// checkDirect compares direct with toMessage, setDelivery and bus.ToEvent
// on x: when direct takes x, its message (id, payload, metadata) and
// attached event must be theirs, without an error. Whether direct takes x
// or not, decode's message must give their event and error. It returns
// whether direct took x.
func checkDirect(t *testing.T, d *decoder, x redis.XMessage, n int) bool {
	t.Helper()
	slow := toMessage(x)
	setDelivery(slow, n, d.stream, d.consumer)
	want, werr := bus.ToEvent(slow)
	got, gerr := bus.ToEvent(d.decode(x, n))
	if !bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Meta, want.Meta) || fmt.Sprint(gerr) != fmt.Sprint(werr) {
		t.Errorf("decode: event %s %s, error %v; want %s %s, error %v", got.Data, got.Meta, gerr, want.Data, want.Meta, werr)
	}
	fast := d.direct(x, n)
	if fast == nil {
		return false
	}
	if werr != nil {
		t.Errorf("direct took an entry bus.ToEvent refuses: %v", werr)
	}
	if fast.UUID != slow.UUID || !bytes.Equal(fast.Payload, slow.Payload) || (fast.Payload == nil) != (slow.Payload == nil) {
		t.Errorf("direct: message %s %q, want %s %q", fast.UUID, fast.Payload, slow.UUID, slow.Payload)
	}
	if !maps.Equal(fast.Metadata, slow.Metadata) {
		t.Errorf("direct: metadata %v, want %v", fast.Metadata, slow.Metadata)
	}
	ev, err := bus.ToEvent(fast)
	if err != nil || !bytes.Equal(ev.Data, want.Data) || !bytes.Equal(ev.Meta, want.Meta) {
		t.Errorf("direct: event %s %s (%v), want %s %s", ev.Data, ev.Meta, err, want.Data, want.Meta)
	}
	// The event is the one attached: the metadata must still be right
	// for what is made of the message without it (a dead letter).
	plain := message.NewMessage(fast.UUID, fast.Payload)
	plain.Metadata = fast.Metadata
	if ev, err := bus.ToEvent(plain); err != nil || !bytes.Equal(ev.Meta, want.Meta) {
		t.Errorf("direct: metadata converts to %s (%v), want %s", ev.Meta, err, want.Meta)
	}
	return true
}

// TestDirectMatchesMessage: direct takes the usual entries and gives the
// message and event toMessage and bus.ToEvent give; the rest (payloads
// that are not JSON, values that are not UTF-8, ...) it leaves to them.
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
				ev, err := bus.ToEvent(d.decode(x, 3))
				if err != nil || string(ev.Meta) != tc.meta {
					t.Errorf("meta %s (%v), want %s", ev.Meta, err, tc.meta)
				}
			}
			m := d.decode(x, 3)
			if m.Metadata.Get(bus.DeliveredKey) != "3" || m.Metadata.Get(StreamMeta) != "s" || m.Metadata.Get(ConsumerMeta) != "c1" {
				t.Errorf("delivery metadata %v", m.Metadata)
			}
		})
	}
}

// TestDirectPayloadStaysData: a payload direct took keeps its bytes, and
// the event's data is the payload without the spaces around it.
func TestDirectPayloadStaysData(t *testing.T) {
	d := &decoder{stream: "s", consumer: "c"}
	m := d.direct(redis.XMessage{ID: "1-0", Values: map[string]any{"data": " [1, 2] "}}, 1)
	if m == nil {
		t.Fatal("direct left a JSON payload")
	}
	ev, err := bus.ToEvent(m)
	if err != nil || string(ev.Data) != "[1, 2]" || string(m.Payload) != " [1, 2] " {
		t.Errorf("data %q (%v), payload %q", ev.Data, err, m.Payload)
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
// until it is an event, made directly (decode) or through the message's
// metadata (toMessage, setDelivery, then bus.ToEvent).
func BenchmarkDecodeEntry(b *testing.B) {
	x := redis.XMessage{ID: "1733300000000-12345", Values: map[string]any{"data": `{"i":12345}`, "kv": `{"put":"p/12345"}`}}
	for _, path := range []struct {
		name   string
		decode func(*decoder, redis.XMessage, int) *message.Message
	}{
		{"direct", (*decoder).decode},
		{"metadata", func(d *decoder, x redis.XMessage, n int) *message.Message {
			m := toMessage(x)
			setDelivery(m, n, d.stream, d.consumer)
			return m
		}},
	} {
		b.Run(path.name, func(b *testing.B) {
			d := &decoder{stream: "bench.flow", consumer: "c"}
			var bd bus.Decoder
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bd.ToEvent(path.decode(d, x, 1)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
