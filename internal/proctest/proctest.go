// Package proctest helps tests that run the flowrun command as a process
// of its own (kill and restart tests of the bus connectors): it builds the
// binary, reads a store through `flowrun replay`, and shortens output for
// failure messages.
package proctest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildFlowrun builds the flowrun command into dir and returns the
// binary's path; a failed build fails the test with the compiler's output.
func BuildFlowrun(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "flowrun")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/flowrun/flowrun/cmd/flowrun").CombinedOutput()
	if err != nil {
		t.Fatalf("go build flowrun: %v\n%s", err, out)
	}
	return bin
}

// Tail returns the last n bytes of s, marked with "..." when cut: a
// process's log in a failure message.
func Tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Replay writes flow and queries (JSON lines) into dir as verify.yaml and
// queries.jsonl, runs `flowrun replay -q` on them there with the binary
// bin, and returns its output: how the kill tests read the store a killed
// flow left behind.
func Replay(t testing.TB, bin, dir, flow, queries string) []byte {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "verify.yaml"), []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "queries.jsonl"), []byte(queries), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "replay", "-q", "verify.yaml", "queries.jsonl")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("flowrun replay of the store's queries: %v", err)
	}
	return out
}
