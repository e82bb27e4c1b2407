package mqtt

import (
	"github.com/ThreeDotsLabs/watermill/message"

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
