package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestErrorMessagesSayItOnce checks messages that used to repeat
// themselves or hide what was wrong: each names the thing once and says
// what is wanted.
func TestErrorMessagesSayItOnce(t *testing.T) {
	const links = "links:\n  - input -> script\n  - input/err -> out\n  - script -> out\n  - script/err -> out\n"
	tests := []struct {
		name  string
		flow  string
		args  []string // after the flow path
		stdin string
		code  int
		want  string // in stdout+stderr
		once  string // must occur exactly once in stderr
	}{
		{name: "missing input file", args: []string{"run"},
			flow: "name: m\nconnectors:\n  input: { type: file, path: in/nope.jsonl, mode: read }\n  out: { type: stdout }\nlinks:\n  - input -> out\n  - input/err -> out\n",
			code: exitFail, want: "flowrun: flow m, connector input: open ", once: "open "},
		{name: "missing lua function", args: []string{"run"}, stdin: `{"data":1}` + "\n",
			flow: "name: m\nconnectors:\n  input: { type: stdin }\n  store: { type: kv, dir: state }\n  script: { type: lua, kv: store, script: \"kv.incr('n')\" }\n  out: { type: stdout }\n" + links,
			code: exitOK, want: `kv.incr does not exist (did you mean \"increment\"?)`},
		{name: "ports as a mapping", args: []string{"validate"},
			flow: "name: m\nconnectors:\n  input: { type: stdin }\n  script: { type: lua, script: \"emit('alerts', event)\", ports: { alerts: 1 } }\n  out: { type: stdout }\n" + links,
			code: exitFail, want: "connectors.script.ports: expected a list such as `ports: [a, b]`, got a mapping"},
		{name: "ports as a list", args: []string{"validate"},
			flow: "name: m\nconnectors:\n  input: { type: stdin }\n  script: { type: lua, script: \"emit('alerts', event)\", ports: [alerts] }\n  out: { type: stdout }\n" + links + "  - script/alerts -> out\n",
			code: exitOK, want: "1 file(s) ok"},
		{name: "undeclared port", args: []string{"run"}, stdin: `{"data":1}` + "\n",
			flow: "name: m\nconnectors:\n  input: { type: stdin }\n  script: { type: lua, script: \"emit('alerts', event)\" }\n  out: { type: stdout }\n" + links,
			code: exitOK, want: "declare it in the flow with `ports: [alerts]`"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flow.yaml")
			if err := os.WriteFile(path, []byte(tc.flow), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, stderr := runCLI(t, tc.stdin, append(tc.args, path)...)
			if code != tc.code || !strings.Contains(out+stderr, tc.want) {
				t.Fatalf("exit %d (want %d), output:\n%s%s\nwant it to contain %q", code, tc.code, out, stderr, tc.want)
			}
			if tc.once != "" && strings.Count(stderr, tc.once) != 1 {
				t.Errorf("%q appears %d times in %q, want once", tc.once, strings.Count(stderr, tc.once), stderr)
			}
		})
	}
}
