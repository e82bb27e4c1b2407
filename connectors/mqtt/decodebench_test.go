package mqtt

import (
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/connectors/bus"
)

// BenchmarkDecodeEnvelope measures what a received codec-event payload of
// the flow benchmark costs until it is an event, made directly (decode)
// or through the message's metadata (decodeMessage then bus.ToEvent).
func BenchmarkDecodeEnvelope(b *testing.B) {
	payload := []byte(fmt.Sprintf(`{"data":{"i":%d,"pad":"0123456789abcdef"},"meta":{"correlation":%d,"kv":{"put":"k/%d"}}}`, 12345, 12345, 12345))
	r := received{topic: "bench/flow/abcdef", payload: payload, qos: 1}
	for _, path := range []struct {
		name   string
		decode func(*decoder, received) *message.Message
	}{{"direct", (*decoder).decode}, {"metadata", (*decoder).decodeMessage}} {
		b.Run(path.name, func(b *testing.B) {
			d := decoder{codec: CodecEvent}
			var bd bus.Decoder
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bd.ToEvent(path.decode(&d, r)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
