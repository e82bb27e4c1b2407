package kv_test

import (
	"context"
	"fmt"
	"sort"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

func TestOnCommandsTalliesPerBatch(t *testing.T) {
	var calls []string
	c, err := kv.New(memstore.New(), kv.Options{
		Namespace:       "ns",
		ReclaimInterval: -1,
		OnCommands: func(ns, op string, ok bool, n int) {
			calls = append(calls, fmt.Sprintf("%s %s %t %d", ns, op, ok, n))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	process(t, c,
		kvtest.Event(kvtest.M(`"put":"a"`), `1`),
		kvtest.Event(kvtest.M(`"put":"b"`), `2`),
		kvtest.Event(kvtest.M(`"put":"c"`), `null`), // refused: null value
		kvtest.Event(kvtest.M(`"get":"a"`), ``),
		kvtest.Event(kvtest.M(`"nope":"a"`), ``),
		pipeline.Event{Meta: []byte(`not json`)},
	)
	sort.Strings(calls)
	want := []string{"ns get true 1", "ns invalid false 2", "ns put false 1", "ns put true 2"}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("OnCommands calls:\n got %q\nwant %q", calls, want)
	}

	calls = nil
	process(t, c)
	if len(calls) != 0 {
		t.Fatalf("empty batch reported %q", calls)
	}
}
