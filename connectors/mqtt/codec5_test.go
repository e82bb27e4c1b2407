package mqtt

import (
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// TestUserPropertiesRoundTrip: the user properties a sink writes for an
// event (codec json) give back its meta when read, without a broker; the
// receiving side's own fields are not taken from a producer.
func TestUserPropertiesRoundTrip(t *testing.T) {
	ev := pipeline.Event{Data: []byte(`{"v":1}`),
		Meta: []byte(`{"correlation":"c1","kv":{"put":"k"},"n":5,"s":"{not json","mqtt":{"topic":"in"},"message_id":"old"}`)}
	m := bus.ToMessage(ev)
	up := UserProperties(m)
	if up.Get("message_id") != m.UUID || up.Get("correlation") != "c1" || up.Get("mqtt") != "" || up.Get(bus.CorrelationKey) != "" {
		t.Fatalf("user properties %v", up)
	}
	for _, tc := range []struct {
		name, codec, idFrom, payload string
		extra                        paho5.UserProperties
		want                         map[string]string // gjson path in meta -> raw JSON
	}{
		{name: "json", codec: CodecJSON, payload: `{"v":1}`, want: map[string]string{
			"correlation": `"c1"`, "kv": `{"put":"k"}`, "n": `5`, "s": `"{not json"`, "message_id": `"` + m.UUID + `"`, "mqtt.topic": `"t"`}},
		{name: "id_from wins", codec: CodecJSON, idFrom: "v", payload: `{"v":1}`, want: map[string]string{
			"message_id": `"1"`, "correlation": `"c1"`}},
		{name: "envelope wins", codec: CodecEvent, payload: `{"data":{"v":1},"meta":{"message_id":"env","correlation":"c2","n":"x"}}`,
			want: map[string]string{"message_id": `"env"`, "correlation": `"c2"`, "n": `"x"`, "kv": `{"put":"k"}`}},
		{name: "receiving side's own keys", codec: CodecJSON, payload: `{}`,
			extra: paho5.UserProperties{{Key: MetaKey, Value: "x"}, {Key: bus.DecodeErrorKey, Value: "x"}, {Key: bus.DeliveredKey, Value: "9"}},
			want:  map[string]string{"mqtt.topic": `"t"`, "correlation": `"c1"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decoder{codec: tc.codec, idFrom: tc.idFrom}
			props := append(append(paho5.UserProperties(nil), up...), tc.extra...)
			pb := &paho5.Publish{Topic: "t", QoS: 1, Payload: []byte(tc.payload), Properties: &paho5.PublishProperties{User: props}}
			got, err := bus.ToEvent(d.decode5(pb))
			if err != nil {
				t.Fatalf("%v: %s", err, got.Meta)
			}
			for path, want := range tc.want {
				if v := gjson.GetBytes(got.Meta, path); v.Raw != want {
					t.Errorf("meta.%s = %s, want %s (meta %s)", path, v.Raw, want, got.Meta)
				}
			}
			if gjson.GetBytes(got.Meta, bus.JSONKeysKey).Exists() || gjson.GetBytes(got.Meta, bus.DecodeErrorKey).Exists() {
				t.Errorf("internal keys in meta %s", got.Meta)
			}
		})
	}
	// A foreign producer's properties are strings, even when they look
	// like JSON.
	d := decoder{codec: CodecJSON}
	got, err := bus.ToEvent(d.decode5(&paho5.Publish{Topic: "t", QoS: 1, Payload: []byte(`{}`), Properties: &paho5.PublishProperties{
		User: paho5.UserProperties{{Key: "a", Value: `{"b":1}`}, {Key: "a", Value: `[2]`}, {Key: "message_id", Value: "ext"}}}}))
	if err != nil || gjson.GetBytes(got.Meta, "a").Raw != `"[2]"` || gjson.GetBytes(got.Meta, "message_id").String() != "ext" {
		t.Errorf("foreign properties: %v %s", err, got.Meta)
	}
}
