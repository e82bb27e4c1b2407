package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"golang.org/x/sys/unix"
)

// Figures of TestReadBombs.
const (
	// bombRSSBound is the peak resident memory `flowrun run` must stay
	// under while answering the bombs: the default result budget (16 MiB)
	// a few times over, plus Pebble's caches and the runtime.
	bombRSSBound = 512 << 20
	// bombAddressSpace caps the child's address space, so that a
	// regression fails the test with an out-of-memory exit instead of
	// taking down the machine.
	bombAddressSpace = 4_000_000_000
	// Store sizes: 10,000 values of 10 KB (100 MB) for get_all, 200,000
	// small keys for count (built in a few seconds).
	bigKeys, bigValueBytes = 10_000, 10_000
	manyKeys               = 200_000
)

// bombFlow returns badInputFlow named name (its namespace): on the store
// in state/, with every outcome on stdout.
func bombFlow(name string) string {
	return strings.Replace(badInputFlow, "name: bad", "name: "+name, 1)
}

// bombRun is the outcome of one `flowrun run`.
type bombRun struct {
	code    int
	lines   []string
	stderr  string
	maxRSS  int64 // bytes
	elapsed time.Duration
}

// capChild caps the address space of a started child.
func capChild(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	lim := unix.Rlimit{Cur: bombAddressSpace, Max: bombAddressSpace}
	if err := unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_AS, &lim, nil); err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("prlimit: %v", err)
	}
}

// runBombFlow runs `flowrun run flow` on stdin to its end, its address
// space capped, and returns how it went. Only the first 2 KB of each
// output line are kept. maxRSS is ru_maxrss, which is at least the test
// process's own peak (see peakRSS): only indicative.
func runBombFlow(t *testing.T, bin, flow string, stdin io.Reader) bombRun {
	t.Helper()
	cmd := exec.Command(bin, "run", flow)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out lineKeeper
	var errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	capChild(t, cmd)
	go func() {
		_, _ = io.Copy(in, stdin)
		_ = in.Close()
	}()
	err = cmd.Wait()
	r := bombRun{code: cmd.ProcessState.ExitCode(), stderr: errOut.String(), elapsed: time.Since(start), lines: out.lines}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.maxRSS = ru.Maxrss << 10 // KiB on Linux
	}
	if err != nil && r.code == -1 {
		t.Logf("flowrun run: %v", err)
	}
	return r
}

// lineKeeper is an io.Writer keeping the first 2 KB of each line.
type lineKeeper struct {
	lines []string
	cur   []byte
}

func (k *lineKeeper) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := 2048 - len(k.cur); room > 0 {
			k.cur = append(k.cur, chunk[:min(room, len(chunk))]...)
		}
		if i < 0 {
			break
		}
		k.lines = append(k.lines, string(k.cur))
		k.cur = k.cur[:0]
		p = p[i+1:]
	}
	return n, nil
}

// peakRSS returns the peak resident memory (VmHWM) of process pid, in
// bytes. Unlike the ru_maxrss wait reports, it counts only the process's
// own program: ru_maxrss starts from the parent's peak, which the child
// shares until exec.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if kb, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			var n int64
			if _, err := fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), &n); err != nil {
				t.Fatalf("VmHWM %q: %v", kb, err)
			}
			return n << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// loadLines returns events putting n keys named by key(i) to value, in
// batches of per, generated as they are read.
func loadLines(n, per int, key func(int) string, value string) io.Reader {
	r, w := io.Pipe()
	go func() {
		var b bytes.Buffer
		for i := 0; i < n; i += per {
			b.Reset()
			b.WriteString(`{"meta":{"kv":{"batch":[`)
			for j := i; j < min(n, i+per); j++ {
				if j > i {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `{"put":%q,"value":%s}`, key(j), value)
			}
			b.WriteString("]}}}\n")
			if _, err := w.Write(b.Bytes()); err != nil {
				return
			}
		}
		w.Close()
	}()
	return r
}

// bombLine is one event holding a batch of 1,000 copies of command.
func bombLine(command, corr string) string {
	return `{"meta":{"kv":{"batch":[` + strings.TrimSuffix(strings.Repeat(command+",", 1000), ",") + `]},"correlation":"` + corr + `"}}` + "\n"
}

