package flows

import (
	"flag"
	"github.com/flowrun/flowrun/flows/builtin"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated reference in docs/flows.md")

const (
	docsBegin = "<!-- BEGIN GENERATED REFERENCE: do not edit, see flows/docs_test.go -->\n"
	docsEnd   = "<!-- END GENERATED REFERENCE -->\n"
)

// TestDocsReferenceUpToDate fails when the reference section of
// docs/flows.md differs from what the registry's specs generate.
func TestDocsReferenceUpToDate(t *testing.T) {
	path := filepath.Join("..", "docs", "flows.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	begin, end := strings.Index(text, docsBegin), strings.Index(text, docsEnd)
	if begin < 0 || end < begin {
		t.Fatalf("%s lacks the generated reference markers", path)
	}
	want := "\n" + builtin.NewRegistry().Markdown() + "\n"
	got := text[begin+len(docsBegin) : end]
	if got == want {
		return
	}
	if *update {
		text = text[:begin+len(docsBegin)] + want + text[end:]
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s is out of date with the component specs; run: go test ./flows -run TestDocs -update", path)
}
