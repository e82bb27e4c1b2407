package kv_test

import (
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// TestRetriedIncrementAppliesOnce is the pattern docs/guarantees.md gives
// for at-least-once delivery: a batch command records the event's id with a cas on
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

// TestIdemFrom checks Options.IdemFrom: write commands take their
// idempotency key from the event's meta, so a redelivered bus message
// (same message_id) is not applied twice, and a write lacking the key is
// refused rather than applied unguarded; reads need none.
func TestIdemFrom(t *testing.T) {
	h := kvtest.NewHarness(t, memstore.New())
	h.Options.IdemFrom = "message_id"
	withID := func(fields, id string) string { return `{"kv":{` + fields + `},"message_id":` + id + `}` }
	tests := []struct {
		name, meta, wantPort, want string
	}{
		{"first delivery applies", withID(`"increment":"n"`, `"m-1"`), "out", `1`},
		{"redelivery replays", withID(`"increment":"n"`, `"m-1"`), "out", `1`},
		{"another message applies", withID(`"increment":"n"`, `"m-2"`), "out", `2`},
		{"an explicit idem wins", withID(`"increment":"n","idem":"x"`, `"m-1"`), "out", `3`},
		{"missing key is refused", kvtest.M(`"increment":"n"`), "err", `meta.message_id (the idempotency key, option idem_from) is missing`},
		{"non-string key is refused", withID(`"increment":"n"`, `7`), "err", `must be a string, got a number 7`},
		{"reads need no key", kvtest.M(`"get":"n"`), "out", `3`},
	}
	for _, tt := range tests {
		got := h.Do("ns", tt.meta, ``)
		if len(got) != 1 || got[0].Port != tt.wantPort {
			t.Fatalf("%s: %v", tt.name, kvtest.Strings(got))
		}
		if tt.wantPort == "out" && string(got[0].Event.Data) != tt.want {
			t.Errorf("%s: data %s, want %s", tt.name, got[0].Event.Data, tt.want)
		}
		if tt.wantPort == "err" {
			if msg := gjson.GetBytes(got[0].Event.Meta, "error").String(); !strings.Contains(msg, tt.want) {
				t.Errorf("%s: error %q, want it to contain %q", tt.name, msg, tt.want)
			}
		}
	}
}
