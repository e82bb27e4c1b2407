package mqtt

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// TestDecode reads MQTT payloads with each codec and id source into the
// event the bus Source makes of them.
func TestDecode(t *testing.T) {
	r := func(payload string) received {
		return received{topic: "s/a/t", payload: []byte(payload), qos: 1, retained: true, duplicate: false}
	}
	for _, tc := range []struct {
		name            string
		codec, idFrom   string
		in              received
		wantData        string
		wantID          string // "" for none
		wantMeta        map[string]string
		wantUndecodable string
	}{
		{name: "json payload is data, no id", codec: CodecJSON, in: r(`{"t":21.5}`), wantData: `{"t":21.5}`},
		{name: "json with a data path id", codec: CodecJSON, idFrom: "hdr.id", in: r(`{"hdr":{"id":"e-7"},"t":1}`),
			wantData: `{"hdr":{"id":"e-7"},"t":1}`, wantID: "e-7"},
		{name: "json with a numeric id", codec: CodecJSON, idFrom: "seq", in: r(`{"seq":42}`), wantData: `{"seq":42}`, wantID: "42"},
		{name: "json missing the id", codec: CodecJSON, idFrom: "seq", in: r(`{"t":1}`), wantUndecodable: `id_from "seq"`},
		{name: "json hash id", codec: CodecJSON, idFrom: IDHash, in: r(`{"t":1}`), wantData: `{"t":1}`,
			wantID: HashID("s/a/t", []byte(`{"t":1}`))},
		{name: "envelope", codec: CodecEvent,
			in:       r(`{"data":{"n":1},"meta":{"message_id":"m-1","correlation":7,"kv":{"get":"k"},"tag":"x","mqtt":"forged"}}`),
			wantData: `{"n":1}`, wantID: "m-1",
			wantMeta: map[string]string{"correlation": "7", "kv": `{"get":"k"}`, "tag": `"x"`}},
		{name: "envelope without meta", codec: CodecEvent, in: r(`{"data":[1]}`), wantData: `[1]`},
		{name: "envelope with null meta", codec: CodecEvent, in: r(`{"data":[1],"meta":null}`), wantData: `[1]`},
		{name: "envelope id_from beats meta id", codec: CodecEvent, idFrom: "k", in: r(`{"data":{"k":"d-1"},"meta":{"message_id":"m-1"}}`),
			wantData: `{"k":"d-1"}`, wantID: "d-1"},
		{name: "not an envelope", codec: CodecEvent, in: r(`{"t":1}`), wantUndecodable: `unexpected member "t"`},
		{name: "envelope not an object", codec: CodecEvent, in: r(`[1]`), wantUndecodable: "not an event envelope"},
		{name: "envelope not JSON", codec: CodecEvent, in: r(`hello`), wantUndecodable: "not an event envelope"},
		{name: "envelope with a duplicate key", codec: CodecEvent, in: r(`{"data":1,"meta":{"a":1,"a":2}}`), wantUndecodable: "duplicate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decoder{codec: tc.codec, idFrom: tc.idFrom}
			m := d.decode(tc.in)
			ev, err := bus.ToEvent(m)
			if tc.wantUndecodable != "" {
				if !errors.Is(err, bus.ErrUndecodable) || !strings.Contains(err.Error(), tc.wantUndecodable) {
					t.Fatalf("error = %v, want ErrUndecodable with %q", err, tc.wantUndecodable)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(ev.Data) != tc.wantData {
				t.Errorf("data = %s, want %s", ev.Data, tc.wantData)
			}
			if id := gjson.GetBytes(ev.Meta, bus.MessageIDMeta); id.String() != tc.wantID || (tc.wantID == "") == id.Exists() {
				t.Errorf("message_id = %s, want %q", id.Raw, tc.wantID)
			}
			info := gjson.GetBytes(ev.Meta, MetaKey)
			if info.Get("topic").String() != "s/a/t" || info.Get("qos").Int() != 1 || !info.Get("retained").Bool() ||
				info.Get("duplicate").Bool() {
				t.Errorf("meta.mqtt = %s", info.Raw)
			}
			if strings.Contains(string(ev.Meta), `"":`) {
				t.Errorf("meta %s has a member named \"\"", ev.Meta)
			}
			for k, want := range tc.wantMeta {
				if got := gjson.GetBytes(ev.Meta, k).Raw; got != want {
					t.Errorf("meta.%s = %s, want %s", k, got, want)
				}
			}
		})
	}
}

// TestEncodeEnvelopeRoundTrip: an event published with codec event reads
// back with the same data and meta, and the published message's id.
func TestEncodeEnvelopeRoundTrip(t *testing.T) {
	ev := pipeline.Event{Data: []byte(`{"n":1}`), Meta: []byte(`{"correlation":7,"kv":{"put":"k"},"tag":"7"}`)}
	m := bus.ToMessage(ev)
	payload := encode(m, CodecEvent)
	d := decoder{codec: CodecEvent}
	back, err := bus.ToEvent(d.decode(received{topic: "t", payload: payload, qos: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if string(back.Data) != `{"n":1}` || gjson.GetBytes(back.Meta, "correlation").Raw != "7" ||
		gjson.GetBytes(back.Meta, "tag").Raw != `"7"` || gjson.GetBytes(back.Meta, "kv.put").String() != "k" {
		t.Errorf("read back %s %s from %s", back.Data, back.Meta, payload)
	}
	if id := gjson.GetBytes(back.Meta, bus.MessageIDMeta).String(); id != m.UUID || id == "" {
		t.Errorf("message_id %q, want the published message's %q", id, m.UUID)
	}
	if got := encode(m, CodecJSON); string(got) != `{"n":1}` {
		t.Errorf("codec json payload %s", got)
	}
	// A dead letter of a payload that was not JSON keeps it as a string,
	// with its error.
	dl := message.NewMessage("dl-1", []byte("not json"))
	dl.Metadata.Set(bus.ErrorKey, "boom")
	p := encode(dl, CodecEvent)
	if gjson.GetBytes(p, "data").String() != "not json" || gjson.GetBytes(p, "meta.error").String() != "boom" ||
		gjson.GetBytes(p, "meta.message_id").String() != "dl-1" {
		t.Errorf("dead letter envelope %s", p)
	}
}

// TestEnvelopeDropsDeliveryMeta: a sink's envelope (codec event) does not
// carry meta.mqtt, where an upstream source read the event; a dead
// letter's keeps it as mqtt_source.
func TestEnvelopeDropsDeliveryMeta(t *testing.T) {
	upstream := `{"topic":"up/1","qos":1,"retained":false,"duplicate":false}`
	m := bus.ToMessage(pipeline.Event{Data: []byte(`1`), Meta: []byte(`{"tag":"t","mqtt":` + upstream + `}`)})
	p := encode(m, CodecEvent)
	if gjson.GetBytes(p, "meta.mqtt").Exists() || gjson.GetBytes(p, "meta.tag").String() != "t" {
		t.Errorf("sink envelope %s", p)
	}
	dl := encode(keepSource(m), CodecEvent)
	if gjson.GetBytes(dl, "meta.mqtt").Exists() || gjson.GetBytes(dl, "meta."+SourceMetaKey+".topic").String() != "up/1" {
		t.Errorf("dead letter envelope %s", dl)
	}
}

func TestTopics(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		match         bool
	}{
		{"a/b", "a/b", true}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false}, {"a/#", "a", true},
		{"a/#", "a/b/c", true}, {"+/b", "x/b", true}, {"#", "$SYS/x", false}, {"a/b", "a/b/dead", false},
		{"+/+", "a/b", true}, {"a/+/c", "a/b/d", false},
	} {
		if got := Match(tc.filter, tc.topic); got != tc.match {
			t.Errorf("Match(%q, %q) = %v", tc.filter, tc.topic, got)
		}
	}
	for filter, ok := range map[string]bool{"a/b": true, "a/+/c": true, "#": true, "a/#": true, "a/#/c": false,
		"a+/b": false, "a/b#": false, "": false} {
		if err := CheckFilter(filter); (err == nil) != ok {
			t.Errorf("CheckFilter(%q) = %v", filter, err)
		}
	}
	for _, tc := range []struct{ filter, dead, want string }{
		{"a/b", "a/b/dead", ""},
		{"a/#", "", "has wildcards"},
		{"a/#", "a/dead", "would be read again"},
		{"a/+", "dead/a", ""},
		{"a/+", "dead/+", "wildcards"},
	} {
		err := checkDeadLetter(tc.filter, tc.dead)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkDeadLetter(%q, %q) = %v, want %q", tc.filter, tc.dead, err, tc.want)
		}
	}
}

// TestMQTTInfo: meta.mqtt is the JSON json.Marshal gives for the fields,
// whatever the topic holds.
func TestMQTTInfo(t *testing.T) {
	for _, r := range []received{
		{topic: "s/a/t", qos: 1, retained: true},
		{topic: "", qos: 0, duplicate: true},
		{topic: "x>y&z", qos: 1},
		{topic: `a"b\c<d>&e`, qos: 2},
		{topic: "caf\u00e9/\u2028/\x01", qos: 1, retained: true, duplicate: true},
		{topic: "bad\xffutf8", qos: 1},
	} {
		want, _ := json.Marshal(struct {
			Topic     string `json:"topic"`
			QoS       byte   `json:"qos"`
			Retained  bool   `json:"retained"`
			Duplicate bool   `json:"duplicate"`
		}{r.topic, r.qos, r.retained, r.duplicate})
		if got := mqttInfo(r); got != string(want) {
			t.Errorf("mqttInfo(%q) = %s, want %s", r.topic, got, want)
		}
	}
}
