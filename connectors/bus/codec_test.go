package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

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
			in := pipeline.Event{Data: []byte(tt.data), Meta: []byte(tt.meta)}
			msg := ToMessage(in)
			if c := gjson.Get(tt.meta, "correlation"); c.Exists() && msg.Metadata.Get(CorrelationKey) == "" {
				t.Errorf("correlation not carried in %s: %v", CorrelationKey, msg.Metadata)
			}
			out, err := ToEvent(msg)
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
			if string(out.DataJSON()) != string(in.DataJSON()) {
				t.Errorf("data = %s, want %s", out.DataJSON(), in.DataJSON())
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
			ev, err := ToEvent(msg)
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

// TestToEventIJSON: a message every component could not read the same way
// is refused with ErrNotIJSON (so the source dead-letters it), and the
// error event is still valid UTF-8 JSON; invalid text in payload strings
// is repaired.
func TestToEventIJSON(t *testing.T) {
	tests := []struct {
		name     string
		payload  string
		metadata map[string]string
		wantErr  error
		wantData string // when no error
		inErr    string // in meta.error
	}{
		{name: "duplicate in payload", payload: `{"amount":5,"amount":1000000}`, wantErr: ErrNotIJSON, inErr: `duplicate object key "amount" at data.amount`},
		{name: "duplicate deep in payload", payload: `[{"a":{"b":1,"b":2}}]`, wantErr: ErrNotIJSON, inErr: `data[0].a.b`},
		{name: "lone surrogate in a payload key", payload: `{"\ud800":1}`, wantErr: ErrNotIJSON, inErr: "lone surrogate"},
		{name: "duplicate in marked meta.kv", payload: `1`, metadata: map[string]string{JSONKeysKey: "kv", "kv": `{"put":"a","put":"b"}`},
			wantErr: ErrNotIJSON, inErr: `duplicate object key "put" at meta.kv.put`},
		{name: "lone surrogate in marked meta.kv", payload: `1`, metadata: map[string]string{JSONKeysKey: "kv", "kv": `{"put":"\udfff"}`},
			wantErr: ErrNotIJSON, inErr: `lone surrogate escape at meta.kv.put`},
		{name: "invalid UTF-8 correlation", payload: `1`, metadata: map[string]string{"correlation_id": "c\xff"},
			wantErr: ErrNotIJSON, inErr: `metadata "correlation_id" is not valid UTF-8`},
		{name: "invalid UTF-8 metadata name", payload: `1`, metadata: map[string]string{"k\xfe": "v"},
			wantErr: ErrNotIJSON, inErr: `is not valid UTF-8`},
		{name: "unmarked duplicate stays a string", payload: `1`, metadata: map[string]string{"x": `{"a":1,"a":2}`}, wantData: `1`},
		{name: "payload strings repaired", payload: "[\"a\xffb\",\"\\ud800\"]", wantData: "[\"a\uFFFDb\",\"\\ufffd\"]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("uuid-1", []byte(tt.payload))
			for k, v := range tt.metadata {
				msg.Metadata.Set(k, v)
			}
			ev, err := ToEvent(msg)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			for _, part := range [][]byte{ev.DataJSON(), ev.MetaJSON()} {
				if !utf8.Valid(part) || !json.Valid(part) {
					t.Fatalf("event part %q is not valid UTF-8 JSON", part)
				}
			}
			if err == nil {
				if string(ev.DataJSON()) != tt.wantData {
					t.Errorf("data = %s, want %s", ev.DataJSON(), tt.wantData)
				}
				return
			}
			if msg := gjson.GetBytes(ev.Meta, "error").String(); !strings.Contains(msg, tt.inErr) {
				t.Errorf("meta.error = %q, want it to contain %q", msg, tt.inErr)
			}
		})
	}
}

// TestToMessageIsValidUTF8JSON: whatever an event made inside the graph
// holds, the published payload is valid UTF-8 JSON and the metadata valid
// UTF-8.
func TestToMessageIsValidUTF8JSON(t *testing.T) {
	for _, ev := range []pipeline.Event{
		{Data: []byte("\"a\xff\""), Meta: []byte("{\"correlation\":\"c\xff\",\"kv\":{\"put\":\"\\ud800\"}}")},
		{Data: []byte("{\"a\":\xff"), Meta: []byte("{\"x\":\xff")},
	} {
		msg := ToMessage(ev)
		if !utf8.Valid(msg.Payload) || !json.Valid(msg.Payload) {
			t.Errorf("payload %q is not valid UTF-8 JSON", msg.Payload)
		}
		for k, v := range msg.Metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				t.Errorf("metadata %q: %q is not valid UTF-8", k, v)
			}
		}
		if _, err := ToEvent(msg); err != nil {
			t.Errorf("reading back %v: %v", msg.Metadata, err)
		}
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

