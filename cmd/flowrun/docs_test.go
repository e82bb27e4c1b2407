package main

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var updateReference = flag.Bool("update", false, "rewrite docs/reference.md from flowrun docs")

// TestDocsReference fails when docs/reference.md differs from what
// flowrun docs prints.
func TestDocsReference(t *testing.T) {
	code, out, stderr := runCLI(t, "", "docs")
	if code != 0 {
		t.Fatalf("flowrun docs: exit %d: %s", code, stderr)
	}
	path := filepath.Join("..", "..", "docs", "reference.md")
	if *updateReference {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (generate it: go test ./cmd/flowrun -run TestDocsReference -update)", err)
	}
	if string(committed) != out {
		t.Fatalf("%s is out of date with the component specs; run: go test ./cmd/flowrun -run TestDocsReference -update", path)
	}
}
