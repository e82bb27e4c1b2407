// Package proctest helps tests that run the flowrun command as a process
// of its own (kill and restart tests of the bus connectors): it builds the
// binary and shortens its output for failure messages.
package proctest

import (
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
