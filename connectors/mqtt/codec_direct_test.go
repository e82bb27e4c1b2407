package mqtt

import (
	"bytes"
	"maps"
	"testing"

	"github.com/flowrun/flowrun/connectors/bus"
)

// directCases are payloads for direct against decodeMessage; direct says
// whether direct must take them itself (the usual messages) rather than
// leave them to decodeMessage.
var directCases = []struct {
	codec, idFrom, payload string
	direct                 bool
}{
	{CodecEvent, "", `{"data":{"i":1,"pad":"0123456789abcdef"},"meta":{"correlation":1,"kv":{"put":"k/1"}}}`, true},
	{CodecEvent, "", `{"meta":{"kv":{"put":"k/1"},"correlation":"c-1","message_id":"m-1"},"data":[1,2]}`, true},
	{CodecEvent, "", `{"data":{"n":1},"meta":{"message_id":"m-1","correlation":7,"kv":{"get":"k"},"tag":"x","mqtt":"forged"}}`, true},
	{CodecEvent, "", `{"data":1,"meta":{"s":"a<b","u":"\u00e9\n","e":"\u2028","z":null,"t":true,"f":1.5e3}}`, true},
	{CodecEvent, "", ` {"data":1}`, false},
	{CodecEvent, "", `{"data":[1]}`, true},
	{CodecEvent, "", `{"meta":{"kv":{"delete":"k"}}}`, true},
	{CodecEvent, "", `{"data":null,"meta":null}`, false},
	{CodecEvent, "", `{"data":null,"meta":{}}`, true},
	{CodecEvent, "", `{}`, true},
	{CodecEvent, "", `{ "data" : { "a" : 1 } , "meta" : { "b" : [ 1 ] } }`, true},
	{CodecEvent, "", `{"data":1,"meta":{"flowrun_json":"x","flowrun_delivered":"9","flowrun_decode_error":"e","message_id":5}}`, true},
	{CodecEvent, "", `{"data":1,"meta":{"correlation_id":"x"}}`, false},
	{CodecEvent, "", `{"data":1,"meta":{"correlation_id":"x","correlation":"y"}}`, false},
	{CodecEvent, "", `{"data":1,"meta":{"a,b":1,"b":"s"}}`, false},
	{CodecEvent, "", `{"data":1,"meta":{" kv":1}}`, false},
	{CodecEvent, "", `{"data":1,"meta":{"k\u0065y":"v\"q"}}`, true},
	{CodecEvent, "", `{"data":1,"meta":[1]}`, false},
	{CodecEvent, "", `{"data":1,"meta":"x"}`, false},
	{CodecEvent, "", `{"data":1,"other":2}`, false},
	{CodecEvent, "", `{"data":1,"data":2}`, false},
	{CodecEvent, "", `[1]`, false},
	{CodecEvent, "", `hello`, false},
	{CodecEvent, "", "{\"data\":\"\xff\"}", false},
	{CodecEvent, "", `{"data":"\ud800"}`, false},
	{CodecEvent, "k", `{"data":{"k":"d-1"},"meta":{"message_id":"m-1"}}`, true},
	{CodecEvent, "k", `{"data":{"k":7}}`, true},
	{CodecEvent, "k", `{"data":{"j":7}}`, false},
	{CodecEvent, "k", `{"data":{"k":""}}`, false},
	{CodecEvent, "k", `{"meta":{"message_id":"m-1"}}`, false},
	{CodecEvent, IDHash, `{"data":{"k":7},"meta":{"message_id":"m-1"}}`, true},
	{CodecJSON, "", `{"t":21.5}`, true},
	{CodecJSON, "", " \t{\"t\":21.5}\n", true},
	{CodecJSON, "", `"a string"`, true},
	{CodecJSON, "", `   `, false},
	{CodecJSON, "", ``, false},
	{CodecJSON, "", `not json`, false},
	{CodecJSON, "", "\"\xfe\"", false},
	{CodecJSON, "", `{"a":1,"a":2}`, false},
	{CodecJSON, "hdr.id", `{"hdr":{"id":"e-7"},"t":1}`, true},
	{CodecJSON, "seq", `{"seq":42}`, true},
	{CodecJSON, "seq", `{"t":1}`, false},
	{CodecJSON, IDHash, `{"t":1}`, true},
}

// checkDirect compares direct with decodeMessage and bus.ToEvent on r: when
// direct takes r, its message (id, payload, metadata) and attached event
// must be theirs, without an error. It returns whether direct took r.
func checkDirect(t *testing.T, codec, idFrom string, r received) bool {
	t.Helper()
	return checkDirectWith(t, &decoder{codec: codec, idFrom: idFrom}, r)
}

