package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/proctest"
)

// Environment variables steering TestCrashRecovery, so a failing run can be
// reproduced exactly and a longer one run on demand.
const (
	crashSeedEnv  = "FLOWRUN_CRASH_SEED"
	crashKillsEnv = "FLOWRUN_CRASH_KILLS"
)

// crashFlow is the flow under test: stdin -> kv (sync as given) -> stdout, with
// every failure on stdout too so the parent sees every outcome.
const crashFlow = `name: crash
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state, sync: %t, max_get_all: 1000000 }
  results: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> results/in
  - store/out -> results/in
  - store/err -> results/in
`

// flowrunBuild is the flowrun binary the tests run as a process, built
// once per test binary.
var flowrunBuild proctest.SharedBuild

func TestMain(m *testing.M) {
	code := m.Run()
	flowrunBuild.Remove()
	os.Exit(code)
}

// buildFlowrun returns the path of the flowrun binary, building it on the
// first call.
func buildFlowrun(t *testing.T) string {
	t.Helper()
	return flowrunBuild.Flowrun(t)
}

// child is one running `flowrun run` process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	lines  chan string   // complete stdout lines, closed at EOF
	done   chan struct{} // closed when stdout reached EOF
}

func startChild(t *testing.T, bin, flow string) *child {
	t.Helper()
	cmd := exec.Command(bin, "run", flow)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, stderr: &syncBuffer{}, lines: make(chan string, 1<<16), done: make(chan struct{})}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		defer close(c.lines)
		br := bufio.NewReaderSize(stdout, 1<<20)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				// A line cut short by the kill carries no result: only
				// complete lines count as received.
				return
			}
			c.lines <- line
		}
	}()
	return c
}

// kill SIGKILLs the child and waits for it to be gone.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.stdin.Close()
	<-c.done
	_ = c.cmd.Wait()
}

// crashModel is what the parent knows about the store: what it sent and
// which results it received.
type crashModel struct {
	mu sync.Mutex
	// sent maps a correlation to its command; a put of pN stores N, an
	// increment of iN adds 1 to iN, an increment of ctr adds 1 to ctr.
	sent map[int]string
	// ackedPut and ackedInc hold the keys whose put / increment result was
	// received.
	ackedPut map[string]bool
	ackedInc map[string]bool
	// ctrSent and ctrAcked count increments of the shared counter;
	// ctrValues holds every value an acknowledged one returned.
	ctrSent, ctrAcked int
	ctrValues         map[int64]bool
	ctrMax            int64
	// seen holds every key a check found: once read back after a restart,
	// a write must stay.
	seen     map[string]bool
	next     int
	failures []string
	// lossAllowed (sync off) turns a lost acknowledged write from a
	// failure into a count: lost holds the keys concerned.
	lossAllowed bool
	lost        map[string]bool
}

func (m *crashModel) failf(format string, args ...any) {
	m.failures = append(m.failures, fmt.Sprintf(format, args...))
}

// command returns the next command line and records it as sent.
func (m *crashModel) command(rng *rand.Rand) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next++
	n := m.next
	switch r := rng.Intn(100); {
	case r < 45:
		m.sent[n] = "p" + strconv.Itoa(n)
		return fmt.Sprintf(`{"data":%d,"meta":{"kv":{"put":"p%d"},"correlation":%d}}`+"\n", n, n, n)
	case r < 70:
		m.sent[n] = "i" + strconv.Itoa(n)
		return fmt.Sprintf(`{"data":null,"meta":{"kv":{"increment":"i%d"},"correlation":%d}}`+"\n", n, n)
	default:
		m.sent[n] = "ctr"
		m.ctrSent++
		return fmt.Sprintf(`{"data":null,"meta":{"kv":{"increment":"ctr","by":1},"correlation":%d}}`+"\n", n)
	}
}

// result records one workload result line.
func (m *crashModel) result(line string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	meta := gjson.Get(line, "meta")
	if e := meta.Get("error"); e.Exists() {
		m.failf("command failed: %s", strings.TrimSpace(line))
		return
	}
	corr := meta.Get("correlation")
	if corr.Type != gjson.Number {
		m.failf("result without a numeric correlation: %s", strings.TrimSpace(line))
		return
	}
	n := int(corr.Int())
	key, ok := m.sent[n]
	if !ok {
		m.failf("result for a command never sent: %s", strings.TrimSpace(line))
		return
	}
	data := gjson.Get(line, "data")
	switch {
	case key == "ctr":
		v := data.Int()
		if m.ctrValues[v] && !m.lossAllowed {
			m.failf("two acknowledged increments of ctr both returned %d", v)
		}
		m.ctrValues[v] = true
		m.ctrAcked++
		m.ctrMax = max(m.ctrMax, v)
	case key[0] == 'p':
		if data.Int() != int64(n) {
			m.failf("put %s returned %s", key, data.Raw)
		}
		m.ackedPut[key] = true
	case key[0] == 'i':
		if data.Raw != "1" {
			m.failf("first increment of %s returned %s, want 1", key, data.Raw)
		}
		m.ackedInc[key] = true
	}
}

