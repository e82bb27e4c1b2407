package ijson

import (
	"strings"
	"testing"
)

// BenchmarkCheck checks one event line: a put of a 100-byte string value
// as `flowrun run examples/kv/flow.yaml` reads it, and an object payload
// with an escaped member name.
func BenchmarkCheck(b *testing.B) {
	lines := []struct{ name, text string }{
		{"put100", `{"data":"` + strings.Repeat("x", 100) + `","meta":{"kv":{"put":"k7412"},"correlation":0}}`},
		{"object", `{"data":{"steam_id":"76561198000000000","count":3,"tags":["a","b"],"n\u0061me":"x"},"meta":{"kv":{"increment":"warnings_1"}}}`},
	}
	for _, l := range lines {
		b.Run(l.name, func(b *testing.B) {
			text := []byte(l.text)
			var c Checker
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Check(text, ""); err != nil {
					b.Fatal(err)
				}
				if _, _, ok := c.Member(text, "meta"); !ok {
					b.Fatal("no meta")
				}
			}
		})
	}
}
