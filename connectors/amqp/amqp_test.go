package amqp

import (
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// TestDeliveryIDsAndCounts: the id a message gets and the delivery count
// handed to the source, for each kind of delivery.
func TestDeliveryIDsAndCounts(t *testing.T) {
	body := []byte(`{"n":1}`)
	for _, tc := range []struct {
		name      string
		d         amqp091.Delivery
		hash      bool
		wantID    string // "" any; "random" a fresh one each time; "hash" the hash
		wantCount string // bus.DeliveredKey, "" for none
	}{
		{"message_id, first delivery", amqp091.Delivery{MessageId: "m1", Body: body}, false, "m1", ""},
		{"message_id, classic redelivery: the source counts", amqp091.Delivery{MessageId: "m1", Redelivered: true, Body: body}, false, "m1", ""},
		{"quorum redelivery: broker count + 1", amqp091.Delivery{MessageId: "m1", Redelivered: true, Body: body,
			Headers: amqp091.Table{"x-delivery-count": int64(2)}}, false, "m1", "3"},
		{"no message_id, first delivery", amqp091.Delivery{Body: body}, false, "random", ""},
		{"no message_id, classic redelivery: at its last delivery", amqp091.Delivery{Redelivered: true, Body: body}, false, "random", "5"},
		{"no message_id, hash", amqp091.Delivery{Redelivered: true, Body: body, RoutingKey: "q"}, true, "hash", ""},
		{"no message_id, quorum count wins", amqp091.Delivery{Redelivered: true, Body: body,
			Headers: amqp091.Table{"x-delivery-count": int32(1)}}, false, "random", "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{MessageIDHash: tc.hash}
			o.EnsureDefaults()
			m1, m2 := toMessage(&tc.d, &o, 5), toMessage(&tc.d, &o, 5)
			switch tc.wantID {
			case "random":
				if m1.UUID == m2.UUID {
					t.Errorf("id %q is the same on two deliveries", m1.UUID)
				}
			case "hash":
				if m1.UUID != m2.UUID || !strings.HasPrefix(m1.UUID, "sha256:") {
					t.Errorf("ids %q, %q: want the same hash", m1.UUID, m2.UUID)
				}
			default:
				if m1.UUID != tc.wantID {
					t.Errorf("id %q, want %q", m1.UUID, tc.wantID)
				}
			}
			if got := m1.Metadata.Get(bus.DeliveredKey); got != tc.wantCount {
				t.Errorf("delivery count %q, want %q", got, tc.wantCount)
			}
			if _, ok := m1.Metadata["x-delivery-count"]; ok {
				t.Error("x-delivery-count copied into metadata")
			}
		})
	}
}

// TestHashIDCoversTheMessage: the hash changes with the body, a header or
// the routing key, not with the delivery count or x-death.
func TestHashIDCoversTheMessage(t *testing.T) {
	base := amqp091.Delivery{Exchange: "e", RoutingKey: "k", Body: []byte(`1`), Headers: amqp091.Table{"a": "1"}}
	id := hashID(&base)
	same := base
	same.Headers = amqp091.Table{"a": "1", "x-delivery-count": int64(3), "x-death": []any{amqp091.Table{"count": int64(1)}}}
	if hashID(&same) != id {
		t.Error("delivery count or x-death changed the hash")
	}
	for name, d := range map[string]amqp091.Delivery{
		"body":        {Exchange: "e", RoutingKey: "k", Body: []byte(`2`), Headers: amqp091.Table{"a": "1"}},
		"header":      {Exchange: "e", RoutingKey: "k", Body: []byte(`1`), Headers: amqp091.Table{"a": "2"}},
		"routing key": {Exchange: "e", RoutingKey: "j", Body: []byte(`1`), Headers: amqp091.Table{"a": "1"}},
		"split":       {Exchange: "ek", RoutingKey: "", Body: []byte(`1`), Headers: amqp091.Table{"a": "1"}},
	} {
		if hashID(&d) == id {
			t.Errorf("a different %s gives the same hash", name)
		}
	}
}

// TestPublishingRoundTrip: a published message read back keeps its id,
// metadata and correlation; the correlation_id property stands in for a
// missing header.
func TestPublishingRoundTrip(t *testing.T) {
	m := bus.ToMessage(busEvent(`{"x":1}`, `{"correlation":7,"tag":"t"}`))
	p := toPublishing(m)
	if p.DeliveryMode != amqp091.Persistent || p.MessageId != m.UUID || p.CorrelationId != "7" {
		t.Errorf("publishing %+v", p)
	}
	d := amqp091.Delivery{MessageId: p.MessageId, Headers: p.Headers, Body: p.Body, CorrelationId: p.CorrelationId}
	o := Options{}
	o.EnsureDefaults()
	back := toMessage(&d, &o, 5)
	if back.UUID != m.UUID || back.Metadata.Get("tag") != "t" || back.Metadata.Get(bus.CorrelationKey) != "7" {
		t.Errorf("read back %v %v", back.UUID, back.Metadata)
	}
	foreign := amqp091.Delivery{CorrelationId: "c-1", Body: []byte(`1`)}
	if got := toMessage(&foreign, &o, 5).Metadata.Get(bus.CorrelationKey); got != "c-1" {
		t.Errorf("correlation from the property = %q", got)
	}
}

func TestRedactedURL(t *testing.T) {
	if got := redacted("amqp://user:s3cret@host:5672/vh"); strings.Contains(got, "s3cret") {
		t.Errorf("password in %q", got)
	}
}

func busEvent(data, meta string) pipeline.Event {
	return pipeline.Event{Data: []byte(data), Meta: []byte(meta)}
}

// TestSinkMessageDropsDeliveryMeta: a sink does not publish
// amqp_exchange and amqp_routing_key, where an upstream source read the
// event; the other meta fields are headers.
func TestSinkMessageDropsDeliveryMeta(t *testing.T) {
	p := toPublishing(sinkMessage(busEvent(`{"x":1}`, `{"correlation":7,"tag":"t","amqp_exchange":"up","amqp_routing_key":"up.key"}`)))
	for _, k := range []string{ExchangeMeta, RoutingKeyMeta} {
		if v, ok := p.Headers[k]; ok {
			t.Errorf("header %s: %v published", k, v)
		}
	}
	if p.Headers["tag"] != "t" || p.CorrelationId != "7" {
		t.Errorf("headers %v, correlation %q", p.Headers, p.CorrelationId)
	}
}
