package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLogFormatJSONEverywhere checks that with --log-format json every
// line run, replay and the kv verbs write to stderr is a JSON object,
// validation warnings and errors and the final failure included, and that
// durations are strings such as "3ms".
func TestLogFormatJSONEverywhere(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	warns := write("warns.yaml", "name: w\nconnectors:\n  input: { type: stdin }\n  out: { type: stdout }\nlinks:\n  - input -> out\n")
	invalid := write("invalid.yaml", "name: i\nconnectors:\n  input: { type: stdin, nope: 1 }\n")
	missing := write("missing.yaml", "name: m\nconnectors:\n  input: { type: file, path: nope.jsonl, mode: read }\n  out: { type: stdout }\nlinks:\n  - input -> out\n  - input/err -> out\n")
	input := write("in.jsonl", `{"data":1}`+"\n"+`{"data": oops`+"\n")
	store := filepath.Join(dir, "state")
	if code, _, stderr := runCLI(t, `{"namespace":"game","key":"a","value":1,"expire_at":null}`+"\n", "kv", "load", "-q", store); code != 0 {
		t.Fatalf("kv load: %s", stderr)
	}
	tests := []struct {
		name string
		args []string
		code int
		want []string // substrings of stderr
	}{
		{"warning", []string{"run", warns}, exitOK, []string{`"level":"WARN","msg":"port \"err\" is not linked`, `"line":3,"col":3,"field":"connectors.input","severity":"warning"`, `"msg":"flow stopped"`}},
		{"invalid flow", []string{"run", invalid}, exitFail, []string{`"level":"ERROR","msg":"unknown option \"nope\"`}},
		{"failure", []string{"run", missing}, exitFail, []string{`"msg":"flowrun failed","error":"flow m, connector input: open `}},
		{"replay", []string{"replay", warns, input}, exitOK, []string{`"msg":"replay summary"`, `"reached":{"out":1}`, `"malformed_lines":1`}},
		{"kv warning", []string{"kv", "get", store, "k", "--namespace", "nope"}, exitOK, []string{`"level":"WARN","msg":"namespace has no keys","namespace":"nope","namespaces":["game"]`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, `{"data":1}`+"\n", append([]string{"--log-format", "json"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d: %s", code, tc.code, stderr)
			}
			for _, line := range strings.Split(strings.TrimSuffix(stderr, "\n"), "\n") {
				var obj map[string]any
				if err := json.Unmarshal([]byte(line), &obj); err != nil {
					t.Errorf("stderr line is not JSON: %q", line)
					continue
				}
				if el, ok := obj["elapsed"]; ok {
					if _, isString := el.(string); !isString {
						t.Errorf("elapsed is %T (%v), want a duration string", el, el)
					}
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %s:\n%s", w, stderr)
				}
			}
		})
	}
}
