package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestExamples runs the tests of every example (its flow_test.yaml)
// through `flowrun test DIR/...`, the way docs and CI give it, on a copy
// of the examples without their stores, and checks that the runner left
// no store behind: each case ran on stores of its own.
func TestExamples(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "examples")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join("..", "..", "examples"))); err != nil {
		t.Fatal(err)
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*", "state"))
	for _, m := range matches {
		if err := os.RemoveAll(m); err != nil {
			t.Fatal(err)
		}
	}
	tests, _ := filepath.Glob(filepath.Join(dir, "*", "flow_test.yaml"))
	if len(tests) < 9 {
		t.Fatalf("found %d examples with a flow_test.yaml, want every example but http-moderation", len(tests))
	}
	for _, tf := range tests {
		if code, out, _ := runCLI(t, "", "validate", filepath.Join(filepath.Dir(tf), "flow.yaml")); code != 0 {
			t.Fatalf("validate %s: exit %d: %s", tf, code, out)
		}
	}
	code, out, stderr := runCLI(t, "", "test", dir+"/...")
	if code != 0 {
		t.Fatalf("flowrun test: exit %d:\n%s\nstderr:\n%s", code, out, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	m := regexp.MustCompile(`^(\d+) passed, 0 failed$`).FindStringSubmatch(lines[len(lines)-1])
	if m == nil {
		t.Fatalf("last line %q, want N passed, 0 failed", lines[len(lines)-1])
	}
	if n, _ := strconv.Atoi(m[1]); n < len(tests) {
		t.Fatalf("%d cases passed, want at least one per example (%d)", n, len(tests))
	}
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "state" {
			t.Errorf("flowrun test created the store %s: cases must run on temporary stores", path)
		}
		return nil
	})
}
