package mqtt

import (
	"context"
	"errors"

	"github.com/ThreeDotsLabs/watermill/message"
	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// Encode is encode, for the tests of package mqtt_test.
func Encode(m *message.Message, codec string) []byte { return encode(m, codec) }

// Decode reads an MQTT message as the source does, into an event.
func Decode(topic string, payload []byte, qos byte, retained bool, codec, idFrom string) (pipeline.Event, error) {
	d := decoder{codec: codec, idFrom: idFrom}
	return bus.ToEvent(d.decode(received{topic: topic, payload: payload, qos: qos, retained: retained}))
}

// Dial5 makes one MQTT 5 connection of a source with opts, as the source
// does, subscribed to opts.Topic.
func Dial5(ctx context.Context, opts SourceOptions) (<-chan *message.Message, func() error, error) {
	opts.EnsureDefaults()
	// A SUBSCRIBE on a resumed session with queued messages is sometimes
	// never answered within ConnectTimeout (about 1 run in 15 of
	// TestAcksInArrivalOrder5 here, paho.golang v0.23.0 against mosquitto
	// 2.0.11; cause not found). A source's ReconnectingSubscriber then
	// dials again, and so does this, at most three times.
	var (
		msgs    <-chan *message.Message
		release func() error
		err     error
	)
	for range 3 {
		msgs, release, err = (&subscriber5{opts: opts}).dial(ctx, opts.Topic)
		if !errors.Is(err, bus.ErrSubscribe) {
			break
		}
	}
	return msgs, release, err
}

// Dial makes one MQTT 3.1.1 connection of a source with opts, as the
// source does, subscribed to opts.Topic.
func Dial(ctx context.Context, opts SourceOptions) (<-chan *message.Message, func() error, error) {
	opts.EnsureDefaults()
	return (&subscriber{opts: opts}).dial(ctx, opts.Topic)
}

// Decode5 reads an MQTT 5 message as the source does, into an event.
func Decode5(pb *paho5.Publish, codec, idFrom string) (pipeline.Event, error) {
	d := decoder{codec: codec, idFrom: idFrom}
	return bus.ToEvent(d.decode5(pb))
}
