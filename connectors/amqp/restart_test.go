package amqp_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// privateBroker is a RabbitMQ node of the test's own, started with
// scripts/rabbitmq.sh on free ports with its data in a directory of the
// test, so that it can be stopped and started again with its queues.
type privateBroker struct {
	script, dir string
	port        int
	env         []string
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newPrivateBroker(t *testing.T) *privateBroker {
	t.Helper()
	if _, err := os.Stat("/usr/lib/rabbitmq/bin/rabbitmq-server"); err != nil {
		if _, err := exec.LookPath("rabbitmq-server"); err != nil {
			t.Skip("rabbitmq-server is not installed")
		}
	}
	script, err := filepath.Abs("../../scripts/rabbitmq.sh")
	must(t, err)
	b := &privateBroker{script: script, dir: t.TempDir(), port: freePort(t)}
	b.env = append(os.Environ(),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", freePort(t)),
		fmt.Sprintf("ERL_EPMD_PORT=%d", freePort(t)),
		"TMPDIR="+b.dir)
	t.Cleanup(func() { b.run(t, "stop") })
	return b
}

func (b *privateBroker) run(t *testing.T, verb string) string {
	t.Helper()
	args := []string{verb, fmt.Sprint(b.port)}
	if verb == "start" {
		args = append(args, filepath.Join(b.dir, "node"))
	}
	cmd := exec.Command(b.script, args...)
	cmd.Env = b.env
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("rabbitmq.sh %s: %v\n%s", verb, err, stderr)
	}
	t.Logf("rabbitmq.sh %s %d: %v", verb, b.port, time.Since(start).Round(time.Millisecond))
	return strings.TrimSpace(string(out))
}

func sinkReceived(g *pipeline.Graph, node string) int {
	for _, c := range g.Counts() {
		if c.Node == node && c.Port == pipeline.PortIn {
			return int(c.Events)
		}
	}
	return 0
}

// TestBrokerRestart: the broker is stopped while a flow is running and
// started again (same data directory: the durable queues and persistent
// messages survive). The flow reports itself not ready, pauses, reconnects
// by itself and finishes: every command's result is published.
func TestBrokerRestart(t *testing.T) {
	brokerURL(t) // the shared broker's setting decides whether broker tests run
	if testing.Short() {
		t.Skip("starts a RabbitMQ node of its own twice")
	}
	const n = 3000
	b := newPrivateBroker(t)
	url := b.run(t, "start")
	in, out := "restart.in", "restart.out"
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":{"put":"k/%d"}}`, i, i))}
	}
	publishEvents(t, url, in, evs)
	// A slow flow (window 8, linger 1ms, Lua sleeping 1ms an event) so
	// that the stop comes midway.
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "slow.lua"), []byte("local t = os.clock() + 0.001\nwhile os.clock() < t do end\nemit(\"out\")\n"), 0o644))
	g, res, stop := runFlow(t, dir, fmt.Sprintf(`name: restart
connectors:
  input:  { type: amqp, mode: read, url: %q, queue: %q, window: 8, linger: 1ms, reconnect_max: 500ms }
  slow:   { type: lua, file: slow.lua }
  store:  { type: kv, dir: state }
  output: { type: amqp, mode: write, url: %q, queue: %q, reconnect_max: 500ms }
links:
  - input/out -> slow/in
  - slow/out -> store/in
  - store/out -> output/in
`, url, in, url, out))
	health := component.HealthOf(res)
	deadline := time.Now().Add(60 * time.Second)
	for sinkReceived(g, "output") < n/10 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	before := sinkReceived(g, "output")
	if before == 0 || before >= n {
		t.Fatalf("%d of %d results before the stop: not midway", before, n)
	}
	b.run(t, "stop")
	atStop := sinkReceived(g, "output")
	notReady := false
	for i := 0; i < 100 && !notReady; i++ {
		notReady = health.Err() != nil
		time.Sleep(20 * time.Millisecond)
	}
	if !notReady {
		t.Error("the flow reported itself ready with the broker stopped")
	}
	time.Sleep(time.Second)
	if during := sinkReceived(g, "output"); during > atStop+8 {
		t.Errorf("%d results handed to the sink while the broker was down (%d at the stop)", during-atStop, atStop)
	}
	b.run(t, "start")
	t.Logf("%d results before the stop, %d when it returned", before, atStop)

	results := readQueue(t, url, out)
	seen := map[int64]int{}
	total := 0
	deadline = time.Now().Add(90 * time.Second)
	for len(seen) < n && time.Now().Before(deadline) {
		for _, ev := range results.next(t, n, 500*time.Millisecond) {
			seen[gjson.GetBytes(ev.Meta, "correlation").Int()]++
			total++
		}
	}
	must(t, stop())
	if len(seen) != n {
		t.Fatalf("%d of %d correlations answered after the restart", len(seen), n)
	}
	if err := health.Err(); err != nil {
		t.Errorf("not ready after the restart: %v", err)
	}
	t.Logf("all %d answered, %d results in all (%d duplicates: in flight at the stop)", n, total, total-n)
}
