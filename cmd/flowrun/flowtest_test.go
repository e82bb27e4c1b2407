package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testFlow counts events per player; ${MAXLEN} bounds the key length.
const testFlow = `name: counter
connectors:
  input:  { type: stdin }
  store:  { type: kv, dir: state, max_key_length: '${MAXLEN}' }
  counts: { type: stdout }
  errors: { type: stdout }
pipelines:
  count:
    - set:
        meta.kv: '{"increment": "hits_" + data.player}'
        meta.correlation: 'data.player'
links:
  - input/out -> count/in
  - count/out -> store/in
  - count/err -> errors/in
  - store/out -> counts/in
  - store/err -> errors/in
`

// cooldownFlow claims "cd_<player>" for 30 s with a cas on an absent key.
const cooldownFlow = `name: cooldown
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state }
  allowed: { type: stdout }
  denied:  { type: stdout }
pipelines:
  claim:
    - set:
        meta.kv: '{"cas": "cd_" + data.player, "ttl": 30}'
links:
  - input/out -> claim/in
  - claim/out -> store/in
  - store/out -> allowed/in
  - store/err -> denied/in
`

// twoSources feeds one store from two sources.
const twoSources = `name: two
connectors:
  live:    { type: stdin }
  archive: { type: file, mode: read, path: archive.jsonl }
  store:   { type: kv, dir: state }
  out:     { type: stdout }
pipelines:
  count:
    - set:
        meta.kv: '{"increment": "n"}'
links:
  - live/out -> count/in
  - archive/out -> count/in
  - count/out -> store/in
  - store/out -> out/in
`

