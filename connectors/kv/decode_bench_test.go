package kv

import (
	"testing"

	"github.com/flowrun/flowrun/pipeline"
)

// BenchmarkDecodeEvent measures decodeEvent on the commands of `flowrun
// bench`'s workloads: one event per iteration.
func BenchmarkDecodeEvent(b *testing.B) {
	value := []byte(`"0000000001vbnmqwertyuiopasdfghjklzxcvbnmqwertyuiopasdfghjklzxcvbnmqwertyuiopasdfghjklzxcvbnmqwert"`)
	for _, bc := range []struct {
		name string
		ev   pipeline.Event
		opts Options
	}{
		{"get", pipeline.Event{Meta: []byte(`{"kv":{"get":"k0000012345"}}`)}, Options{}},
		{"put", pipeline.Event{Meta: []byte(`{"kv":{"put":"k0000012345"}}`), Data: value}, Options{}},
		{"increment", pipeline.Event{Meta: []byte(`{"kv":{"increment":"k0000012345","by":1}}`)}, Options{}},
		{"get_correlation", pipeline.Event{Meta: []byte(`{"kv":{"get":"k0000012345"},"correlation":"req-000123"}`)}, Options{}},
		// As a bus source makes it: the message's meta, sorted, around kv.
		{"put_bus", pipeline.Event{Meta: []byte(`{"correlation":"m-123","delivery_count":1,"kv":{"put":"k0000012345"},"message_id":"1733333333333-0","stream":"in"}`), Data: value}, Options{}},
		{"put_bus_idem", pipeline.Event{Meta: []byte(`{"correlation":"m-123","delivery_count":1,"kv":{"put":"k0000012345"},"message_id":"1733333333333-0","stream":"in"}`), Data: value}, Options{IdemFrom: "message_id"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := &Connector{opts: bc.opts}
			c.opts.EnsureDefaults()
			c.dec = decoder{opts: &c.opts}
			var cmd command
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.decodeEvent(bc.ev, &cmd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
