package flows

import (
	"github.com/flowrun/flowrun/flows/builtin"
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad checks that loading arbitrary bytes never panics and that every
// load either returns a flow or errors in its diagnostics, never both.
// Seeds: the broken flow files and testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "broken", "*.yaml"))
	for _, file := range files {
		src, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(src)
	}
	reg := builtin.NewRegistry()
	f.Fuzz(func(t *testing.T, src []byte) {
		flow, diags, err := LoadBytes("fuzz.yaml", src, reg)
		if HasErrors(diags) != (err != nil) || (err != nil) != (flow == nil) {
			t.Fatalf("inconsistent result: flow %v, err %v, diagnostics %v", flow != nil, err, diags)
		}
		for _, d := range diags {
			if d.Message == "" || d.File != "fuzz.yaml" {
				t.Fatalf("malformed diagnostic %+v", d)
			}
		}
	})
}
