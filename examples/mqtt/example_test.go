// Package mqtt_test replays the MQTT example's recorded messages through its
// flow (no broker needed: replay stands in for the mqtt source and captures
// the sinks) and compares the output with expected.jsonl.
package mqtt_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/flows/replay"
)

func TestReplayExample(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"flow.yaml", "events.jsonl"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	flow, diags, err := flows.Load(filepath.Join(dir, "flow.yaml"), builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	in, err := os.Open(filepath.Join(dir, "events.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var out bytes.Buffer
	capture := replay.NewCapture(&out)
	src := &replay.WindowedSource{Inner: jsonl.NewReader(in, jsonl.ReaderOptions{}), Capture: capture}
	built, err := flow.Build(context.Background(), flows.BuildOptions{ReplaceSource: "input", Source: src, Capture: capture.Sink})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("expected.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Fatalf("got:\n%s\nwant:\n%s", out.String(), want)
	}
}
