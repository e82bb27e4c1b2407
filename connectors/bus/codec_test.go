package bus

import (
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/flowrun/flowrun/pipeline"
)

func TestCorrelationKeyIsWatermills(t *testing.T) {
	// The mapping is documented as "correlation_id": fail if watermill's
	// middleware ever uses another key.
	if key := middleware.CorrelationIDMetadataKey; key != "correlation_id" {
		t.Fatalf("watermill's correlation key is %q", key)
	}
}

func TestEventRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		data string
		meta string
		want string // meta after event -> message -> event; "" = same as meta
	}{
		{"no meta", `{"a":1}`, ``, ``},
		{"string correlation", `1`, `{"correlation":"m-1"}`, ``},
		{"number correlation", `"x"`, `{"correlation":42}`, ``},
		{"object and bool", `null`, `{"flag":true,"kv":{"increment":"c","by":2},"n":1.5}`, ``},
		{"string that looks like JSON", `[1,2]`, `{"s":"{\"a\":1}","t":"true"}`, ``},
		{"null meta value", `{}`, `{"gone":null}`, ``},
		{"keys sorted", `0`, `{"z":"1","a":"2"}`, `{"a":"2","z":"1"}`},
		{"a message's own id replaces a copied one", `0`, `{"message_id":"old","a":1}`, `{"a":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := pipeline.Event{Data: []byte(tt.data), Meta: []byte(tt.meta), Seq: 7}
			msg := ToMessage(in)
			if c := gjson.Get(tt.meta, "correlation"); c.Exists() && msg.Metadata.Get(CorrelationKey) == "" {
				t.Errorf("correlation not carried in %s: %v", CorrelationKey, msg.Metadata)
			}
			out, err := ToEvent(msg, 9)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want == "" {
				want = tt.meta
			}
			// Every received event carries the id of its message, and only
			// that: the id is the message's, not copied from the event.
			if id := gjson.GetBytes(out.Meta, MessageIDMeta).String(); id != msg.UUID || id == "" {
				t.Errorf("meta.%s = %q, want the message UUID %q", MessageIDMeta, id, msg.UUID)
			}
			if string(withoutMessageID(t, out.Meta)) != want {
				t.Errorf("meta = %s, want %s", out.Meta, want)
			}
			if string(out.DataJSON()) != string(in.DataJSON()) || out.Seq != 9 {
				t.Errorf("data = %s seq %d, want %s seq 9", out.DataJSON(), out.Seq, in.DataJSON())
			}
		})
	}
}

func TestToEventFromForeignMessages(t *testing.T) {
	tests := []struct {
		name     string
		payload  string
		metadata map[string]string
		wantData string
		wantMeta string
		wantErr  error
	}{
		{"plain strings", `{"x":1}`, map[string]string{"n": "5", "b": "true"}, `{"x":1}`, `{"b":"true","message_id":"uuid-1","n":"5"}`, nil},
		{"objects and arrays decoded", `1`, map[string]string{"kv": ` {"get":"k"}`, "l": `[1]`, "bad": `{nope`}, `1`,
			`{"bad":"{nope","kv":{"get":"k"},"l":[1],"message_id":"uuid-1"}`, nil},
		{"correlation_id wins over correlation", `1`, map[string]string{"correlation_id": "a", "correlation": "b"}, `1`, `{"correlation":"a","message_id":"uuid-1"}`, nil},
		{"delivery count hidden", `1`, map[string]string{DeliveredKey: "3"}, `1`, `{"message_id":"uuid-1"}`, nil},
		{"message id metadata ignored", `1`, map[string]string{MessageIDMeta: "forged"}, `1`, `{"message_id":"uuid-1"}`, nil},
		{"marked keys exact", `1`, map[string]string{JSONKeysKey: "n", "n": "5", "s": `{"a":1}`}, `1`, `{"message_id":"uuid-1","n":5,"s":"{\"a\":1}"}`, nil},
		{"empty payload is null", ``, nil, `null`, `{"message_id":"uuid-1"}`, nil},
		{"not JSON", `hello "world"`, map[string]string{"correlation_id": "c"}, `"hello \"world\""`, ``, ErrNotJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("uuid-1", []byte(tt.payload))
			for k, v := range tt.metadata {
				msg.Metadata.Set(k, v)
			}
			ev, err := ToEvent(msg, 1)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if string(ev.DataJSON()) != tt.wantData {
				t.Errorf("data = %s, want %s", ev.DataJSON(), tt.wantData)
			}
			if tt.wantErr != nil {
				if gjson.GetBytes(ev.Meta, "correlation").String() != "c" || !gjson.GetBytes(ev.Meta, "error").Exists() {
					t.Errorf("err event meta = %s, want correlation and error", ev.Meta)
				}
				return
			}
			if string(ev.Meta) != tt.wantMeta {
				t.Errorf("meta = %s, want %s", ev.Meta, tt.wantMeta)
			}
		})
	}
}

func TestStreamName(t *testing.T) {
	for in, want := range map[string]string{"orders.in": "orders_in", "a.*.>": "a____", "plain": "plain"} {
		if got := StreamName(in); got != want {
			t.Errorf("StreamName(%q) = %q, want %q", in, got, want)
		}
	}
}

// withoutMessageID returns meta without its message_id field ("" when
// nothing else is left), for comparing metas that differ only by id.
func withoutMessageID(t *testing.T, meta []byte) []byte {
	t.Helper()
	out, err := sjson.DeleteBytes(meta, MessageIDMeta)
	if err != nil {
		t.Fatalf("deleting message_id from %s: %v", meta, err)
	}
	if string(out) == "{}" {
		return nil
	}
	return out
}
