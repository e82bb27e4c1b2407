package mqtt

import (
	"context"

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
	return (&subscriber5{opts: opts}).dial(ctx, opts.Topic)
}

// Decode5 reads an MQTT 5 message as the source does, into an event.
func Decode5(pb *paho5.Publish, codec, idFrom string) (pipeline.Event, error) {
	d := decoder{codec: codec, idFrom: idFrom}
	return bus.ToEvent(d.decode5(pb))
}