// checkCommands are sent first after every restart; their correlations are
// strings so they never mix with the workload's.
func checkCommands(epoch int) string {
	return fmt.Sprintf(`{"data":null,"meta":{"kv":{"get_all":"p"},"correlation":"check-%[1]d-p"}}
{"data":null,"meta":{"kv":{"get_all":"i"},"correlation":"check-%[1]d-i"}}
{"data":null,"meta":{"kv":{"get":"ctr","default":0},"correlation":"check-%[1]d-ctr"}}
`, epoch)
}

// verify checks the store contents read back after a restart against the
// model and returns the number of acknowledged writes it checked.
func (m *crashModel) verify(epoch int, puts, incs gjson.Result, ctr int64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	checked := 0
	// One pass over each object: looking keys up one by one in a large
	// JSON object would be quadratic.
	stored := map[string]gjson.Result{}
	for _, obj := range []gjson.Result{puts, incs} {
		obj.ForEach(func(k, v gjson.Result) bool {
			stored[k.String()] = v
			return true
		})
	}
	for key := range m.ackedPut {
		want, _ := strconv.Atoi(key[1:])
		v := stored[key]
		if !v.Exists() && m.lossAllowed {
			m.lost[key] = true
		} else if !v.Exists() || v.Int() != int64(want) {
			m.failf("restart %d: acknowledged put %s lost (store has %q)", epoch, key, v.Raw)
		}
		checked++
	}
	for key := range m.ackedInc {
		v := stored[key]
		if !v.Exists() && m.lossAllowed {
			m.lost[key] = true
		} else if v.Raw != "1" {
			m.failf("restart %d: acknowledged increment %s reads %q, want exactly 1", epoch, key, v.Raw)
		}
		checked++
	}
	// Whatever is stored was sent, holds what was sent, and no increment
	// was applied twice, acknowledged or not.
	present := map[string]bool{}
	for key, v := range stored {
		present[key] = true
		n, err := strconv.Atoi(key[1:])
		if err != nil || m.sent[n] != key {
			m.failf("restart %d: store holds %s, which was never written", epoch, key)
			continue
		}
		if key[0] == 'p' && v.Int() != int64(n) {
			m.failf("restart %d: %s = %s, want %d", epoch, key, v.Raw, n)
		}
		if key[0] == 'i' && v.Raw != "1" {
			m.failf("restart %d: %s = %s: an increment was applied more than once", epoch, key, v.Raw)
		}
	}
	for key := range m.seen {
		if !present[key] {
			m.failf("restart %d: %s was read back after an earlier restart and is gone now", epoch, key)
		}
	}
	m.seen = present
	// The shared counter: every acknowledged increment is in, none twice.
	if (!m.lossAllowed && (ctr < int64(m.ctrAcked) || ctr < m.ctrMax)) || ctr > int64(m.ctrSent) {
		m.failf("restart %d: ctr = %d, want between %d acknowledged (highest result %d) and %d sent",
			epoch, ctr, m.ctrAcked, m.ctrMax, m.ctrSent)
	}
	checked += m.ctrAcked
	return checked
}

// TestCrashRecovery drives `flowrun run` through a stream of puts and
// increments, SIGKILLs it at random moments and restarts it on the same
// store directory. After every restart it reads the whole store back and
// checks that nothing that was never sent appeared and no increment was
// applied twice. With sync on ("sync" subtest) no acknowledged write may be
// lost; with sync off ("nosync") losses are counted and logged: a process
// crash may lose the last acknowledged writes, which were not yet handed to
// the operating system. Seeded and reproducible: the seed is logged and
// FLOWRUN_CRASH_SEED replays it; FLOWRUN_CRASH_KILLS sets the number of
// kills of the sync run (default 25; the nosync run does a third of them).
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary and kills it repeatedly")
	}
	seed := time.Now().UnixNano()
	if s := os.Getenv(crashSeedEnv); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", crashSeedEnv, s, err)
		}
		seed = v
	}
	kills := 25
	if s := os.Getenv(crashKillsEnv); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive integer", crashKillsEnv, s)
		}
		kills = v
	}
	bin := buildFlowrun(t)
	t.Run("sync", func(t *testing.T) { crashRun(t, bin, true, seed, kills) })
	t.Run("nosync", func(t *testing.T) { crashRun(t, bin, false, seed, max(1, kills/3)) })
}

