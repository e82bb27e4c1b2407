package kafka

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/connectors/bus"
)

// BenchmarkRecordEvent: the source's per-record cost of building an event
// from a record as a flowrun sink writes it (three headers).
func BenchmarkRecordEvent(b *testing.B) {
	r := &kgo.Record{Topic: "in", Partition: 2, Offset: 123456, Key: []byte("k-1"), Value: []byte(`{"i":1}`),
		Headers: []kgo.RecordHeader{{Key: "correlation_id", Value: []byte("m-1")}, {Key: "kv", Value: []byte(`{"put":"p/1"}`)},
			{Key: bus.JSONKeysKey, Value: []byte("kv")}}}
	var d recordDecoder
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.event(r, 1); err != nil {
			b.Fatal(err)
		}
	}
}
