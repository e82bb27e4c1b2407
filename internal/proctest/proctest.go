// Package proctest helps tests that run the flowrun command as a process
// of its own (kill and restart tests of the bus connectors): it builds the
// binary, reads a store through `flowrun replay`, and shortens output for
// failure messages.
package proctest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// BuildFlowrun builds the flowrun command into dir and returns the
// binary's path; a failed build fails the test with the compiler's output.
func BuildFlowrun(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "flowrun")
	if err := build(bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// PrebuiltEnv names the environment variable that may give the path of a
// flowrun binary built beforehand from the tree under test: CI builds it
// once for the tests of every package, which then link it instead of
// each running go build (a link of 5-20 s on a loaded machine).
const PrebuiltEnv = "FLOWRUN_TEST_BINARY"

// build builds the flowrun command into the file bin, or links the
// prebuilt binary PrebuiltEnv names there; its error carries the
// compiler's output.
func build(bin string) error {
	if pre := os.Getenv(PrebuiltEnv); pre != "" {
		if os.Link(pre, bin) == nil {
			return nil
		}
		data, err := os.ReadFile(pre)
		if err != nil {
			return fmt.Errorf("%s: %w", PrebuiltEnv, err)
		}
		return os.WriteFile(bin, data, 0o755)
	}
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/flowrun/flowrun/cmd/flowrun").CombinedOutput(); err != nil {
		return fmt.Errorf("go build flowrun: %w\n%s", err, out)
	}
	return nil
}

// SharedBuild is a flowrun binary built once and shared by the tests of
// one test binary (each go build of it takes 5-20 s of a loaded CI run).
// Declare one per test package and call Remove from TestMain after
// m.Run. The zero value is ready.
type SharedBuild struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// Flowrun returns the binary's path, building it on the first call; a
// failed build fails every test that asks. Tests run it; none may change
// it.
func (b *SharedBuild) Flowrun(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "flowrun-test-bin-"); b.err != nil {
			return
		}
		b.bin = filepath.Join(b.dir, "flowrun")
		b.err = build(b.bin)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}

// Remove deletes the binary, if it was built.
func (b *SharedBuild) Remove() {
	if b.dir != "" {
		_ = os.RemoveAll(b.dir)
	}
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
