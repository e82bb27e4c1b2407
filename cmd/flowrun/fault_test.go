package main

import (
	"errors"
	"fmt"
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

// TestFileSinkSymlink: `flowrun run` refuses a file sink whose path is a
// symbolic link (exit 1, the message names follow_symlinks) and leaves
// the file it points to alone; with follow_symlinks: true it writes there.
func TestFileSinkSymlink(t *testing.T) {
	for _, follow := range []bool{false, true} {
		t.Run(fmt.Sprintf("follow_symlinks=%v", follow), func(t *testing.T) {
			dir := t.TempDir()
			target := filepath.Join(dir, "precious.txt")
			if err := os.WriteFile(target, []byte("keep\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(dir, "out.jsonl")); err != nil {
				t.Fatal(err)
			}
			flow := fmt.Sprintf(`name: links
connectors:
  input:  { type: stdin }
  output: { type: file, path: out.jsonl, mode: truncate, follow_symlinks: %v }
links:
  - input/out -> output/in
`, follow)
			path := filepath.Join(dir, "flow.yaml")
			if err := os.WriteFile(path, []byte(flow), 0o644); err != nil {
				t.Fatal(err)
			}
			code, _, stderr := runCLI(t, `{"data":1}`+"\n", "run", path)
			got, _ := os.ReadFile(target)
			if !follow {
				if code != 1 || !strings.Contains(stderr, "symbolic link") || !strings.Contains(stderr, "follow_symlinks: true") {
					t.Fatalf("exit %d, stderr:\n%s\nwant exit 1 and a message naming follow_symlinks", code, stderr)
				}
				if string(got) != "keep\n" {
					t.Errorf("the link's target was changed to %q", got)
				}
				return
			}
			if code != 0 || string(got) != `{"data":1,"meta":{}}`+"\n" {
				t.Fatalf("exit %d, target %q, stderr:\n%s", code, got, stderr)
			}
		})
	}
}
