package expr

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

var update = flag.Bool("update", false, "rewrite the generated function reference in docs/operators.md")

const (
	docsBegin = "<!-- BEGIN GENERATED FUNCTIONS: do not edit, see operators/expr/docs_test.go -->\n"
	docsEnd   = "<!-- END GENERATED FUNCTIONS -->\n"
)

// TestDocsFunctions fails when the function reference of
// docs/operators.md differs from what the function table generates.
func TestDocsFunctions(t *testing.T) {
	path := filepath.Join("..", "..", "docs", "operators.md")
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	begin, end := strings.Index(text, docsBegin), strings.Index(text, docsEnd)
	if begin < 0 || end < begin {
		t.Fatalf("%s lacks the generated function markers", path)
	}
	want := "\n" + functionReference() + "\n"
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
	t.Errorf("%s is out of date with the function table; run: go test ./operators/expr -run TestDocs -update", path)
}

// TestDocsExamples evaluates the example of every function of the table
// and checks the result the reference shows.
func TestDocsExamples(t *testing.T) {
	ev := exampleEventValue(t)
	opts := Options{Now: func() time.Time { return exampleNow }}
	for _, f := range funcTable {
		if f.doc == "" || f.result == "" || f.group == "" {
			t.Errorf("%s: doc, result and group are required", f.name)
		}
		if (f.call == nil) == (f.lazy == nil) {
			t.Errorf("%s: exactly one of call and lazy is required", f.name)
		}
		if f.call != nil && (f.variadic || len(f.params) > len(argv{})) {
			t.Errorf("%s: takes more than %d arguments, so it must be lazy", f.name, len(argv{}))
		}
		if f.example == "" {
			if f.name != "delete" {
				t.Errorf("%s: no example", f.name)
			}
			continue
		}
		if !strings.Contains(f.example, f.name+"(") {
			t.Errorf("%s: example %q does not call it", f.name, f.example)
		}
		e, err := ParseWith(f.example, opts)
		if err != nil {
			t.Errorf("%s: example %q: %v", f.name, f.example, err)
			continue
		}
		v, err := e.Eval(ev)
		if err != nil {
			t.Errorf("%s: example %q: %v", f.name, f.example, err)
			continue
		}
		if got := v.String(); got != f.want {
			t.Errorf("%s: example %q = %s, the reference says %s", f.name, f.example, got, f.want)
		}
	}
}

func exampleEventValue(t *testing.T) pipeline.Event {
	t.Helper()
	var ev pipeline.Event
	if err := ev.UnmarshalJSON([]byte(exampleEvent)); err != nil {
		t.Fatal(err)
	}
	return ev
}
