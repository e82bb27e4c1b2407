package flowtest

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestMatchers(t *testing.T) {
	tests := []struct {
		cond  string // YAML of the condition
		event string // JSON of the event
		path  string
		want  string // "" or a substring of the difference
	}{
		{`1`, `{"data":1.0,"meta":{}}`, "data", ""},
		{`12345678901234567890`, `{"data":12345678901234567890,"meta":{}}`, "data", ""},
		{`12345678901234567890`, `{"data":12345678901234567891,"meta":{}}`, "data", "expected 12345678901234567890, got 12345678901234567891"},
		{`{b: 2, a: [1, x]}`, `{"data":{"a":[1,"x"],"b":2},"meta":{}}`, "data", ""},
		{`{a: 1}`, `{"data":{"a":1,"b":2},"meta":{}}`, "data", "b: unexpected field, got 2"},
		{`{a: 1, c: 3}`, `{"data":{"a":1},"meta":{}}`, "data", "c: expected 3, field absent"},
		{`"2026-01-01T00:00:00Z"`, `{"data":"2026-01-01T00:00:00Z","meta":{}}`, "data", ""},
		{`2026-01-01T00:00:00Z`, `{"data":"2026-01-01T00:00:00Z","meta":{}}`, "data", ""},
		{`"1"`, `{"data":1,"meta":{}}`, "data", `expected "1", got 1`},
		{`null`, `{"data":null,"meta":{}}`, "data", ""},
		{`{equals: {exists: true}}`, `{"data":{"exists":true},"meta":{}}`, "data", ""},
		{`{contains: b}`, `{"data":"abc","meta":{}}`, "data", ""},
		{`{contains: 2}`, `{"data":[1,2],"meta":{}}`, "data", ""},
		{`{contains: k}`, `{"data":{"k":1},"meta":{}}`, "data", ""},
		{`{contains: z}`, `{"data":"abc","meta":{}}`, "data", `expected a value containing "z"`},
		{`{exists: true}`, `{"data":{"a":[0,{"b":1}]},"meta":{}}`, "data.a.1.b", ""},
		{`{exists: true}`, `{"data":{"a":[0]},"meta":{}}`, "data.a.1", "absent"},
		{`{exists: false}`, `{"data":1,"meta":{}}`, "meta.error", ""},
		{`{matches: "^a.c$"}`, `{"data":"abc","meta":{}}`, "data", ""},
		{`{matches: "^a"}`, `{"data":1,"meta":{}}`, "data", "expected a string matching"},
		{`{gt: 1, lte: 2.5}`, `{"data":2.5,"meta":{}}`, "data", ""},
		{`{gt: 1, lt: 2}`, `{"data":3,"meta":{}}`, "data", "expected a number < 2, got 3"},
		{`{gte: 0}`, `{"data":"0","meta":{}}`, "data", "expected a number >= 0"},
	}
	for _, tt := range tests {
		t.Run(tt.cond+" "+tt.path, func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte(tt.cond), &doc); err != nil {
				t.Fatal(err)
			}
			m, err := parseMatcher(doc.Content[0])
			if err != nil {
				t.Fatal(err)
			}
			ev, err := decodeJSON([]byte(tt.event))
			if err != nil {
				t.Fatal(err)
			}
			v, ok := lookup(ev.(map[string]any), tt.path)
			got := m.Match(v, ok)
			if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
				t.Fatalf("Match = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ src, want string }{
		{"[]", "t_test.yaml:1:1: error: expected a mapping"},
		{"cases: []", "no cases"},
		{"flow: nope.yaml\ncases: []", `t_test.yaml:1:7: error: flow: flow file`},
		{"cases:\n  - name: a\n    input: []\n    expect: {s: [{data: 1}]}\n    advance: 1s", "advance moves a fixed clock"},
		{"cases:\n  - name: a\n    now: yesterday\n    input: []\n    expect: {}", "t_test.yaml:3:10: error: cases[0].now: expected a time"},
		{"cases:\n  - name: a\n    input: []\n    input_file: x.jsonl\n    expect: {}", "a step has input or input_file, not both"},
		{"cases:\n  - name: a\n    steps: []\n", "expected a non-empty list of steps"},
		{"cases:\n  - name: a\n    steps: [{input: [], expect: {}, expet: 1}]\n", `unknown key "expet"`},
		{"cases:\n  - name: a\n    input: []\n    expect: {s: {events: [], unordered: yes}}", "expected true or false"},
		{"cases:\n  - input: []\n    expect: {}", "every case has a name"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			dir := t.TempDir()
			_, diags, err := Parse(dir+"/t_test.yaml", []byte(tt.src))
			if err == nil {
				t.Fatal("no error")
			}
			var all []string
			for _, d := range diags {
				all = append(all, d.String())
			}
			if !strings.Contains(strings.Join(all, "\n"), tt.want) {
				t.Fatalf("diagnostics\n%s\nlack %q", strings.Join(all, "\n"), tt.want)
			}
		})
	}
}
