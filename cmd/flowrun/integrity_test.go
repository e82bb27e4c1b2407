package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

// integrityFlow: stdin -> kv (namespace n, store dir state beside the flow
// file) -> stdout, failures too.
const integrityFlow = `name: integrity
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state, namespace: n }
  results: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> results/in
  - store/out -> results/in
  - store/err -> results/in
`

// runBin runs the flowrun binary with stdin and returns its exit code,
// stdout and stderr.
func runBin(t *testing.T, bin, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// TestStoreIntegrityThroughBinary runs the flowrun binary against damaged
// and interrupted stores and checks what the user sees and the exit codes.
func TestStoreIntegrityThroughBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary")
	}
	bin := buildFlowrun(t)
	t.Run("damaged WAL", func(t *testing.T) { testDamagedWAL(t, bin) })
	t.Run("dump of a damaged sstable", func(t *testing.T) { testDumpDamagedSSTable(t, bin) })
	t.Run("killed load", func(t *testing.T) { testKilledLoad(t, bin) })
	t.Run("load limits", func(t *testing.T) { testLoadLimits(t, bin) })
}

// testDamagedWAL: acknowledged puts, one byte of the last WAL flipped, and
// the next run must refuse the store and say how to proceed.
func testDamagedWAL(t *testing.T, bin string) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(integrityFlow), 0o644); err != nil {
		t.Fatal(err)
	}
	// Each put is acknowledged before the next is sent: one commit group,
	// one WAL record each.
	c := startChild(t, bin, flow)
	t.Cleanup(c.kill) // on an early failure
	for i := range 20 {
		fmt.Fprintf(c.stdin, `{"data":"value-%04d","meta":{"kv":{"put":"k%04d"}}}`+"\n", i, i)
		select {
		case line := <-c.lines:
			if gjson.Get(line, "meta.error").Exists() {
				t.Fatalf("put: %s", line)
			}
		case <-time.After(time.Minute):
			t.Fatalf("no result for put %d; stderr:\n%s", i, c.stderr.String())
		}
	}
	_ = c.stdin.Close()
	for range c.lines {
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("first run: %v\n%s", err, c.stderr.String())
	}

	state := filepath.Join(dir, "state")
	logs, _ := filepath.Glob(filepath.Join(state, "*.log"))
	slices.Sort(logs)
	b, err := os.ReadFile(logs[len(logs)-1])
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("value-0005"))
	if i < 0 {
		t.Fatal("put 5 not found in the last WAL")
	}
	b[i+9] ^= 1
	if err := os.WriteFile(logs[len(logs)-1], b, 0o644); err != nil {
		t.Fatal(err)
	}

	get := `{"data":null,"meta":{"kv":{"get":"k0019"}}}` + "\n"
	code, stdout, stderr := runBin(t, bin, get, "run", flow)
	t.Logf("run after the damage: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	if code != 1 || stdout != "" {
		t.Fatalf("run of a store with a damaged WAL: exit %d, stdout %q; want exit 1 and nothing on stdout", code, stdout)
	}
	for _, want := range []string{"write-ahead log", "bytes", "flowrun kv check --accept-wal-loss " + state} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not mention %q", want)
		}
	}
	if code, _, stderr := runBin(t, bin, "", "kv", "get", state, "k0019", "--namespace", "n"); code != 1 || !strings.Contains(stderr, "write-ahead log") {
		t.Fatalf("kv get of the damaged store: exit %d, %s", code, stderr)
	}

	// The way to proceed: accept the loss once, then the flow runs.
	code, _, stderr = runBin(t, bin, "", "kv", "check", "--accept-wal-loss", state)
	t.Logf("kv check --accept-wal-loss: exit %d\nstderr: %s", code, stderr)
	if code != 0 || !strings.Contains(stderr, "bytes_lost=") || !strings.Contains(stderr, "lost-wal") {
		t.Fatalf("kv check --accept-wal-loss: exit %d", code)
	}
	code, stdout, stderr = runBin(t, bin, `{"data":null,"meta":{"kv":{"get":"k0004"}}}`+"\n", "run", flow)
	if code != 0 || gjson.Get(stdout, "data").String() != "value-0004" {
		t.Fatalf("run after accepting the loss: exit %d, %q\n%s", code, stdout, stderr)
	}
}

// fillStore loads n records of about 200 bytes into the store in dir
// through kv load, then opens it again so that they are flushed into
// sstables.
func fillStore(t *testing.T, bin, dir string, n int) string {
	t.Helper()
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `{"namespace":"n","key":"k%06d","value":"%s","expire_at":null}`+"\n", i, strings.Repeat("x", 200))
	}
	if code, _, stderr := runBin(t, bin, in.String(), "kv", "load", "-q", dir); code != 0 {
		t.Fatalf("kv load: exit %d: %s", code, stderr)
	}
	if code, _, stderr := runBin(t, bin, "", "kv", "count", dir, "--namespace", "n"); code != 0 {
		t.Fatalf("kv count: exit %d: %s", code, stderr)
	}
	return in.String()
}

