package kafka_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/proctest"
	"github.com/flowrun/flowrun/pipeline"
)

const (
	killMessages = 10_000
	killCounters = 100
)

// TestKillAndRestart produces killMessages kv commands to a kfake broker
// started by the test, runs the flowrun binary on kafka -> kv -> kafka,
// SIGKILLs it midway and starts it again. No record is lost: every
// correlation is answered, every put is in the store and the committed
// offsets reach the end. With idem_from: message_id the counters are exact
// (a record redelivered after the kill has the same message_id); without
// it they are at least their count, the surplus being the increments done
// after the last commit before the kill (logged).
func TestKillAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds flowrun and moves 10,000 records twice")
	}
	dir := t.TempDir()
	bin := proctest.BuildFlowrun(t, dir)
	for _, tc := range []struct {
		name string
		idem string
	}{
		{"at least once", ""},
		{"idem_from message_id", ", idem_from: message_id"},
	} {
		t.Run(tc.name, func(t *testing.T) { killAndRestart(t, bin, tc.idem != "", tc.idem) })
	}
}

func killAndRestart(t *testing.T, bin string, exact bool, storeOpts string) {
	start := time.Now()
	dir := t.TempDir()
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out")
	b := strings.Join(brokers, ",")
	flow := fmt.Sprintf(`name: load
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: load, window: 256,
            commit_interval: 100ms, session_timeout: 6s }
  store:  { type: kv, dir: state, namespace: load%s }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
links:
  - input/out -> store/in
  - store/out -> output/in
`, b, storeOpts, b)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))
	evs := make([]pipeline.Event, killMessages)
	for i := range evs {
		evs[i] = kvInput(i, killCounters)
	}
	produceEvents(t, brokers, "in", evs)
	out := readTopic(t, brokers, "out")

	run := func(name string) (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(bin, "run", "flow.yaml")
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		t.Logf("%s: started pid %d", name, cmd.Process.Pid)
		return cmd, &stderr
	}
	first, firstErr := run("first run")
	// Kill as soon as a tenth is out: on a quiet machine the flow moves
	// the rest in a few hundred milliseconds, less than a poll of the
	// output and a query of the offsets took after a third. The offsets
	// are read after the kill, when nothing can commit any more.
	out.until(t, 60*time.Second, distinct(killMessages/10))
	must(t, first.Process.Signal(syscall.SIGKILL))
	_ = first.Wait()
	t.Logf("committed at the kill: %v", committed(t, brokers, "load", "in"))
	out.poll(t, 300*time.Millisecond)
	atKill := len(correlations(out.evs))
	t.Logf("first run: SIGKILL with %d distinct results out", atKill)
	if atKill >= killMessages {
		t.Fatalf("kill came after all %d results: not midway\n%s", killMessages, firstErr)
	}

	second, secondErr := run("second run")
	got := out.until(t, 90*time.Second, distinct(killMessages))
	seen := correlations(got)
	for i := range killMessages {
		if seen[fmt.Sprintf("m-%d", i)] == 0 {
			t.Fatalf("no result for m-%d (%d answered)\n%s", i, len(seen), proctest.Tail(secondErr.String(), 2000))
		}
	}
	ends := endOffsets(t, brokers, "in")
	deadline := time.Now().Add(20 * time.Second)
	for {
		com := committed(t, brokers, "load", "in")
		ok := true
		for p, end := range ends {
			ok = ok && com[p] == end
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want the ends %v", com, ends)
		}
		time.Sleep(100 * time.Millisecond)
	}
	must(t, second.Process.Signal(syscall.SIGTERM))
	if err := second.Wait(); err != nil {
		t.Fatalf("second run after SIGTERM: %v\n%s", err, proctest.Tail(secondErr.String(), 2000))
	}
	out.poll(t, 300*time.Millisecond)
	t.Logf("second run: all %d answered; %d results in all (%d duplicates)", killMessages, len(out.evs), len(out.evs)-killMessages)

	// The store, read with `flowrun replay`.
	verify := `name: verify
connectors:
  queries: { type: stdin }
  store:   { type: kv, dir: state, namespace: load }
  show:    { type: stdout }
links:
  - queries/out -> store/in
  - store/out -> show/in
  - store/err -> show/in
`
	res := proctest.Replay(t, bin, dir, verify, `{"meta":{"kv":{"get_all":"c/"}}}`+"\n"+`{"meta":{"kv":{"get_all":"p/"}}}`+"\n")
	lines := bytes.Split(bytes.TrimSpace(res), []byte("\n"))
	if len(lines) != 2 {
		t.Fatalf("verify output: %s", proctest.Tail(string(res), 500))
	}
	counters, puts := gjson.GetBytes(lines[0], "data"), gjson.GetBytes(lines[1], "data")
	perCounter := killMessages / 2 / killCounters
	extra := 0
	for c := range killCounters {
		v := counters.Get(fmt.Sprintf(`c/%d`, c)).Int()
		if v < int64(perCounter) || exact && v != int64(perCounter) {
			t.Errorf("counter c/%d = %d, want %s%d", c, v, map[bool]string{true: "", false: "at least "}[exact], perCounter)
		}
		extra += int(v) - perCounter
	}
	nputs := 0
	puts.ForEach(func(k, v gjson.Result) bool {
		nputs++
		i, _ := strconv.Atoi(strings.TrimPrefix(k.String(), "p/"))
		if v.Get("i").Int() != int64(i) {
			t.Errorf("put %s = %s", k, v.Raw)
		}
		return true
	})
	if nputs != killMessages/2 {
		t.Errorf("%d puts in the store, want %d", nputs, killMessages/2)
	}
	t.Logf("store: %d puts; counters hold %d increments beyond their count; took %v", nputs, extra, time.Since(start).Round(time.Millisecond))
}
