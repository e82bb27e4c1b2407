package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runCLI runs flowrun in-process with the given stdin and returns its exit
// code, stdout and stderr.
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := execute(env{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errOut}, args)
	return code, out.String(), errOut.String()
}

// copyExample copies examples/NAME into a temporary directory so that its
// store starts empty and the repository stays clean.
func copyExample(t *testing.T, name string) string {
	t.Helper()
	src := filepath.Join("..", "..", "examples", name)
	dst := filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(filepath.Join(dst, "state"))
	return dst
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReplayKVExample(t *testing.T) {
	dir := copyExample(t, "kv")
	code, out, stderr := runCLI(t, "", "replay", filepath.Join(dir, "flow.yaml"), filepath.Join(dir, "events.jsonl"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := readFile(t, filepath.Join(dir, "expected.jsonl")); out != want {
		t.Fatalf("output differs from examples/kv/expected.jsonl:\n got:\n%s\nwant:\n%s", out, want)
	}
	// The summary counts what reached each sink: the error is not also
	// counted as output.
	if !strings.Contains(stderr, "replayed 11 events") || !strings.Contains(stderr, "; reached results: 10, errors: 1; 0 malformed lines") {
		t.Fatalf("summary missing or wrong: %q", stderr)
	}

	// The store survives: a later replay reads what the first one wrote.
	gets := `{"data":null,"meta":{"kv":{"get":"snot"},"correlation":"a"}}
{"data":null,"meta":{"kv":{"get":"heinz"},"correlation":"b"}}
`
	code, out, stderr = runCLI(t, gets, "replay", "-q", filepath.Join(dir, "flow.yaml"), "-")
	if code != 0 {
		t.Fatalf("second replay: exit %d: %s", code, stderr)
	}
	want := `{"sink":"results","data":"velociraptor","meta":{"kv":{"op":"get","key":"snot","found":true},"correlation":"a"}}
{"sink":"results","data":null,"meta":{"kv":{"op":"get","key":"heinz","found":false},"correlation":"b"}}
`
	if out != want {
		t.Fatalf("second replay:\n got: %s\nwant: %s", out, want)
	}
}

// TestReplayMalformedLines checks that replay treats a malformed input
// line as run does (an error event on the source's err port, reaching its
// sink, or logged when err is not linked), and that --strict stops with the
// error printed once.
func TestReplayMalformedLines(t *testing.T) {
	dir := copyExample(t, "kv")
	flow := filepath.Join(dir, "flow.yaml")
	input := `{"data":"v","meta":{"kv":{"put":"k"}}}
{"data": oops
{"data":null,"meta":{"kv":{"get":"k"}}}
`
	code, out, stderr := runCLI(t, input, "replay", flow, "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], `{"sink":"errors","data":"{\"data\": oops","meta":{"error":"stdin: line 2: invalid JSON`) ||
		!strings.Contains(lines[1], `"line":2`) || !strings.Contains(lines[2], `"op":"get","key":"k","found":true`) {
		t.Fatalf("malformed line not passed to the errors sink in input order:\n%s", out)
	}
	if !strings.Contains(stderr, "reached results: 2, errors: 1; 1 malformed line\n") {
		t.Errorf("summary: %q", stderr)
	}
	// run gives the same error event to the same sink.
	_ = os.RemoveAll(filepath.Join(dir, "state"))
	code, runOut, stderr := runCLI(t, input, "run", flow)
	if code != 0 || !strings.Contains(runOut, `{"data":"{\"data\": oops","meta":{"error":"input: line 2: invalid JSON`) {
		t.Fatalf("run: exit %d, stdout:\n%s\nstderr: %s", code, runOut, stderr)
	}

	// err not linked: logged, as run logs it.
	unlinked := filepath.Join(dir, "unlinked.yaml")
	text := strings.Replace(readFile(t, flow), "  - input/err -> errors/in\n", "", 1)
	if err := os.WriteFile(unlinked, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCLI(t, input, "replay", "-q", unlinked, "-")
	if code != 0 || strings.Count(out, "\n") != 2 || !strings.Contains(stderr, "event on unlinked err port") || !strings.Contains(stderr, "line 2") {
		t.Fatalf("unlinked err: exit %d, stdout:\n%s\nstderr: %s", code, out, stderr)
	}

	code, _, stderr = runCLI(t, input, "replay", "--strict", flow, "-")
	if code != 1 || strings.Count(stderr, "line 2") != 1 {
		t.Fatalf("--strict: exit %d, want 1 and the error printed once; stderr:\n%s", code, stderr)
	}
}

// TestReplaySummaryPerSink checks that the summary counts what reached each
// sink: the leaderboard's lost cas races are retried, so no error reaches
// its errors sink.
func TestReplaySummaryPerSink(t *testing.T) {
	dir := copyExample(t, "leaderboard")
	code, _, stderr := runCLI(t, "", "replay", filepath.Join(dir, "flow.yaml"), filepath.Join(dir, "events.jsonl"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !regexp.MustCompile(`; reached updates: [34], errors: 0; 0 malformed lines\n`).MatchString(stderr) {
		t.Fatalf("summary: %q", stderr)
	}
}

func TestExitCodes(t *testing.T) {
	dir := copyExample(t, "kv")
	flow := filepath.Join(dir, "flow.yaml")
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"no args", []string{"replay"}, 2, "accepts 2 arg"},
		{"unknown flag", []string{"replay", "--nope", flow, "x"}, 2, "unknown flag"},
		{"unknown verb", []string{"frobnicate"}, 2, "unknown command"},
		{"missing input", []string{"replay", flow, filepath.Join(dir, "missing.jsonl")}, 1, "no such file"},
		{"missing flow", []string{"run", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{"help", []string{"replay", "--help"}, 0, ""},
		{"validate ok", []string{"validate", flow}, 0, "ok"},
		{"validate broken", []string{"validate", "../../flows/testdata/broken/unknown_option.yaml"}, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, "", tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d), stderr %q (want it to contain %q)", code, tt.code, stderr, tt.stderr)
			}
		})
	}
}

func TestRunReadsStdinToEnd(t *testing.T) {
	dir := copyExample(t, "kv")
	code, out, stderr := runCLI(t, readFile(t, filepath.Join(dir, "events.jsonl")), "run", filepath.Join(dir, "flow.yaml"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// run writes events as {"data","meta"} lines: one per result or error.
	if n := strings.Count(out, "\n"); n != 11 {
		t.Fatalf("run printed %d lines, want 11:\n%s", n, out)
	}
	if !strings.Contains(out, `"error":"cas \"heinz\"`) {
		t.Fatalf("cas mismatch missing from output:\n%s", out)
	}
}

// TestRunDrainsOnSIGTERM runs the real binary, sends SIGTERM while its
// stdin is still open, and checks that it exits 0 after handling every
// line it had been given.
func TestRunDrainsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary")
	}
	bin := buildFlowrun(t)
	dir := copyExample(t, "kv")
	cmd := exec.Command(bin, "run", filepath.Join(dir, "flow.yaml"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if _, err := stdin.Write([]byte(`{"data":"v1","meta":{"kv":{"put":"a"},"correlation":1}}` + "\n" +
		`{"data":"v2","meta":{"kv":{"put":"b"},"correlation":2}}` + "\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(out.String(), "\n") < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("flowrun run after SIGTERM: %v\nstderr: %s", err, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("flowrun did not stop after SIGTERM; stderr: %s", errOut.String())
	}
	if strings.Count(out.String(), "\n") != 2 {
		t.Fatalf("output: %q", out.String())
	}

	// A second process sees both writes.
	get := exec.Command(bin, "replay", "-q", filepath.Join(dir, "flow.yaml"), "-")
	get.Stdin = strings.NewReader(`{"meta":{"kv":{"scan":""}}}` + "\n")
	res, err := get.Output()
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if !strings.Contains(string(res), `"data":"v1"`) || !strings.Contains(string(res), `"data":"v2"`) {
		t.Fatalf("second process sees: %s", res)
	}
}

// syncBuffer is a bytes.Buffer safe to read while a child process writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRunCPUProfile checks that run --cpuprofile writes a CPU profile
// (gzipped protobuf, as runtime/pprof writes it) once the flow stops, and
// that a profile it cannot create fails the run before it starts.
func TestRunCPUProfile(t *testing.T) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(badInputFlow), 0o644); err != nil {
		t.Fatal(err)
	}
	testRecording(t, "cpu profile", func(path string) (int, string) {
		code, _, stderr := runCLI(t, `{"data":1,"meta":{"kv":{"put":"a"}}}`+"\n", "run", "--cpuprofile", path, flow)
		return code, stderr
	}, func(b []byte) bool { return len(b) >= 2 && b[0] == 0x1f && b[1] == 0x8b })
}

// testRecording runs a command writing a recording (a profile, a trace)
// to a path, by run, twice: to a file it can create, which must then hold
// what valid accepts, and to one in a missing directory, which must fail
// the command with exit 1 and stderr naming what.
func testRecording(t *testing.T, what string, run func(path string) (code int, stderr string), valid func([]byte) bool) {
	t.Helper()
	dir := t.TempDir()
	tests := []struct {
		name     string
		path     string
		wantCode int
	}{
		{name: "written", path: filepath.Join(dir, "out"), wantCode: 0},
		{name: "cannot create", path: filepath.Join(dir, "missing", "out"), wantCode: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stderr := run(tt.path)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d: %s", code, tt.wantCode, stderr)
			}
			b, err := os.ReadFile(tt.path)
			if tt.wantCode != 0 {
				if err == nil || !strings.Contains(stderr, what) {
					t.Fatalf("%s %s exists (%v) or stderr does not say why: %s", what, tt.path, err, stderr)
				}
				return
			}
			if err != nil || !valid(b) {
				t.Fatalf("%s %s: %d bytes, %v: not a %s (%q)", what, tt.path, len(b), err, what, b[:min(len(b), 16)])
			}
		})
	}
}
