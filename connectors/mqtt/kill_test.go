package mqtt_test

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

	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/internal/proctest"
	"github.com/flowrun/flowrun/pipeline"
)

// Sizes of the kill test.
const (
	killMessages = 10_000
	killCounters = 100
)

// TestKillAndRestart publishes killMessages kv commands (codec event) to
// the persistent session of a flow that is not running, runs `flowrun run`
// on mqtt -> kv, SIGKILLs it midway, restarts it and checks that every
// command's effect is in the store and every result was published at least
// once. The flow feeds each message to two kv connectors: "exact", with
// idem_from: message_id, whose counters must be exact; and "plain",
// without it, whose counters are at least right (a message redelivered
// after the kill increments twice: the duplicates are counted). It runs
// with each protocol.
func TestKillAndRestart(t *testing.T) {
	mqttURL(t)
	if testing.Short() {
		t.Skip("builds flowrun and moves 10,000 messages")
	}
	bin := proctest.BuildFlowrun(t, t.TempDir())
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) { testKillAndRestart(t, bin, protocol) })
	}
}

func testKillAndRestart(t *testing.T, bin, protocol string) {
	url := mqttURL(t)
	start := time.Now()
	dir := t.TempDir()
	in, out := uniqueTopic("kill-in"), uniqueTopic("kill-out")
	clientID := "kill-" + randomID()
	flow := fmt.Sprintf(`name: load
connectors:
  input:  { type: mqtt, mode: read, url: %q, topic: %q, codec: event, client_id: %s, window: 256, protocol: %q }
  exact:  { type: kv, dir: state, namespace: exact, idem_from: message_id }
  plain:  { type: kv, dir: state, namespace: plain }
  output: { type: mqtt, mode: write, url: %q, topic: %q, codec: event, protocol: %q }
  ignore: { type: "null" }
links:
  - input/out -> exact/in
  - input/out -> plain/in
  - exact/out -> output/in
  - plain/out -> ignore/in
`, url, in, clientID, protocol, url, out, protocol)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))
	col := collect(t, url, out)
	createSessionFor(t, protocol, url, clientID, in)
	evs := make([]pipeline.Event, killMessages)
	for i := range evs {
		evs[i] = kvInput(i, killCounters)
	}
	publish(t, url, in, envelopes(evs))
	t.Logf("published %d messages in %v", killMessages, time.Since(start).Round(time.Millisecond))

	startFlow := func(name string) (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(bin, "run", "flow.yaml")
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		t.Logf("%s: started pid %d", name, cmd.Process.Pid)
		return cmd, &stderr
	}

	runStart := time.Now()
	first, firstErr := startFlow("first run")
	col.waitFor(killMessages/3, 30*time.Second)
	must(t, first.Process.Signal(syscall.SIGKILL))
	_ = first.Wait()
	time.Sleep(300 * time.Millisecond)
	atKill := col.distinct()
	t.Logf("first run: SIGKILL after %v with %d distinct results published", time.Since(runStart).Round(time.Millisecond), atKill)
	if atKill == 0 || atKill >= killMessages {
		t.Fatalf("kill came at %d of %d results: not midway\n%s", atKill, killMessages, proctest.Tail(firstErr.String(), 2000))
	}

	restart := time.Now()
	second, secondErr := startFlow("second run")
	ok := col.waitFor(killMessages, 60*time.Second)
	time.Sleep(500 * time.Millisecond) // let the last acks go out
	must(t, second.Process.Signal(syscall.SIGTERM))
	if err := second.Wait(); err != nil {
		t.Fatalf("second run after SIGTERM: %v\n%s", err, proctest.Tail(secondErr.String(), 2000))
	}
	col.mu.Lock()
	t.Logf("second run: %d correlations out after %v; %d results published in all (%d duplicates)",
		len(col.seen), time.Since(restart).Round(time.Millisecond), col.total, col.total-len(col.seen))
	col.mu.Unlock()
	if !ok {
		t.Fatalf("only %d of %d correlations published\n%s", col.distinct(), killMessages, proctest.Tail(secondErr.String(), 2000))
	}

	verify := `name: verify
connectors:
  queries: { type: stdin }
  exact:   { type: kv, dir: state, namespace: exact }
  plain:   { type: kv, dir: state, namespace: plain }
  show:    { type: stdout }
pipelines:
  pick:
    - route:
        exact: 'meta.ns == "exact"'
        default: plain
links:
  - queries/out -> pick/in
  - pick/exact -> exact/in
  - pick/plain -> plain/in
  - exact/out -> show/in
  - plain/out -> show/in
  - exact/err -> show/in
  - plain/err -> show/in
`
	var q strings.Builder
	for _, ns := range []string{"exact", "plain"} {
		fmt.Fprintf(&q, `{"meta":{"ns":%q,"correlation":"%s/c","kv":{"get_all":"c/"}}}`+"\n", ns, ns)
		fmt.Fprintf(&q, `{"meta":{"ns":%q,"correlation":"%s/p","kv":{"get_all":"p/"}}}`+"\n", ns, ns)
	}
	res := proctest.Replay(t, bin, dir, verify, q.String())
	got := map[string]gjson.Result{}
	for _, line := range bytes.Split(bytes.TrimSpace(res), []byte("\n")) {
		got[gjson.GetBytes(line, "meta.correlation").String()] = gjson.GetBytes(line, "data")
	}
	perCounter := killMessages / 2 / killCounters
	for _, ns := range []string{"exact", "plain"} {
		extra := 0
		for c := range killCounters {
			v := got[ns+"/c"].Get(fmt.Sprintf(`c/%d`, c)).Int()
			if v < int64(perCounter) || ns == "exact" && v != int64(perCounter) {
				t.Errorf("%s: counter c/%d = %d, want %s%d", ns, c, v, map[bool]string{true: "", false: "at least "}[ns == "exact"], perCounter)
			}
			extra += int(v) - perCounter
		}
		nputs := 0
		got[ns+"/p"].ForEach(func(k, v gjson.Result) bool {
			nputs++
			i, _ := strconv.Atoi(strings.TrimPrefix(k.String(), "p/"))
			if v.Get("i").Int() != int64(i) {
				t.Errorf("%s: put %s = %s", ns, k, v.Raw)
			}
			return true
		})
		if nputs != killMessages/2 {
			t.Errorf("%s: %d puts in the store, want %d", ns, nputs, killMessages/2)
		}
		t.Logf("store %s: %d puts; counters hold %d increments applied twice after the kill", ns, nputs, extra)
		// Only messages being processed when the process died come
		// again: at most max_inflight, whatever the broker sent ahead.
		if extra > DefaultMaxInflight {
			t.Errorf("%s: %d increments applied twice, more than max_inflight %d", ns, extra, DefaultMaxInflight)
		}
	}
	t.Logf("test took %v", time.Since(start).Round(time.Millisecond))
}
