package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrapeMetrics fetches url and returns its samples by name{labels}.
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// TestRunServesMetrics runs a real flow with --metrics-addr on a free
// loopback port, scrapes it over HTTP while events flow, checks that the
// offline tools refuse the store the flow holds, and that the logs are JSON
// with one start and one stop line.
func TestRunServesMetrics(t *testing.T) {
	dir := copyExample(t, "kv")
	inR, inW := io.Pipe()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- execute(env{stdin: inR, stdout: &out, stderr: &errOut},
			[]string{"--log-format", "json", "run", "--metrics-addr", "127.0.0.1:0", filepath.Join(dir, "flow.yaml")})
	}()
	var url string
	waitFor(t, "the start line", func() bool {
		for _, line := range strings.Split(errOut.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "flow started" {
				url, _ = rec["metrics"].(string)
				return true
			}
		}
		return false
	})
	if !strings.HasPrefix(url, "http://127.0.0.1:") || strings.HasSuffix(url, ":0/metrics") {
		t.Fatalf("start line names metrics URL %q", url)
	}
	t.Logf("metrics at %s", url)

	send := func(lines string, wantOut int) {
		t.Helper()
		if _, err := io.WriteString(inW, lines); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "results", func() bool { return strings.Count(out.String(), "\n") >= wantOut })
	}
	puts := `total{flow="kv-example",node="store",port="in"}`
	ok := `flowrun_kv_commands_total{namespace="kv-example",op="put",outcome="ok"}`
	failed := `flowrun_kv_commands_total{namespace="kv-example",op="get",outcome="error"}`
	before := scrapeMetrics(t, url)
	if before["flowrun_node_events_"+puts] != 0 || before[ok] != 0 {
		t.Fatalf("counts before any event: %v %v", before["flowrun_node_events_"+puts], before[ok])
	}
	send(`{"data":1,"meta":{"kv":{"put":"a"}}}`+"\n"+`{"data":2,"meta":{"kv":{"put":"b"}}}`+"\n", 2)
	mid := scrapeMetrics(t, url)
	if mid["flowrun_node_events_"+puts] != 2 || mid[ok] != 2 {
		t.Fatalf("after 2 puts: store in %v, put ok %v", mid["flowrun_node_events_"+puts], mid[ok])
	}
	send(`{"data":3,"meta":{"kv":{"put":"c"}}}`+"\n"+`{"meta":{"kv":{"get":""}}}`+"\n", 4)
	after := scrapeMetrics(t, url)
	if after["flowrun_node_events_"+puts] != 4 || after[ok] != 3 || after[failed] != 1 {
		t.Fatalf("after 4 events: store in %v, put ok %v, get error %v", after["flowrun_node_events_"+puts], after[ok], after[failed])
	}
	var commits float64
	for k, v := range after {
		if strings.HasPrefix(k, "flowrun_kv_commit_group_transactions_count{") {
			commits += v
		}
	}
	if commits < 2 {
		t.Fatalf("commit groups counted: %v", commits)
	}
	if _, ok := after[`flowrun_node_queue_batches{flow="kv-example",node="store"}`]; !ok {
		t.Fatal("queue depth missing")
	}

	// The running flow holds the store: offline tools refuse it clearly.
	code, _, stderr := runCLI(t, "", "kv", "dump", filepath.Join(dir, "state"))
	if code != 1 || !strings.Contains(stderr, "in use") {
		t.Fatalf("kv dump on a running flow's store: exit %d, %q", code, stderr)
	}

	inW.Close()
	if code := <-done; code != 0 {
		t.Fatalf("run exit %d: %s", code, errOut.String())
	}
	var stops int
	for _, line := range strings.Split(strings.TrimSpace(errOut.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if rec["msg"] == "flow stopped" {
			stops++
			if rec["events_in"] != float64(4) || rec["errors"] != float64(1) {
				t.Errorf("stop line totals: %v", rec)
			}
		}
	}
	if stops != 1 {
		t.Fatalf("%d stop lines:\n%s", stops, errOut.String())
	}
	if _, err := http.Get(url); err == nil {
		t.Fatal("metrics still served after the flow stopped")
	}
}

func TestUnlinkedErrorFloodIsSummarised(t *testing.T) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(`name: flood
connectors:
  input: { type: stdin }
  store: { type: kv, dir: state }
links:
  - input/out -> store/in
`), 0o644); err != nil {
		t.Fatal(err)
	}
	input := strings.Repeat(`{"data":null,"meta":{"kv":{"put":"k"}}}`+"\n", 500)
	code, _, stderr := runCLI(t, input, "run", flow)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	// start, 10 single errors, the "counted" notice, at least one count,
	// stop: far fewer than 500.
	if len(lines) > 20 || strings.Count(stderr, "null value") < 10 || !strings.Contains(stderr, "errors_dropped=500") {
		t.Fatalf("%d log lines for 500 errors:\n%s", len(lines), stderr)
	}
	code, _, stderr = runCLI(t, input[:40], "--log-level", "error", "run", flow)
	if code != 0 || strings.Contains(stderr, "flow started") || !strings.Contains(stderr, "null value") {
		t.Fatalf("--log-level error: exit %d, %q", code, stderr)
	}
}

