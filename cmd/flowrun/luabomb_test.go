package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// luaBombFlow runs a script stuck in one library call (a backtracking
// pattern that takes minutes without the matcher's checks) with a 1s
// timeout.
const luaBombFlow = `name: bomb
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state }
  results: { type: stdout }
  rules:
    type: lua
    kv: store
    timeout: 1s
    script: |
      kv.set("k", 1)
      string.find(string.rep("a", 200), ".-.-.-.-b")
      emit("out")
links:
  - input/out -> rules/in
  - rules/out -> results/in
  - rules/err -> results/in
`

// TestRunStopsOnSIGTERMDuringLuaBomb: SIGTERM while a script is stuck in
// a library call ends flowrun run promptly (the drain waits for the event
// in progress, which its timeout stops), exit 0, the event on err.
func TestRunStopsOnSIGTERMDuringLuaBomb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary")
	}
	bin := buildFlowrun(t)
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(luaBombFlow), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", flow)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if _, err := stdin.Write([]byte(`{"data":{},"meta":{"correlation":1}}` + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the script is running
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Logf("exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		if err != nil {
			t.Fatalf("flowrun run after SIGTERM: %v\nstderr: %s", err, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("flowrun did not stop within 20s of SIGTERM; stderr: %s", errOut.String())
	}
	if got := out.String(); !strings.Contains(got, "(timeout)") || !strings.Contains(got, `"correlation":1`) {
		t.Fatalf("output %q: want the event with the timeout error", got)
	}
}