// TestReadBombs runs the read bombs of the reliability issue through the
// real binary: {"batch":[{"get_all":""} x1000]} over 10,000 values of 10 KB
// (each get_all alone would build 100 MB, the event 100 GB) and
// {"batch":[{"count":""} x1000]} over 200,000 keys (200 million keys
// visited). Each must fail at once on err naming its budget, the process
// must go on answering, its peak RSS must stay under bombRSSBound, and a
// SIGINT must stop it within seconds.
func TestReadBombs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the flowrun binary and a 100 MB store")
	}
	bin := buildFlowrun(t)
	dir := t.TempDir()
	flows := map[string]string{}
	for _, name := range []string{"big", "many"} {
		flows[name] = filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(flows[name], []byte(bombFlow(name)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	value := `"` + strings.Repeat("v", bigValueBytes-2) + `"`
	for _, load := range []struct {
		flow  string
		lines io.Reader
		n     int
	}{
		{flows["big"], loadLines(bigKeys, 100, func(i int) string { return fmt.Sprintf("k%05d", i) }, value), bigKeys / 100},
		{flows["many"], loadLines(manyKeys, 1000, func(i int) string { return fmt.Sprintf("c%06d", i) }, `1`), manyKeys / 1000},
	} {
		r := runBombFlow(t, bin, load.flow, load.lines)
		if r.code != 0 || len(r.lines) != load.n || strings.Contains(strings.Join(r.lines, "\n"), `"error":`) {
			t.Fatalf("loading %s: exit %d, %d lines (want %d)\nstderr: %s", filepath.Base(load.flow), r.code, len(r.lines), load.n, r.stderr)
		}
		t.Logf("loaded %s in %v (peak RSS %d MiB)", filepath.Base(load.flow), r.elapsed.Round(time.Millisecond), r.maxRSS>>20)
	}

	bombs := []struct {
		name, flow, command, budget, after string
	}{
		{"get_all x1000 over 10,000 x 10 KB", flows["big"], `{"get_all":""}`, "max_result_bytes (16 MiB)", `{"exists":"k00001"}`},
		{"count x1000 over 200,000 keys", flows["many"], `{"count":""}`, "max_keys_visited (100000)", `{"count":"c0000"}`},
	}
	for _, b := range bombs {
		t.Run(b.name, func(t *testing.T) {
			c := startChild(t, bin, b.flow)
			defer c.kill()
			capChild(t, c.cmd)
			start := time.Now()
			in := bombLine(b.command, "bomb") + `{"meta":{"kv":` + b.after + `,"correlation":"after"}}` + "\n"
			if _, err := io.WriteString(c.stdin, in); err != nil {
				t.Fatal(err)
			}
			var errLine, after string
			timeout := time.After(2 * time.Minute)
			for errLine == "" || after == "" {
				select {
				case l, ok := <-c.lines:
					if !ok {
						_ = c.cmd.Wait()
						t.Fatalf("flowrun ended (%v) before answering both events; stderr:\n%.2000s", c.cmd.ProcessState, c.stderr.String())
					}
					switch gjson.Get(l, "meta.correlation").String() {
					case "bomb":
						errLine = l
					case "after":
						after = l
					default:
						t.Fatalf("unexpected line %.300s", l)
					}
				case <-timeout:
					t.Fatalf("no answer to both events within 2 minutes; stderr:\n%.2000s", c.stderr.String())
				}
			}
			answered := time.Since(start)
			// The process is still running, waiting for more input: its
			// high-water mark now covers all the bombs asked of it.
			rss := peakRSS(t, c.cmd.Process.Pid)
			_ = c.stdin.Close()
			if err := c.cmd.Wait(); err != nil {
				t.Errorf("flowrun run: %v; stderr:\n%.2000s", err, c.stderr.String())
			}
			t.Logf("answered in %v, exit %d, peak RSS %d MiB", answered.Round(time.Millisecond), c.cmd.ProcessState.ExitCode(), rss>>20)
			msg := gjson.Get(errLine, "meta.error").String()
			if !strings.Contains(msg, "batch[0]") || !strings.Contains(msg, b.budget) || !strings.Contains(msg, "budget exceeded") {
				t.Errorf("want the bomb refused on its first element naming %s; got %.1500s", b.budget, errLine)
			}
			if gjson.Get(after, "meta.error").Exists() || !gjson.Get(after, "meta.kv.found").Bool() {
				t.Errorf("the event after the bomb: %.300s", after)
			}
			if rss >= bombRSSBound {
				t.Errorf("peak RSS %d MiB, bound %d MiB", rss>>20, bombRSSBound>>20)
			}
		})
	}

	// SIGINT while count bombs keep arriving: the process drains what it
	// has read (each bomb bounded by the work budget) and exits 0.
	t.Run("SIGINT during count bombs", func(t *testing.T) {
		c := startChild(t, bin, flows["many"])
		defer c.kill()
		capChild(t, c.cmd)
		if _, err := io.WriteString(c.stdin, bombLine(`{"count":""}`, "bomb")); err != nil {
			t.Fatal(err)
		}
		select {
		case l := <-c.lines:
			if !strings.Contains(gjson.Get(l, "meta.error").String(), "max_keys_visited") {
				t.Fatalf("first bomb: %.500s", l)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("no answer to the first count bomb within a minute; stderr: %s", c.stderr.String())
		}
		if _, err := io.WriteString(c.stdin, bombLine(`{"count":""}`, "bomb")); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := c.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- c.cmd.Wait() }()
		select {
		case err := <-exited:
			t.Logf("exited %v after SIGINT: %v", time.Since(start).Round(time.Millisecond), err)
			if err != nil {
				t.Errorf("flowrun run after SIGINT: %v; stderr: %s", err, c.stderr.String())
			}
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-exited
			t.Fatalf("flowrun still running 10s after SIGINT; stderr: %s", c.stderr.String())
		}
	})
}