// TestToEventDecodeError: a message its subscriber marked as undecodable
// fails with ErrUndecodable and its reason, and the marker key reaches
// neither the event's meta nor a dead letter.
func TestToEventDecodeError(t *testing.T) {
	msg := message.NewMessage("id-1", []byte(`{"not":"an envelope"}`))
	msg.Metadata.Set(DecodeErrorKey, "payload is not an event envelope")
	msg.Metadata.Set("tag", "x")
	ev, err := ToEvent(msg)
	if !errors.Is(err, ErrUndecodable) || !strings.Contains(err.Error(), "payload is not an event envelope") {
		t.Fatalf("ToEvent error = %v, want ErrUndecodable with the reason", err)
	}
	if gjson.GetBytes(ev.Meta, DecodeErrorKey).Exists() || gjson.GetBytes(ev.Meta, "tag").String() != "x" {
		t.Errorf("meta = %s", ev.Meta)
	}
	if got := gjson.GetBytes(ev.Data, "@this").String(); got != `{"not":"an envelope"}` {
		t.Errorf("data = %s, want the raw payload as a string", ev.Data)
	}
	pub := &recordingPublisher{}
	s := &Source{dead: pub, opts: SourceOptions{DeadLetter: "t.dead"}}
	if err := s.deadLetter(msg, "reason"); err != nil {
		t.Fatal(err)
	}
	if len(pub.msgs) != 1 || pub.msgs[0].Metadata.Get(DecodeErrorKey) != "" {
		t.Errorf("dead letter metadata %v", pub.msgs)
	}
}

type recordingPublisher struct{ msgs []*message.Message }

func (p *recordingPublisher) Publish(_ string, msgs ...*message.Message) error {
	p.msgs = append(p.msgs, msgs...)
	return nil
}
func (p *recordingPublisher) Close() error { return nil }

// TestDecoderReusedMatchesToEvent: one Decoder converting many messages in
// turn, good and bad, gives for each the event and error a fresh ToEvent
// gives: nothing of one message's check leaks into the next.
func TestDecoderReusedMatchesToEvent(t *testing.T) {
	msgs := []struct {
		payload  string
		metadata map[string]string
	}{
		{`{"a":{"b":1},"c":[{"d":2}]}`, map[string]string{JSONKeysKey: "kv", "kv": `{"put":"a","value":{"put":1}}`, "correlation_id": "c1"}},
		{`{"a":1,"a":2}`, map[string]string{"correlation_id": "c2"}},
		{`{"b":1,"a":{"b":2}}`, map[string]string{JSONKeysKey: "kv", "kv": `{"put":"x","put":"y"}`}},
		{`{"a":{"b":1}}`, map[string]string{JSONKeysKey: "kv", "kv": `{"put":"a"}`}},
		{"[\"a\xffb\",\"\\ud800\"]", nil},
		{`1`, map[string]string{JSONKeysKey: "kv", "kv": `{"put":"after a repaired payload"}`}},
		{`{"a":"ok"}`, map[string]string{"x": `{"a":1,"a":2}`}},
		{`hello`, map[string]string{"correlation_id": "c3"}},
		{`{"\ud800":1}`, nil},
		{`[[[[{"a":1}]]]]`, map[string]string{"k\xfe": "v"}},
		{``, map[string]string{DeliveredKey: "2", "n": "5"}},
		{`{"a":{"b":1},"b":{"a":1}}`, map[string]string{JSONKeysKey: "kv,m", "kv": `{"put":"a"}`, "m": `{"kv":1}`}},
	}
	var d Decoder
	for pass := range 2 {
		for i, m := range msgs {
			msg := message.NewMessage("uuid-1", []byte(m.payload))
			for k, v := range m.metadata {
				msg.Metadata.Set(k, v)
			}
			want, werr := ToEvent(msg)
			got, gerr := d.ToEvent(msg)
			if fmt.Sprint(gerr) != fmt.Sprint(werr) || string(got.Data) != string(want.Data) || string(got.Meta) != string(want.Meta) {
				t.Errorf("pass %d message %d: decoder %s %s %v, ToEvent %s %s %v", pass, i, got.Data, got.Meta, gerr, want.Data, want.Meta, werr)
			}
		}
	}
}

// TestWithEvent checks that ToEvent returns the event a subscriber
// attached to a message, whatever its payload and metadata, and that a
// message made from it (a dead letter) does not carry it.
func TestWithEvent(t *testing.T) {
	m := message.NewMessage("m-1", []byte(`not json`))
	m.Metadata.Set("a", "b")
	attached := pipeline.Event{Data: []byte(`{"x":1}`), Meta: []byte(`{"a":"b","message_id":"m-1"}`)}
	WithEvent(m, attached)
	ev, err := ToEvent(m)
	if err != nil || string(ev.Data) != `{"x":1}` || string(ev.Meta) != string(attached.Meta) {
		t.Fatalf("ToEvent = %s %s, %v; want the attached event", ev.Data, ev.Meta, err)
	}
	if _, err := ToEvent(DeadLetterMessage(m, "failed")); !errors.Is(err, ErrNotJSON) {
		t.Fatalf("dead letter: error %v, want ErrNotJSON (its own payload read)", err)
	}
}