// checkDirectWith is checkDirect with d, which may have decoded other
// messages before.
func checkDirectWith(t *testing.T, d *decoder, r received) bool {
	t.Helper()
	codec := d.codec
	slow := (&decoder{codec: d.codec, idFrom: d.idFrom}).decodeMessage(r)
	want, werr := bus.ToEvent(slow)
	fast := d.direct(r)
	if fast == nil {
		return false
	}
	if werr != nil {
		t.Fatalf("%s %q: direct made an event of what ToEvent refuses: %v", codec, r.payload, werr)
	}
	if fast.UUID != slow.UUID || !bytes.Equal(fast.Payload, slow.Payload) || !maps.Equal(fast.Metadata, slow.Metadata) {
		t.Fatalf("%s %q: direct message\n id %q payload %q metadata %v\nwant\n id %q payload %q metadata %v",
			codec, r.payload, fast.UUID, fast.Payload, fast.Metadata, slow.UUID, slow.Payload, slow.Metadata)
	}
	got, err := bus.ToEvent(fast)
	if err != nil || !bytes.Equal(got.Data, want.Data) || (got.Data == nil) != (want.Data == nil) || !bytes.Equal(got.Meta, want.Meta) {
		t.Fatalf("%s %q: direct event data %q meta %s (error %v)\nwant data %q meta %s",
			codec, r.payload, got.Data, got.Meta, err, want.Data, want.Meta)
	}
	// Again with the same decoder: its scratch space is reused.
	if again := d.direct(r); again == nil || !maps.Equal(again.Metadata, fast.Metadata) {
		t.Fatalf("%s %q: a second direct gave %v", codec, r.payload, again)
	}
	return true
}

// TestDirectMatchesMessage checks that direct, which makes the message and
// its event in one pass, gives what decodeMessage and bus.ToEvent give, and
// that it takes the usual messages itself.
func TestDirectMatchesMessage(t *testing.T) {
	for _, tc := range directCases {
		for _, r := range []received{
			{topic: "s/a/t", payload: []byte(tc.payload), qos: 1},
			{topic: "s/<b>/\"q\"", payload: []byte(tc.payload), qos: 2, retained: true, duplicate: true},
		} {
			if took := checkDirect(t, tc.codec, tc.idFrom, r); took != tc.direct {
				t.Errorf("%s id_from %q %q: direct took it: %v, want %v", tc.codec, tc.idFrom, tc.payload, took, tc.direct)
			}
		}
	}
}

// TestDirectSharedDecoder runs every case through one decoder per codec
// and id_from, topics and flags changing from one message to the next, as
// a connection's decoder sees them: what it keeps from one message (the
// last meta.mqtt, the scratch space) never leaks into the next.
func TestDirectSharedDecoder(t *testing.T) {
	decoders := map[[2]string]*decoder{}
	// Each differs from the one before in one field.
	variants := []received{
		{topic: "s/a/t", qos: 1}, {topic: "s/a/t", qos: 1}, {topic: "s/a/t", qos: 1, duplicate: true},
		{topic: "s/a/t", qos: 1, retained: true, duplicate: true}, {topic: "s/a/t", qos: 2, retained: true, duplicate: true},
		{topic: "s/<b>", qos: 2, retained: true, duplicate: true}, {topic: "s/<b>", qos: 2, retained: true},
		{topic: "s/<b>", qos: 2}, {topic: "s/<b>", qos: 1},
	}
	k := 0
	for range 3 {
		for _, tc := range directCases {
			for range 2 { // the same payload again, if it can
				d := decoders[[2]string{tc.codec, tc.idFrom}]
				if d == nil {
					d = &decoder{codec: tc.codec, idFrom: tc.idFrom}
					decoders[[2]string{tc.codec, tc.idFrom}] = d
				}
				r := variants[k%len(variants)]
				r.payload = []byte(tc.payload)
				checkDirectWith(t, d, r)
				k++
			}
		}
	}
}

// TestDirectEventAttached checks that the source's decode attaches the
// event to the message, so the Source does not convert the metadata back:
// the event's data is a view of the received payload, not a copy.
func TestDirectEventAttached(t *testing.T) {
	payload := []byte(`{"data":{"i":1},"meta":{"kv":{"put":"k"}}}`)
	d := decoder{codec: CodecEvent}
	ev, err := bus.ToEvent(d.decode(received{topic: "t", payload: payload, qos: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if string(ev.Data) != `{"i":1}` || &ev.Data[0] != &payload[len(`{"data":`)] {
		t.Fatalf("data %q is not the view of the payload the decoder attached", ev.Data)
	}
}

// FuzzDirectMatchesMessage runs checkDirect on any payload.
func FuzzDirectMatchesMessage(f *testing.F) {
	for _, tc := range directCases {
		f.Add([]byte(tc.payload), tc.codec == CodecEvent, tc.idFrom)
	}
	f.Fuzz(func(t *testing.T, payload []byte, event bool, idFrom string) {
		codec := CodecJSON
		if event {
			codec = CodecEvent
		}
		if idFrom != "" && idFrom != IDHash && idFrom != "k" && idFrom != "a.b" {
			idFrom = "k"
		}
		checkDirect(t, codec, idFrom, received{topic: "t/x", payload: payload, qos: 1})
	})
}
