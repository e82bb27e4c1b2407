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

// faultFlow is a flow whose store directory is given by %s.
func faultFlow(t *testing.T, storeDir string) string {
	t.Helper()
	flow := filepath.Join(t.TempDir(), "flow.yaml")
	src := strings.Replace(badInputFlow, "dir: state", "dir: "+storeDir, 1)
	if err := os.WriteFile(flow, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return flow
}

// TestStoreDirectoryUnusable starts `flowrun run` on store directories it
// cannot use: it must exit 1 at start with an error naming the directory.
// Tests often run as root, where a chmod 0500 parent does not stop writes,
// so the unwritable case uses a path under a regular file (which fails for
// every user) and adds the chmod case only when it can take effect.
func TestStoreDirectoryUnusable(t *testing.T) {
	type tc struct {
		name, dir, want string
	}
	tmp := t.TempDir()
	file := filepath.Join(tmp, "plainfile")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []tc{{"under a regular file", filepath.Join(file, "state"), "not a directory"}}
	if os.Geteuid() != 0 {
		ro := filepath.Join(tmp, "readonly")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(ro, 0o755) })
		tests = append(tests, tc{"parent not writable", filepath.Join(ro, "state"), "permission denied"})
	} else {
		t.Log("running as root: chmod 0500 does not stop root, only the regular-file case runs")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, `{"data":1,"meta":{"kv":{"put":"a"}}}`+"\n", "run", faultFlow(t, tt.dir))
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr: %s", code, stderr)
			}
			if !strings.Contains(stderr, tt.dir) || !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr %q does not name the directory %q and the cause %q", stderr, tt.dir, tt.want)
			}
			if out != "" {
				t.Errorf("stdout not empty: %q", out)
			}
		})
	}
}

// TestStoreDirectoryHeldByAnotherProcess starts a real `flowrun run` holding
// a store, then a second one on the same directory: the second must exit 1
// at start saying the directory is in use, and the first keeps working.
func TestStoreDirectoryHeldByAnotherProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary")
	}
	bin := buildFlowrun(t)
	storeDir := filepath.Join(t.TempDir(), "state")
	flow := faultFlow(t, storeDir)
	first := startChild(t, bin, flow)
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

	second := exec.Command(bin, "run", flow)
	second.Stdin = strings.NewReader(`{"data":2,"meta":{"kv":{"put":"b"}}}` + "\n")
	var out, errOut syncBuffer
	second.Stdout, second.Stderr = &out, &errOut
	err := second.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("second process: %v, want exit 1; stderr: %s", err, errOut.String())
	}
	if s := errOut.String(); !strings.Contains(s, storeDir) || !strings.Contains(s, "in use by another process") {
		t.Errorf("second process stderr %q does not name %q as in use", s, storeDir)
	}
	if out.String() != "" {
		t.Errorf("second process wrote results: %q", out.String())
	}

	// The first process is unaffected.
	if _, err := first.stdin.Write([]byte(`{"meta":{"kv":{"get":"a"}}}` + "\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case line := <-first.lines:
		if !strings.Contains(line, `"data":1`) {
			t.Fatalf("first process after the refused second: %s", line)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("first process stopped answering")
	}
}
