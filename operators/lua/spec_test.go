package lua

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/flowrun/flowrun/component"
)

// TestSpecCheck checks what the lua spec's Check refuses, and at which
// option, without building anything: a FIFO named as the script file must
// be refused at once, not waited on.
func TestSpecCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	fifo := filepath.Join(dir, "fifo.lua")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	spec := Spec()
	for _, tc := range []struct {
		name   string
		values map[string]any
		option string // "" when the error names no option; "-" for no error
		msg    string
	}{
		{"inline", map[string]any{"script": "emit('out', event)"}, "-", ""},
		{"file", map[string]any{"file": write("ok.lua", "emit('out', event)")}, "-", ""},
		{"no script", map[string]any{}, "", "lua needs a script"},
		{"both", map[string]any{"script": "x = 1", "file": write("both.lua", "x = 1")}, "file", "not both"},
		{"missing file", map[string]any{"file": filepath.Join(dir, "missing.lua")}, "file", "no such file"},
		{"directory", map[string]any{"file": dir}, "file", "not a regular file"},
		{"fifo", map[string]any{"file": fifo}, "file", "not a regular file"},
		{"syntax inline", map[string]any{"script": "emit('out',"}, "script", "syntax error"},
		{"syntax file", map[string]any{"file": write("bad.lua", "\n\nend")}, "file", "bad.lua line:3"},
		{"blank script", map[string]any{"script": "  \n"}, "", "a script is required"},
	} {
		err := spec.Check(component.NewConfig("n", "lua", tc.values))
		if tc.option == "-" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.msg)
			continue
		}
		var oe *component.OptionError
		got := ""
		if errors.As(err, &oe) {
			got = oe.Option
		}
		if got != tc.option {
			t.Errorf("%s: error %v is about option %q, want %q", tc.name, err, got, tc.option)
		}
	}
}
