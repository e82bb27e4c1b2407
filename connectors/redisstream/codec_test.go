package redisstream

import (
	"errors"
	"reflect"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/connectors/bus"
)

// TestEntryLayout: a message goes into entry fields and back unchanged,
// metadata keys that collide with the layout included.
func TestEntryLayout(t *testing.T) {
	tests := []struct {
		name   string
		meta   map[string]string
		fields []any // the entry's field-value pairs, in order
	}{
		{name: "plain", meta: map[string]string{"correlation_id": "7", "kv": `{"get":"k"}`},
			fields: []any{"data", []byte(`{"a":1}`), "correlation_id", "7", "kv", `{"get":"k"}`}},
		{name: "a metadata key named data", meta: map[string]string{"data": "x"},
			fields: []any{"data", []byte(`{"a":1}`), "meta.data", "x"}},
		{name: "a metadata key with the prefix", meta: map[string]string{"meta.data": "y", "meta.": "z"},
			fields: []any{"data", []byte(`{"a":1}`), "meta.meta.", "z", "meta.meta.data", "y"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := message.NewMessage("ignored", []byte(`{"a":1}`))
			for k, v := range tc.meta {
				m.Metadata.Set(k, v)
			}
			fields := entryValues(m)
			if !reflect.DeepEqual(fields, tc.fields) {
				t.Fatalf("fields %q, want %q", fields, tc.fields)
			}
			values := map[string]any{}
			for i := 0; i < len(fields); i += 2 {
				v := fields[i+1]
				if b, ok := v.([]byte); ok {
					v = string(b)
				}
				values[fields[i].(string)] = v
			}
			back := toMessage(redis.XMessage{ID: "1-0", Values: values})
			if back.UUID != "1-0" || string(back.Payload) != `{"a":1}` || !reflect.DeepEqual(map[string]string(back.Metadata), tc.meta) {
				t.Errorf("read back %s %q %v, want 1-0 %q %v", back.UUID, back.Payload, back.Metadata, `{"a":1}`, tc.meta)
			}
		})
	}
}

// TestForeignEntry: an entry written by another producer (no data field,
// fields that are not flowrun's) reads as null data and string metadata.
func TestForeignEntry(t *testing.T) {
	m := toMessage(redis.XMessage{ID: "5-1", Values: map[string]any{"user": "ann", "kv": `{"increment":"hits"}`}})
	ev, err := bus.ToEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Data != nil || string(ev.Meta) != `{"kv":{"increment":"hits"},"message_id":"5-1","user":"ann"}` {
		t.Errorf("event %s %s", ev.Data, ev.Meta)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err       error
		permanent bool
	}{
		{redis.Nil, true}, // a reply, though XADD never gives it
		{errors.New("dial tcp: connection refused"), false},
		{proto("LOADING Redis is loading the dataset in memory"), false},
		{proto("OOM command not allowed when used memory > 'maxmemory'"), false},
		{proto("WRONGTYPE Operation against a key holding the wrong kind of value"), true},
		{proto("ERR The ID specified in XADD is equal or smaller than the target stream top item"), true},
	}
	for _, tc := range tests {
		if got := errors.Is(classify(tc.err), bus.ErrPermanent); got != tc.permanent {
			t.Errorf("classify(%v) permanent = %v, want %v", tc.err, got, tc.permanent)
		}
	}
}

// proto makes an error reply as go-redis returns it.
type proto string

func (e proto) Error() string { return string(e) }
func (proto) RedisError()     {}

// TestSinkDropsDeliveryMeta: a sink does not write redis_stream and
// redis_consumer, where an upstream source read the event (the source
// reading the entry sets its own), while a dead-letter publisher keeps
// them (where the entry it was made from was); the message itself is left
// as it was.
func TestSinkDropsDeliveryMeta(t *testing.T) {
	m := message.NewMessage("id", []byte(`{"a":1}`))
	m.Metadata.Set(StreamMeta, "upstream")
	m.Metadata.Set(ConsumerMeta, "c1")
	m.Metadata.Set("tag", "t")
	for _, tc := range []struct {
		p    *publisher
		want []any
	}{
		{p: &publisher{sink: true}, want: []any{"data", []byte(`{"a":1}`), "tag", "t"}},
		{p: &publisher{}, want: []any{"data", []byte(`{"a":1}`), ConsumerMeta, "c1", StreamMeta, "upstream", "tag", "t"}},
	} {
		if got := tc.p.values(m); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("sink %v: fields %q, want %q", tc.p.sink, got, tc.want)
		}
	}
	if m.Metadata.Get(StreamMeta) != "upstream" {
		t.Error("the message lost its metadata")
	}
}