func TestKVToolsCLI(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	// Canonical order: namespaces by length then bytes, keys by bytes.
	dump := `{"namespace":"b","key":"x","value":{"a":[1,2]},"expire_at":null}
{"namespace":"b","key":"y","value":"ttl","expire_at":4102444800000}
{"namespace":"aa","key":"k","value":7,"expire_at":null}
{"namespace":"zz","key":"日","value":true,"expire_at":4102444800000}
`
	code, _, stderr := runCLI(t, dump, "kv", "load", src)
	if code != 0 || !strings.Contains(stderr, "loaded 4 keys") {
		t.Fatalf("load: exit %d, %q", code, stderr)
	}
	code, first, stderr := runCLI(t, "", "kv", "dump", src)
	if code != 0 || first != dump || !strings.Contains(stderr, "dumped 4 keys") {
		t.Fatalf("dump: exit %d, %q\n%s", code, stderr, first)
	}
	file := filepath.Join(base, "backup.jsonl")
	if err := os.WriteFile(file, []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr = runCLI(t, "", "kv", "load", "-q", dst, file); code != 0 || stderr != "" {
		t.Fatalf("load -q from file: exit %d, %q", code, stderr)
	}
	if code, second, _ := runCLI(t, "", "kv", "dump", "-q", dst); code != 0 || second != first {
		t.Fatalf("dump -> load -> dump differs:\n%s\n---\n%s", first, second)
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"get", []string{"kv", "get", dst, "x", "--namespace", "b"}, 0, "{\"a\":[1,2]}\n", ""},
		{"get absent", []string{"kv", "get", dst, "nope", "--namespace", "b"}, 0, "null\n", ""},
		{"get json", []string{"kv", "get", dst, "x", "--namespace", "b", "--json"}, 0,
			`{"data":{"a":[1,2]},"meta":{"kv":{"op":"get","key":"x","found":true}}}` + "\n", ""},
		{"scan", []string{"kv", "scan", dst, "--namespace", "b"}, 0,
			`{"key":"x","value":{"a":[1,2]}}` + "\n" + `{"key":"y","value":"ttl"}` + "\n", ""},
		{"scan end", []string{"kv", "scan", dst, "--namespace", "b", "--end", "y"}, 0, `{"key":"x","value":{"a":[1,2]}}` + "\n", ""},
		{"count", []string{"kv", "count", dst, "--namespace", "b"}, 0, "2\n", ""},
		{"keys page", []string{"kv", "keys", dst, "--namespace", "b", "--limit", "1"}, 0, `["x"]` + "\n", `--after "x"`},
		{"keys after", []string{"kv", "keys", dst, "--namespace", "b", "--after", "x"}, 0, `["y"]` + "\n", ""},
		{"no namespace", []string{"kv", "get", dst, "x"}, 2, "", "--namespace is required"},
		{"missing store", []string{"kv", "count", filepath.Join(base, "none"), "--namespace", "b"}, 1, "", "no store"},
		{"failed command", []string{"kv", "scan", dst, "--namespace", "b", "--limit", "-1"}, 1, "", "limit"},
		{"no subcommand", []string{"kv"}, 2, "", "subcommand"},
		{"bad group", []string{"kv", "load", dst, "--group", "0"}, 2, "", "--group must be positive"},
		{"former name --batch", []string{"kv", "load", dst, "--batch", "0"}, 2, "", "--batch is the former name of --group\nflowrun: --group must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, "", tt.args...)
			if code != tt.code || stdout != tt.stdout || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want it to contain %q)",
					code, tt.code, stdout, tt.stdout, stderr, tt.stderr)
			}
		})
	}

	bad := `{"namespace":"b","key":"z","value":1}` + "\n" + `{"namespace":"b","key":"w"}` + "\n"
	code, _, stderr = runCLI(t, bad, "kv", "load", dst)
	// Standard input that can seek (a file) is checked whole first.
	if code != 1 || !strings.Contains(stderr, "stdin: line 2") || !strings.Contains(stderr, "nothing was stored") {
		t.Fatalf("load of a bad line: exit %d, %q", code, stderr)
	}
}

func TestPlainProgressLines(t *testing.T) {
	var buf syncBuffer
	var n atomic.Int64
	n.Store(3 << 20)
	e := env{stderr: &buf, progressEvery: 5 * time.Millisecond}
	stop := startProgress(e, false, progress{what: "load", size: 6 << 20, bytes: &n, items: func() uint64 { return 42 }})
	waitFor(t, "a progress line", func() bool { return strings.Contains(buf.String(), "\n") })
	stop()
	line := strings.SplitN(buf.String(), "\n", 2)[0]
	if !strings.HasPrefix(line, "load: 3.0 MiB read (50%), 42 events, ") || !strings.HasSuffix(line, "MiB/s") {
		t.Fatalf("progress line %q", line)
	}
	var quiet bytes.Buffer
	stop = startProgress(env{stderr: &quiet, progressEvery: time.Millisecond}, true, progress{bytes: &n})
	time.Sleep(10 * time.Millisecond)
	stop()
	if quiet.Len() != 0 {
		t.Fatalf("quiet progress wrote %q", quiet.String())
	}
}
