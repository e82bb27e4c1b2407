package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/internal/natstest"
)

// TestRunStoppedWhileStarting: SIGINT or SIGTERM (the run's context
// cancelled) while the flow is still being built, here a partitioned kv
// connector waiting for its changelog cluster, stops flowrun run with
// success and a stop line: no event had been accepted. It exited 1 with
// "context canceled" before.
func TestRunStoppedWhileStarting(t *testing.T) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(fmt.Sprintf(`name: starting
connectors:
  input: { type: stdin }
  store:
    type: kv
    dir: %q
    partitions: 4
    changelog: { urls: %q, replicas: 1 }
  results: { type: stdout }
links:
  - input/out -> store/in
  - store/out -> results/in
  - store/err -> results/in
`, filepath.Join(dir, "state"), natstest.BlackHole(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(500*time.Millisecond, cancel)
	var out, errOut syncBuffer
	start := time.Now()
	err := runFlow(ctx, env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut}, flow, "")
	if err != nil {
		t.Fatalf("run stopped while starting = %v, want success; stderr: %s", err, errOut.String())
	}
	if took := time.Since(start); took > 25*time.Second {
		t.Errorf("run took %v to stop", took)
	}
	if !strings.Contains(errOut.String(), "flow stopped before it started") {
		t.Errorf("stderr %q, want the stop line", errOut.String())
	}
}