// writeTest writes the flow and a test file into a new directory and
// returns the test file's path.
func writeTest(t *testing.T, flow, test string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "flow_test.yaml")
	if err := os.WriteFile(path, []byte(test), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFlowTestCommand(t *testing.T) {
	tests := []struct {
		name     string
		flow     string
		test     string
		code     int
		last     string   // last line of stdout
		stdout   []string // each must appear in stdout
		stderr   []string // each must appear in stderr
		noStdout []string
	}{
		{
			name: "exact events pass",
			flow: testFlow,
			test: `env: {MAXLEN: "100"}
cases:
  - name: counts
    input: [{data: {player: a}}, {data: {player: a}}]
    expect:
      counts:
        - {data: 1, meta: {kv: {op: increment, key: hits_a, found: false}, correlation: a}}
        - {data: 2, meta: {correlation: a, kv: {found: true, key: hits_a, op: increment}}}
`,
			code: 0, last: "1 passed, 0 failed", stdout: []string{"PASS ", ": counts ("},
		},
		{
			name: "a failing case shows a diff and exits 1",
			flow: testFlow,
			test: `env: {MAXLEN: "100"}
cases:
  - name: wrong count
    input: [{data: {player: a}}]
    expect:
      counts:
        - {data: 5, meta: {kv: {op: increment, key: hits_a, found: true}, correlation: a}}
`,
			code: 1, last: "0 passed, 1 failed",
			stdout: []string{"FAIL ", "wrong count", "sink counts, event 0 (line 7): data: expected 5, got 1",
				"meta.kv.found: expected true, got false", `got: {"data":1,`},
		},
		{
			name: "every case starts on an empty store",
			flow: testFlow,
			test: `env: {MAXLEN: "100"}
cases:
  - name: first
    input: [{data: {player: a}}]
    expect: {counts: [{data: 1}]}
  - name: second
    input: [{data: {player: a}}]
    expect: {counts: [{data: 1}]}
`,
			code: 0, last: "2 passed, 0 failed",
		},
		{
			name: "conditions on fields",
			flow: testFlow,
			test: `env: {MAXLEN: "100"}
cases:
  - name: hold
    input: [{data: {player: a}}, {data: {player: bb}}]
    expect:
      counts:
        - {data: {gte: 1, lt: 2}, meta.kv.key: {matches: "^hits_a$"}, meta.correlation: {exists: true}, meta.error: {exists: false}}
        - {meta.kv: {contains: op}, meta.kv.key: {contains: bb}, data: {equals: 1}}
  - name: fail
    input: [{data: {player: a}}]
    expect:
      counts:
        - {data: {gt: 1}, meta.kv.key: {contains: zz}, meta.error: {exists: true}, meta.correlation: {matches: "^b"}}
`,
			code: 1, last: "1 passed, 1 failed",
			stdout: []string{"PASS ", ": hold (", "FAIL ", "data: expected a number > 1, got 1",
				`meta.kv.key: expected a value containing "zz", got "hits_a"`,
				"meta.error: expected the field to exist, it is absent",
				`meta.correlation: expected a string matching "^b", got "a"`},
		},
		{
			name: "a sink the case does not list must receive nothing",
			flow: testFlow,
			test: `env: {MAXLEN: "3"}
cases:
  - name: strict
    input: [{data: {player: a}}]
    expect: {}
  - name: lenient
    input: [{data: {player: a}}]
    ignore_other_sinks: true
    expect: {}
`,
			code: 1, last: "1 passed, 1 failed",
			stdout: []string{"FAIL ", "strict", "sink errors, event 0: unexpected event", "PASS ", "lenient"},
		},
		{
			name: "env variables reach the flow",
			flow: testFlow,
			test: `cases:
  - name: short keys
    env: {MAXLEN: "3"}
    input: [{data: {player: a}}]
    expect:
      errors: [{meta.error: {contains: "limit is 3: key too long"}}]
  - name: long keys
    env: {MAXLEN: "100"}
    input: [{data: {player: a}}]
    expect:
      counts: [{data: 1}]
`,
			code: 0, last: "2 passed, 0 failed",
		},
		{
			name: "unordered",
			flow: testFlow,
			test: `env: {MAXLEN: "100"}
cases:
  - name: any order
    input: [{data: {player: a}}, {data: {player: b}}, {data: {player: a}}]
    expect:
      counts:
        unordered: true
        events: [{data: 2}, {meta.correlation: b}, {data: 1, meta.correlation: a}]
  - name: ordered
    input: [{data: {player: a}}, {data: {player: b}}, {data: {player: a}}]
    expect:
      counts: [{data: 2}, {meta.correlation: b}, {data: 1, meta.correlation: a}]
`,
			code: 1, last: "1 passed, 1 failed", stdout: []string{"PASS ", "any order", "FAIL ", "ordered"},
		},
		{
			name: "the clock decides kv expiry",
			flow: cooldownFlow,
			test: `now: 2026-01-01T00:00:00Z
cases:
  - name: cooldown
    steps:
      - input: [{data: {player: a}}]
        expect: {allowed: [{meta.kv.found: false}]}
      - advance: 29s
        input: [{data: {player: a}}]
        expect: {denied: [{meta.error: {contains: compare mismatch}}]}
      - now: 1767225630000
        input: [{data: {player: a}}]
        expect: {allowed: [{meta.kv.found: false}]}
`,
			code: 0, last: "1 passed, 0 failed",
		},
		{
			name: "a malformed input line, an unknown sink, a flow that does not load fail the case",
			flow: testFlow,
			test: `env: {MAXLEN: "100"}
cases:
  - name: bad input
    input_file: in.jsonl
    expect: {}
  - name: unknown sink
    input: []
    expect: {count: []}
  - name: flow does not load
    env: {MAXLEN: "many"}
    input: []
    expect: {}
`,
			code: 1, last: "0 passed, 3 failed",
			stdout: []string{"in.jsonl: line 1: invalid JSON", "malformed input", "sink count (line 8): not a sink of flow counter (sinks: counts, errors)",
				"does not load", "flow.yaml:4:"},
		},
		{
			name: "steps feed several sources one after another",
			flow: twoSources,
			test: `cases:
  - name: both
    steps:
      - source: archive
        input: [{data: 1}, {data: 2}]
        expect: {out: [{data: 1}, {data: 2}]}
      - source: live
        input: [{data: 3}]
        expect: {out: [{data: 3}]}
  - name: no source named
    input: [{data: 1}]
    expect: {}
`,
			code: 1, last: "1 passed, 1 failed",
			stdout: []string{"PASS ", ": both (", "FAIL ", "flow two has sources [live archive]: name the one to feed with source"},
		},
		{
			name: "a malformed test file exits 2 with its line",
			flow: testFlow,
			test: `cases:
  - name: x
    input: [{data: 1}]
    expectt: {}
  - name: x
    input: [{data: 1, mta: {}}]
    expect: {counts: [{dta: 1}, {data: {gt: many}}]}
`,
			code: 2, last: "0 passed, 0 failed",
			stderr: []string{
				`flow_test.yaml:2:5: error: cases[0].expect: missing`,
				`flow_test.yaml:4:5: error: cases[0].expectt: unknown key "expectt" (did you mean "expect"?)`,
				`flow_test.yaml:5:5: error: cases[1].name: case "x" is already defined at line 2`,
				`flow_test.yaml:6:23: error: cases[1].input[0].mta: unknown key "mta"`,
				`flow_test.yaml:7:24: error: cases[1].expect.counts[0]: field "dta": a field path starts with data or meta`,
				`flow_test.yaml:7:40: error: cases[1].expect.counts[1].data: gt: expected a number, got "many"`,
			},
			noStdout: []string{"PASS", "FAIL"},
		},
		{
			name: "a YAML syntax error exits 2 with its line",
			flow: testFlow,
			test: "cases:\n  - name: x\n    input: [\n",
			code: 2, last: "0 passed, 0 failed",
			stderr: []string{`flow_test.yaml:3: error: did not find expected node content`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeTest(t, tt.flow, tt.test)
			if err := os.WriteFile(filepath.Join(filepath.Dir(path), "in.jsonl"), []byte("{not json\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, stderr := runCLI(t, "", "test", path)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, stderr)
			}
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if last := lines[len(lines)-1]; last != tt.last {
				t.Errorf("last line %q, want %q\nstdout:\n%s", last, tt.last, out)
			}
			for _, s := range tt.stdout {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tt.noStdout {
				if strings.Contains(out, s) {
					t.Errorf("stdout has %q:\n%s", s, out)
				}
			}
			for _, s := range tt.stderr {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(path), "state")); err == nil {
				t.Errorf("the flow's own store was created: cases must run on temporary stores")
			}
		})
	}
}

// TestFlowTestFind checks which files flowrun test runs: directories are
// searched recursively, testdata and hidden directories skipped, and no
// test file at all is a usage error.
func TestFlowTestFind(t *testing.T) {
	root := t.TempDir()
	okTest := "env: {MAXLEN: \"100\"}\ncases:\n  - name: one\n    input: [{data: {player: a}}]\n    expect: {counts: [{data: 1}]}\n"
	for _, d := range []string{"a", "a/b", "testdata", ".hidden"} {
		dir := filepath.Join(root, d)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, text := range map[string]string{"flow.yaml": testFlow, "flow_test.yaml": okTest, "other.yaml": testFlow, "other_test.yaml": okTest} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	code, out, stderr := runCLI(t, "", "test", root)
	if code != 0 || !strings.HasSuffix(out, "4 passed, 0 failed\n") {
		t.Fatalf("exit %d, want 4 cases in a and a/b:\n%s%s", code, out, stderr)
	}
	if strings.Contains(out, "testdata") || strings.Contains(out, ".hidden") {
		t.Fatalf("ran tests under testdata or a hidden directory:\n%s", out)
	}
	if code, out, _ := runCLI(t, "", "test", filepath.Join(root, "a")+"/..."); code != 0 || !strings.HasSuffix(out, "4 passed, 0 failed\n") {
		t.Fatalf("DIR/...: exit %d:\n%s", code, out)
	}
	if code, out, _ := runCLI(t, "", "test", filepath.Join(root, "testdata", "other_test.yaml")); code != 0 || !strings.HasSuffix(out, "1 passed, 0 failed\n") {
		t.Fatalf("a file named explicitly: exit %d:\n%s", code, out)
	}
	if code, _, stderr := runCLI(t, "", "test", t.TempDir()); code != 2 || !strings.Contains(stderr, "no test files") {
		t.Fatalf("no test file: exit %d, want 2: %s", code, stderr)
	}
}

// TestFlowTestJSONAndQuiet checks the machine-readable output and -q.
func TestFlowTestJSONAndQuiet(t *testing.T) {
	path := writeTest(t, testFlow, `env: {MAXLEN: "100"}
cases:
  - name: passes
    input: [{data: {player: a}}]
    expect: {counts: [{data: 1}]}
  - name: fails
    input: [{data: {player: a}}]
    expect: {counts: [{data: 2}]}
`)
	code, out, _ := runCLI(t, "", "test", "--json", path)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want one object per case and a summary, got:\n%s", out)
	}
	var c1, c2 struct {
		Case     string
		Passed   bool
		Failures []struct {
			Sink    string
			Index   int
			Message string
			Got     string
		}
	}
	var sum struct{ Passed, Failed int }
	for i, v := range []any{&c1, &c2, &sum} {
		if err := json.Unmarshal([]byte(lines[i]), v); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, lines[i])
		}
	}
	if c1.Case != "passes" || !c1.Passed || c2.Passed || len(c2.Failures) != 1 || c2.Failures[0].Sink != "counts" ||
		c2.Failures[0].Message != "data: expected 2, got 1" || !strings.Contains(c2.Failures[0].Got, `"data":1`) || sum.Passed != 1 || sum.Failed != 1 {
		t.Fatalf("wrong JSON output:\n%s", out)
	}
	code, out, _ = runCLI(t, "", "test", "-q", path)
	if code != 1 || strings.Contains(out, "PASS") || !strings.Contains(out, "FAIL") || !strings.HasSuffix(out, "1 passed, 1 failed\n") {
		t.Fatalf("-q: exit %d:\n%s", code, out)
	}
	code, out, _ = runCLI(t, "", "test", "--run", "^pass", path)
	if code != 0 || !strings.HasSuffix(out, "1 passed, 0 failed\n") {
		t.Fatalf("--run: exit %d:\n%s", code, out)
	}
}