// crashRun is one TestCrashRecovery run with the store's sync on or off.
func crashRun(t *testing.T, bin string, syncOn bool, seed int64, kills int) {
	t.Logf("seed %d (rerun with %s=%d), %d kills, sync %t", seed, crashSeedEnv, seed, kills, syncOn)
	rng := rand.New(rand.NewSource(seed))
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, fmt.Appendf(nil, crashFlow, syncOn), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &crashModel{
		sent:        map[int]string{},
		ackedPut:    map[string]bool{},
		ackedInc:    map[string]bool{},
		ctrValues:   map[int64]bool{},
		seen:        map[string]bool{},
		lossAllowed: !syncOn,
		lost:        map[string]bool{},
	}
	start := time.Now()
	killed, checks, checked := 0, 0, 0
	for epoch := 0; ; epoch++ {
		c := startChild(t, bin, flow)
		final := killed == kills
		// Some kills land during start-up and recovery, before the
		// restarted process has answered anything.
		if !final && rng.Intn(100) < 15 {
			time.Sleep(time.Duration(rng.Intn(40)) * time.Millisecond)
			c.kill()
			killed++
			continue
		}
		n, err := runCheck(c, epoch, m)
		if err != nil {
			c.kill()
			t.Fatalf("restart %d (after %d kills): %v\nstderr:\n%s", epoch, killed, err, c.stderr.String())
		}
		checks++
		checked += n
		if final {
			if err := c.stdin.Close(); err != nil {
				t.Fatal(err)
			}
			for range c.lines {
			}
			if err := c.cmd.Wait(); err != nil {
				t.Fatalf("final run: %v\nstderr:\n%s", err, c.stderr.String())
			}
			break
		}
		runWorkload(c, rng, m, time.Duration(20+rng.Intn(230))*time.Millisecond)
		killed++
		if len(m.failures) > 0 {
			break
		}
	}
	elapsed := time.Since(start)
	for _, f := range m.failures {
		t.Error(f)
	}
	if killed < kills {
		t.Errorf("only %d kills of %d", killed, kills)
	}
	m.mu.Lock()
	acked := len(m.ackedPut) + len(m.ackedInc) + m.ctrAcked
	m.mu.Unlock()
	if acked == 0 {
		t.Errorf("no write was acknowledged: the test checked nothing")
	}
	if !syncOn {
		t.Logf("sync off: %d acknowledged writes lost to kills (allowed without sync)", len(m.lost))
	}
	t.Logf("crash test: sync %t, seed %d, %d kills, %d restarts checked, %d acknowledged writes (%d puts, %d key increments, %d counter increments of %d sent), %d acknowledged-write checks in total, %v",
		syncOn, seed, killed, checks, acked, len(m.ackedPut), len(m.ackedInc), m.ctrAcked, m.ctrSent, checked, elapsed.Round(time.Millisecond))
	fmt.Printf("crash test (sync %t): %d kills, %d acknowledged writes checked (final check %d, %d lost), seed %d, %v\n",
		syncOn, killed, checked, acked, len(m.lost), seed, elapsed.Round(time.Millisecond))
}

// runCheck sends the check commands to a freshly started child, waits for
// their results and verifies them.
func runCheck(c *child, epoch int, m *crashModel) (int, error) {
	if _, err := io.WriteString(c.stdin, checkCommands(epoch)); err != nil {
		return 0, fmt.Errorf("writing checks: %w", err)
	}
	var res [3]gjson.Result
	got := 0
	timeout := time.After(30 * time.Second)
	for got < 3 {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return 0, errors.New("flowrun exited before answering the checks")
			}
			corr := gjson.Get(line, "meta.correlation").String()
			if e := gjson.Get(line, "meta.error"); e.Exists() {
				return 0, fmt.Errorf("check %s failed: %s", corr, e.String())
			}
			i := strings.TrimPrefix(corr, fmt.Sprintf("check-%d-", epoch))
			switch i {
			case "p":
				res[0] = gjson.Get(line, "data")
			case "i":
				res[1] = gjson.Get(line, "data")
			case "ctr":
				res[2] = gjson.Get(line, "data")
			default:
				return 0, fmt.Errorf("unexpected line before the checks were answered: %s", line)
			}
			got++
		case <-timeout:
			return 0, errors.New("no answer to the checks within 30s")
		}
	}
	if !res[0].IsObject() || !res[1].IsObject() || res[2].Type != gjson.Number {
		return 0, fmt.Errorf("malformed check results: %s / %s / %s", res[0].Raw, res[1].Raw, res[2].Raw)
	}
	return m.verify(epoch, res[0], res[1], res[2].Int()), nil
}

// runWorkload streams commands into the child, records every result line
// it prints, and SIGKILLs it after d.
func runWorkload(c *child, rng *rand.Rand, m *crashModel, d time.Duration) {
	// The writer gets its own generator, seeded from the test's, so the
	// sequence of commands does not depend on goroutine scheduling.
	wrng := rand.New(rand.NewSource(rng.Int63()))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		var buf []byte
		for {
			select {
			case <-stop:
				return
			default:
			}
			buf = buf[:0]
			for range 1 + wrng.Intn(32) {
				buf = append(buf, m.command(wrng)...)
			}
			// Lines handed to Write count as sent whether or not the
			// child read them: the upper bound of what may be applied.
			if _, err := c.stdin.Write(buf); err != nil {
				return
			}
			time.Sleep(time.Duration(wrng.Intn(1500)) * time.Microsecond)
		}
	}()
	go func() {
		defer wg.Done()
		for line := range c.lines {
			m.result(line)
		}
	}()
	time.Sleep(d)
	close(stop)
	c.kill()
	wg.Wait()
}