func testDumpDamagedSSTable(t *testing.T, bin string) {
	dir := filepath.Join(t.TempDir(), "state")
	fillStore(t, bin, dir, 20000)
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) == 0 {
		t.Fatal("no sstable")
	}
	size := func(p string) int64 { st, _ := os.Stat(p); return st.Size() }
	slices.SortFunc(ssts, func(a, b string) int { return int(size(b) - size(a)) })
	b, _ := os.ReadFile(ssts[0])
	for i := len(b) / 2; i < len(b)/2+16; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(ssts[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runBin(t, bin, "", "kv", "dump", dir)
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	last := lines[len(lines)-1]
	t.Logf("kv dump: exit %d, %d lines on stdout, the last %.300s\nstderr: %.300s", code, len(lines), last, stderr)
	if code != 1 {
		t.Fatalf("kv dump of a damaged store: exit %d, want 1", code)
	}
	if stdout != "" && !gjson.Get(last, "dump_incomplete").Exists() {
		t.Fatalf("kv dump wrote %d lines without marking the dump incomplete", len(lines))
	}
	// A read of the damaged block fails; reads elsewhere work. The dump
	// stopped in the chunk of keys after the last one it printed.
	next := fmt.Sprintf("k%06d", len(lines)-1)
	if code, _, stderr := runBin(t, bin, "", "kv", "scan", dir, next, "--limit", "1000", "--namespace", "n"); code != 1 || !strings.Contains(stderr, "checksum") {
		t.Fatalf("kv scan from %s: exit %d, %.300s", next, code, stderr)
	}
	if code, stdout, stderr := runBin(t, bin, "", "kv", "get", dir, "k000001", "--namespace", "n"); code != 0 || !strings.Contains(stdout, "xxx") {
		t.Fatalf("kv get k000001: exit %d, %.300s", code, stderr)
	}
	// load refuses the incomplete dump, and changes nothing.
	file := filepath.Join(t.TempDir(), "dump.jsonl")
	if err := os.WriteFile(file, []byte(stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	if code, _, stderr := runBin(t, bin, "", "kv", "load", dst, file); code != 1 || !strings.Contains(stderr, "dump is incomplete") {
		t.Fatalf("kv load of the incomplete dump: exit %d: %s", code, stderr)
	}
	if code, stdout, _ := runBin(t, bin, "", "kv", "count", dst, "--namespace", "n"); code != 0 || stdout != "0\n" {
		t.Fatalf("the refused load stored records: %q", stdout)
	}
}

// testKilledLoad SIGKILLs kv load half way through its input: every kv
// verb and a flow opening the store must then report the partial load.
func testKilledLoad(t *testing.T, bin string) {
	dir := filepath.Join(t.TempDir(), "state")
	var in strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&in, `{"namespace":"n","key":"k%06d","value":%d}`+"\n", i, i)
	}
	full := in.String()
	cmd := exec.Command(bin, "kv", "load", "--group", "100", dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })                   // on an early failure
	go func() { _, _ = stdin.Write([]byte(full[:len(full)/2])) }() // and never the rest
	// Wait until commits reach the log, then kill.
	deadline := time.Now().Add(time.Minute)
	for {
		logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
		var n int64
		for _, l := range logs {
			if st, err := os.Stat(l); err == nil {
				n += st.Size()
			}
		}
		if n > 100<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kv load wrote nothing within a minute; stderr %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	code, stdout, errOut := runBin(t, bin, "", "kv", "count", dir, "--namespace", "n")
	t.Logf("kv count after the killed load: exit %d, %s; stderr %s", code, strings.TrimSpace(stdout), errOut)
	if code != 0 || !strings.Contains(errOut, "partially loaded") || !strings.Contains(errOut, "stdin") {
		t.Fatalf("kv count did not warn of the partial load")
	}
	if code, _, errOut := runBin(t, bin, "", "kv", "check", dir); code != 1 || !strings.Contains(errOut, "partially loaded") {
		t.Fatalf("kv check after the killed load: exit %d, %s", code, errOut)
	}
	flowDir := filepath.Dir(dir)
	flow := filepath.Join(flowDir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(integrityFlow), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runBin(t, bin, "", "run", flow); code != 0 || !strings.Contains(errOut, "partially loaded") {
		t.Fatalf("a flow opening the store: exit %d, stderr %s", code, errOut)
	}
	// Loading the same input again completes it and clears the mark.
	if code, _, errOut := runBin(t, bin, full, "kv", "load", "-q", dir); code != 0 {
		t.Fatalf("reload: exit %d, %s", code, errOut)
	}
	if code, _, errOut := runBin(t, bin, "", "kv", "check", dir); code != 0 {
		t.Fatalf("kv check after the reload: exit %d, %s", code, errOut)
	}
}

// testLoadLimits: a record a put would refuse is refused by kv load with
// the command's error, and the store is left as it was.
func testLoadLimits(t *testing.T, bin string) {
	dir := filepath.Join(t.TempDir(), "state")
	fillStore(t, bin, dir, 10)
	_, before, _ := runBin(t, bin, "", "kv", "dump", "-q", dir)
	longKey := strings.Repeat("k", 300)
	_, _, getErr := runBin(t, bin, "", "kv", "get", dir, longKey, "--namespace", "n")
	tests := []struct {
		name, line, want string
	}{
		{"key of 300 characters", fmt.Sprintf(`{"namespace":"n","key":%q,"value":1}`, longKey),
			"key is 300 characters, limit is 255: key too long"},
		{"value of 6 MiB", `{"namespace":"n","key":"big","value":"` + strings.Repeat("v", 6<<20) + `"}`,
			"limit is 4 MiB: value too large"},
	}
	if !strings.Contains(getErr, tests[0].want) {
		t.Fatalf("kv get of the long key says %q, not %q", getErr, tests[0].want)
	}
	for _, tc := range tests {
		// From a file, every line is checked before anything is stored.
		file := filepath.Join(t.TempDir(), "in.jsonl")
		if err := os.WriteFile(file, []byte(`{"namespace":"n","key":"fine","value":1}`+"\n"+tc.line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, stderr := runBin(t, bin, "", "kv", "load", dir, file)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Fatalf("%s: kv load exit %d, stderr %.300s; want 1 and %q", tc.name, code, stderr, tc.want)
		}
		if _, after, _ := runBin(t, bin, "", "kv", "dump", "-q", dir); after != before {
			t.Fatalf("%s: the refused load changed the store", tc.name)
		}
	}
}
