package main

import (
	"path/filepath"
	"testing"
)

// TestExamples replays every example's events through its flow on an empty
// store and compares stdout with the example's expected output. Steps run
// in order on the same store.
func TestExamples(t *testing.T) {
	type step struct{ input, expected string }
	tests := []struct {
		example string
		steps   []step
	}{
		{"kv", []step{{"events.jsonl", "expected.jsonl"}}},
		{"counter", []step{{"events.jsonl", "expected.jsonl"}}},
		{"cooldown", []step{{"events.jsonl", "expected.jsonl"}}},
		{"ratelimit", []step{{"events.jsonl", "expected.jsonl"}}},
		{"leaderboard", []step{{"events.jsonl", "expected.jsonl"}, {"show.jsonl", "expected-show.jsonl"}}},
		{"lua-warnings", []step{{"events.jsonl", "expected.jsonl"}}},
		{"lua-ratelimit", []step{{"events.jsonl", "expected.jsonl"}}},
		{"lua-sessions", []step{{"events.jsonl", "expected.jsonl"}}},
		{"lua-daily", []step{{"events.jsonl", "expected.jsonl"}}},
	}
	for _, tt := range tests {
		t.Run(tt.example, func(t *testing.T) {
			dir := copyExample(t, tt.example)
			flow := filepath.Join(dir, "flow.yaml")
			if code, out, _ := runCLI(t, "", "validate", flow); code != 0 {
				t.Fatalf("validate: exit %d: %s", code, out)
			}
			for _, s := range tt.steps {
				code, out, stderr := runCLI(t, "", "replay", "-q", flow, filepath.Join(dir, s.input))
				if code != 0 {
					t.Fatalf("replay %s: exit %d: %s", s.input, code, stderr)
				}
				if want := readFile(t, filepath.Join(dir, s.expected)); out != want {
					t.Fatalf("replay %s:\n got:\n%s\nwant (%s):\n%s", s.input, out, s.expected, want)
				}
			}
		})
	}
}
