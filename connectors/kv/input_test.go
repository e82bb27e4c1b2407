package kv_test

import (
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// inputRecorder is a pebblestore.Replicator keeping the input position
// of each commit group.
type inputRecorder struct {
	mu     sync.Mutex
	inputs []uint64
}

func (r *inputRecorder) Replicate(_ []kv.Write, input uint64) ([]byte, func() error, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inputs = append(r.inputs, input)
	return nil, nil, nil
}

// TestInputFrom checks Options.InputFrom: each command's input position,
// read from the event's meta, reaches the store's Replicator as the
// highest of its commit group; a missing one is 0, a malformed one is
// refused, a failed command's is not counted.
func TestInputFrom(t *testing.T) {
	rec := &inputRecorder{}
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{Replicator: rec})
	if err != nil {
		t.Fatal(err)
	}
	h := kvtest.NewHarness(t, s)
	h.Options.InputFrom = "bus.seq"
	ev := func(cmd, seq string) pipeline.Event {
		data := ``
		if strings.HasPrefix(cmd, `"put"`) {
			data = `"text"`
		}
		return kvtest.Event(`{"kv":{`+cmd+`},"bus":{"seq":`+seq+`}}`, data)
	}
	steps := []struct {
		name      string
		events    []pipeline.Event
		wantPorts string
		wantInput []uint64 // recorded by this step
	}{
		{"one event", []pipeline.Event{ev(`"put":"a"`, `7`)}, "out", []uint64{7}},
		{"a string of digits", []pipeline.Event{ev(`"put":"a"`, `"12"`)}, "out", []uint64{12}},
		{"the highest of a group", []pipeline.Event{ev(`"increment":"n"`, `20`), ev(`"increment":"n"`, `22`), ev(`"increment":"n"`, `21`)}, "out out out", []uint64{22}},
		{"a failed command's is left out", []pipeline.Event{ev(`"increment":"n"`, `30`), ev(`"increment":"a"`, `31`)}, "out err", []uint64{30}},
		{"missing is 0", []pipeline.Event{kvtest.Event(kvtest.M(`"put":"b"`), `1`)}, "out", []uint64{0}},
		{"malformed is refused", []pipeline.Event{ev(`"put":"b"`, `-3`)}, "err", nil},
	}
	for _, st := range steps {
		rec.mu.Lock()
		before := len(rec.inputs)
		rec.mu.Unlock()
		got := h.DoSlice("ns", st.events...)
		var ports []string
		for _, e := range got {
			ports = append(ports, e.Port)
			if e.Port == pipeline.PortErr && st.name == "malformed is refused" {
				if msg := gjson.GetBytes(e.Event.Meta, "error").String(); !strings.Contains(msg, "meta.bus.seq (the input position") {
					t.Errorf("%s: error %q", st.name, msg)
				}
			}
		}
		if strings.Join(ports, " ") != st.wantPorts {
			t.Fatalf("%s: %v", st.name, kvtest.Strings(got))
		}
		rec.mu.Lock()
		recorded := append([]uint64(nil), rec.inputs[before:]...)
		rec.mu.Unlock()
		if !reflect.DeepEqual(recorded, st.wantInput) && !(len(recorded) == 0 && len(st.wantInput) == 0) {
			t.Errorf("%s: groups recorded inputs %v, want %v", st.name, recorded, st.wantInput)
		}
	}
}
