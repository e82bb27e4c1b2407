package kv_test

import (
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// TestRetriedIncrementAppliesOnce is the pattern docs/guarantees.md gives
// for at-least-once delivery: a batch records the event's id with a cas on
// an absent key next to the increment, so a retried event is refused as a
// whole and the counter moves once.
func TestRetriedIncrementAppliesOnce(t *testing.T) {
	h := kvtest.NewHarness(t, memstore.New())
	cmd := kvtest.MC(`"batch":[{"cas":"seen/ev-17","value":true},{"increment":"hits"}]`, `"ev-17"`)
	first := h.Do("ns", cmd, ``)
	if len(first) != 1 || first[0].Port != pipeline.PortOut {
		t.Fatalf("first delivery: %v", kvtest.Strings(first))
	}
	for range 3 {
		again := h.Do("ns", cmd, ``)
		if len(again) != 1 || again[0].Port != pipeline.PortErr ||
			gjson.GetBytes(again[0].Event.Meta, "kv.index").Int() != 0 {
			t.Fatalf("redelivery: %v, want the batch refused at its cas", kvtest.Strings(again))
		}
	}
	got := h.Do("ns", kvtest.M(`"get":"hits"`), ``)
	if len(got) != 1 || string(got[0].Event.Data) != "1" {
		t.Fatalf("hits after four deliveries: %v, want 1", kvtest.Strings(got))
	}
}
