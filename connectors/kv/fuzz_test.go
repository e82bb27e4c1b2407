package kv_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// snapshot renders every record of b, expired or not, in key order.
func snapshot(t testing.TB, b kv.Backend) string {
	t.Helper()
	var sb strings.Builder
	errs := make([]error, 1)
	err := b.Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error {
		return tx.Scan([]byte{}, nil, func(k, v []byte, exp int64) (bool, error) {
			fmt.Fprintf(&sb, "%q=%q@%d\n", k, v, exp)
			return true, nil
		})
	}}, errs)
	if err != nil || errs[0] != nil {
		t.Fatalf("snapshot: %v %v", err, errs[0])
	}
	return sb.String()
}

// fuzzSeeds are meta/data pairs covering every command, their modifiers and
// typical mistakes.
var fuzzSeeds = [][2]string{
	{`{"kv":{"get":"a"},"correlation":1}`, ``},
	{`{"kv":{"get":"zz","default":{"x":[1,2]}}}`, ``},
	{`{"kv":{"put":"k","ttl":1.5}}`, `{"b":1,"a":[true,null]}`},
	{`{"kv":{"put":"k","expire_at":1700000009999}}`, `"v"`},
	{`{"kv":{"swap":"a"}}`, `2`},
	{`{"kv":{"cas":"a","old":1}}`, `3`},
	{`{"kv":{"cas":"new"}}`, `3`},
	{`{"kv":{"cad":"b","old":"x"}}`, ``},
	{`{"kv":{"delete":"a"}}`, ``},
	{`{"kv":{"increment":"n","by":-2.5e3}}`, ``},
	{`{"kv":{"increment":"n","by":9223372036854775807}}`, ``},
	{`{"kv":{"exists":"b"}}`, ``},
	{`{"kv":{"scan":"","end":"z","limit":3}}`, ``},
	{`{"kv":{"count":null}}`, ``},
	{`{"kv":{"keys":"","limit":2,"after":"a"}}`, ``},
	{`{"kv":{"get_all":""}}`, ``},
	{`{"kv":{"clear":"a"}}`, ``},
	{`{"kv":{"batch":[{"put":"x","value":1},{"increment":"x"},{"cas":"x","old":2,"value":3},{"get":"x"}]}}`, ``},
	{`{"kv":{"batch":[{"put":"x","value":1},{"increment":"b"}]}}`, ``},
	{`{"kv":{"get":"a","put":"b"}}`, `1`},
	{`{"kv":{"frobnicate":"a"}}`, ``},
	{`{"kv":[1]}`, ``},
	{`{"kv":{"put":""}}`, `1`},
	{"{\"kv\":{\"put\":\"\xff\"}}", "\"\xfe\""},
	{`{"kv":{"put":"k"}}`, `NaN`},
	{`{"kv":{"put":"k"}}`, `123456789012345678901234567890`},
	{`{"kv":{"put":"k"}}`, `[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]`},
	{`{"kv":{"scan":"a","limit":-1}}`, ``},
	{`{"kv":{"put":"k","ttl":"5"}}`, `1`},
	{`not json`, `1`},
	{`[]`, ``},
	{``, ``},
}

// FuzzDecode feeds arbitrary meta and data bytes through a Connector on
// memstore. It checks that nothing panics, that a refused command yields
// exactly one err event carrying meta.error and leaves the store unchanged,
// that every emitted event is valid JSON with the input's correlation, and
// that the connector still serves the next command.
func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s[0]), []byte(s[1]))
	}
	f.Fuzz(func(t *testing.T, meta, data []byte) {
		backend := memstore.New()
		clock := kvtest.NewClock()
		c, err := kv.New(backend, kv.Options{
			Now: clock.Now, ReclaimInterval: -1,
			MaxKeyLength: 16, MaxValueBytes: 256, MaxBatch: 8, MaxScan: 16, MaxGetAll: 16,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		var rec kvtest.Recorder
		setup := []pipeline.Event{
			kvtest.Event(kvtest.M(`"put":"a"`), `1`),
			kvtest.Event(kvtest.M(`"put":"b"`), `"x"`),
			kvtest.Event(kvtest.M(`"put":"n"`), `5`),
			kvtest.Event(kvtest.M(`"put":"t","ttl":60`), `{"z":0}`),
		}
		if err := c.Process(context.Background(), setup, &rec); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, backend)

		ev := pipeline.NewTracker(8, nil, nil).Track(7, pipeline.Event{Meta: meta, Data: data})
		rec = kvtest.Recorder{}
		if err := c.Process(context.Background(), []pipeline.Event{ev}, &rec); err != nil {
			t.Fatalf("Process returned %v", err)
		}
		var corr string
		if gjson.ValidBytes(ev.MetaJSON()) {
			if r := gjson.GetBytes(ev.MetaJSON(), "correlation"); r.Exists() {
				corr = r.Raw
			}
		}
		errs := 0
		for _, e := range rec.Events {
			if e.Event.Origin() != ev.Origin() {
				t.Errorf("result not derived from its command")
			}
			if !gjson.ValidBytes(e.Event.Meta) {
				t.Fatalf("emitted meta is not valid JSON: %s", e)
			}
			if got := gjson.GetBytes(e.Event.Meta, "correlation").Raw; got != corr {
				t.Errorf("correlation %q, want %q: %s", got, corr, e)
			}
			switch e.Port {
			case pipeline.PortErr:
				errs++
				if msg := gjson.GetBytes(e.Event.Meta, "error"); msg.Type != gjson.String || msg.Str == "" {
					t.Errorf("err event without meta.error: %s", e)
				}
				if string(e.Event.Data) != string(data) {
					t.Errorf("err event does not carry the original data")
				}
			case pipeline.PortOut:
				if !gjson.ValidBytes(e.Event.DataJSON()) {
					t.Errorf("out data is not valid JSON: %s", e)
				}
				if gjson.GetBytes(e.Event.Meta, "error").Exists() {
					t.Errorf("out event with meta.error: %s", e)
				}
			default:
				t.Errorf("event on unknown port: %s", e)
			}
		}
		if errs > 0 {
			if len(rec.Events) != 1 {
				t.Errorf("a refused command emitted %d events, want exactly one err: %v", len(rec.Events), kvtest.Strings(rec.Events))
			}
			if after := snapshot(t, backend); after != before {
				t.Errorf("refused command changed the store:\nbefore:\n%safter:\n%s", before, after)
			}
		}

		// The connector still works.
		rec = kvtest.Recorder{}
		if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(`"put":"after"`), `true`)}, &rec); err != nil {
			t.Fatal(err)
		}
		if len(rec.Events) != 1 || rec.Events[0].Port != pipeline.PortOut {
			t.Fatalf("connector broken after fuzz input: %v", kvtest.Strings(rec.Events))
		}
	})
}
