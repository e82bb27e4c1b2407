package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStoreHeldThroughAnotherPath starts a real `flowrun run` holding a
// store, then runs `flowrun kv dump` and a second `flowrun run` on the same
// directory reached by other paths (a symlink, x/../state, a symlinked
// parent): each must exit 1 saying the directory is in use and naming the
// path it was given, as for the direct path, and write nothing on stdout.
func TestStoreHeldThroughAnotherPath(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary")
	}
	bin := buildFlowrun(t)
	tmp := t.TempDir()
	storeDir := filepath.Join(tmp, "state")
	for _, d := range []string{storeDir, filepath.Join(tmp, "x")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("state", filepath.Join(tmp, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(".", filepath.Join(tmp, "parent")); err != nil {
		t.Fatal(err)
	}
	first := startChild(t, bin, faultFlow(t, storeDir))
	defer first.kill()
	if _, err := first.stdin.Write([]byte(`{"data":1,"meta":{"kv":{"put":"a"}}}` + "\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-first.lines:
		if !strings.Contains(line, `"op":"put"`) {
			t.Fatalf("first process: %s", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("first process did not answer; stderr: %s", first.stderr.String())
	}

	paths := []struct{ name, path string }{
		{"direct", storeDir},
		{"symlink", filepath.Join(tmp, "link")},
		{"dotdot", tmp + "/x/../state"},
		{"symlinked parent", filepath.Join(tmp, "parent", "state")},
	}
	for _, p := range paths {
		for _, args := range [][]string{{"kv", "dump", p.path}, {"run", faultFlow(t, p.path)}} {
			t.Run(p.name+"/"+args[0], func(t *testing.T) {
				cmd := exec.Command(bin, args...)
				cmd.Stdin = strings.NewReader(`{"data":2,"meta":{"kv":{"put":"b"}}}` + "\n")
				var out, errOut syncBuffer
				cmd.Stdout, cmd.Stderr = &out, &errOut
				err := cmd.Run()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("%v: %v, want exit 1; stderr: %s", args, err, errOut.String())
				}
				if s := errOut.String(); !strings.Contains(s, p.path) || !strings.Contains(s, "in use by another process") {
					t.Errorf("stderr %q does not name %q as in use", s, p.path)
				}
				if out.String() != "" {
					t.Errorf("stdout not empty: %q", out.String())
				}
			})
		}
	}

	// The first process is unaffected.
	if _, err := first.stdin.Write([]byte(`{"meta":{"kv":{"get":"a"}}}` + "\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-first.lines:
		if !strings.Contains(line, `"data":1`) {
			t.Fatalf("first process after the refused ones: %s", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("first process stopped answering")
	}
}
