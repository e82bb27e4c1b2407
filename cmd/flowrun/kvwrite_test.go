package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestKVWriteVerbs checks kv put, increment and delete: each runs the
// command a flow would and prints the resulting value, and what they
// change is what get and dump read back.
func TestKVWriteVerbs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	dump := `{"namespace":"game","key":"seed","value":1,"expire_at":null}` + "\n"
	if code, _, stderr := runCLI(t, dump, "kv", "load", "-q", dir); code != 0 {
		t.Fatalf("load: exit %d: %s", code, stderr)
	}
	ns := "--namespace=game"
	steps := []struct {
		stdin string
		args  []string
		code  int
		out   string
		err   string // in stderr
	}{
		{args: []string{"put", dir, "player", `{"score":10}`, ns}, out: `{"score":10}` + "\n"},
		{stdin: `"from stdin"` + "\n", args: []string{"put", dir, "motd", ns}, out: `"from stdin"` + "\n"},
		{args: []string{"put", dir, "bad", "not json", ns}, code: exitUsage, err: "not JSON"},
		{args: []string{"put", dir, "bad", `{"a":1,"a":2}`, ns}, code: exitUsage, err: `not I-JSON: duplicate object key "a" at value.a`},
		{args: []string{"put", dir, "fixed", `"x\ud800"`, ns}, out: "\"x\uFFFD\"\n"},
		{args: []string{"increment", dir, "n", ns}, out: "1\n"},
		{args: []string{"increment", dir, "n", "--by", "-3", ns}, out: "-2\n"},
		{args: []string{"increment", dir, "player", ns}, code: exitFail, err: "increment"},
		{args: []string{"increment", dir, "n", "--by", "x", ns}, code: exitUsage, err: "--by must be a number"},
		{args: []string{"delete", dir, "player", ns}, out: `{"score":10}` + "\n"},
		{args: []string{"get", dir, "player", ns}, out: "null\n"},
		{args: []string{"get", dir, "motd", ns}, out: `"from stdin"` + "\n"},
		{args: []string{"put", dir, "short", "1", "--ttl", "1h", ns}, out: "1\n"},
		{args: []string{"put", dir, "short", "1", "--ttl", "-1s", ns}, code: exitUsage, err: "--ttl must be positive"},
	}
	for _, s := range steps {
		code, out, stderr := runCLI(t, s.stdin, append([]string{"kv"}, s.args...)...)
		if code != s.code || (s.code == 0 && out != s.out) || !strings.Contains(stderr, s.err) {
			t.Fatalf("kv %v: exit %d (want %d), stdout %q (want %q), stderr %q (want %q)", s.args, code, s.code, out, s.out, stderr, s.err)
		}
		if strings.Contains(stderr, "warning") {
			t.Errorf("kv %v: unexpected warning: %s", s.args, stderr)
		}
	}
	_, out, _ := runCLI(t, "", "kv", "dump", "-q", dir)
	for _, want := range []string{`"key":"motd","value":"from stdin"`, `"key":"n","value":-2`, `"key":"short","value":1,"expire_at":1`} {
		if !strings.Contains(out, want) {
			t.Errorf("dump lacks %s:\n%s", want, out)
		}
	}
	if strings.Contains(out, `"key":"player"`) {
		t.Errorf("deleted key still dumped:\n%s", out)
	}
}

// TestKVEmptyNamespaceWarning checks that every kv verb warns when the
// namespace asked for has no keys, and lists the namespaces the store has.
func TestKVEmptyNamespaceWarning(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	dump := `{"namespace":"game","key":"a","value":1,"expire_at":null}` + "\n" +
		`{"namespace":"scores","key":"b","value":2,"expire_at":null}` + "\n"
	if code, _, stderr := runCLI(t, dump, "kv", "load", "-q", dir); code != 0 {
		t.Fatalf("load: exit %d: %s", code, stderr)
	}
	const warning = `flowrun: warning: namespace "gmae" has no keys (namespaces in the store: game, scores)`
	for _, args := range [][]string{
		{"get", dir, "a"}, {"scan", dir}, {"count", dir}, {"keys", dir}, {"delete", dir, "a"},
		{"put", dir, "a", "1"}, // creates namespace gmae
	} {
		code, _, stderr := runCLI(t, "", append(append([]string{"kv"}, args...), "--namespace", "gmae")...)
		if code != 0 || !strings.Contains(stderr, warning) {
			t.Errorf("kv %v: exit %d, stderr %q; want the warning %q", args, code, stderr, warning)
		}
	}
	code, _, stderr := runCLI(t, "", "kv", "increment", dir, "a", "--namespace", "other")
	if want := `namespace "other" has no keys (namespaces in the store: game, gmae, scores)`; code != 0 || !strings.Contains(stderr, want) {
		t.Errorf("kv increment: exit %d, stderr %q; want %q", code, stderr, want)
	}
	// The namespace the put above created is no longer empty.
	if _, _, stderr := runCLI(t, "", "kv", "get", dir, "a", "--namespace", "gmae"); strings.Contains(stderr, "warning") {
		t.Errorf("warning for a namespace with keys: %s", stderr)
	}
}

func TestVersion(t *testing.T) {
	code, out, stderr := runCLI(t, "", "--version")
	if code != 0 || !strings.HasPrefix(out, "flowrun ") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}

// TestReplayPrintsMetricsURL checks that replay, whose start line is only
// logged at debug, still says where --metrics-addr 127.0.0.1:0 serves.
func TestReplayPrintsMetricsURL(t *testing.T) {
	dir := copyExample(t, "kv")
	code, _, stderr := runCLI(t, "", "replay", "--metrics-addr", "127.0.0.1:0", filepath.Join(dir, "flow.yaml"), filepath.Join(dir, "events.jsonl"))
	if code != 0 || !regexp.MustCompile(`metrics=http://127\.0\.0\.1:[1-9][0-9]*/metrics`).MatchString(stderr) {
		t.Fatalf("exit %d, stderr %q: want the metrics URL", code, stderr)
	}
}
