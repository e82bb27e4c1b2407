package amqp_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/amqp"
	"github.com/flowrun/flowrun/internal/proctest"
	"github.com/flowrun/flowrun/pipeline"
)

// Sizes of the kill test.
const (
	killMessages = 10_000
	killCounters = 100
)

// TestKillAndRestart publishes killMessages increments of killCounters
// counters, runs `flowrun run` on amqp -> (kv with idem_from: message_id,
// kv without) -> amqp, SIGKILLs it midway and restarts it. Nothing is lost:
// every correlation is answered and the queue ends empty. The store with
// idempotency keys counts each message exactly once; the one without
// counts the messages redelivered after the kill twice (at least once).
func TestKillAndRestart(t *testing.T) {
	url := brokerURL(t)
	if testing.Short() {
		t.Skip("builds flowrun and moves 10,000 messages")
	}
	start := time.Now()
	dir := t.TempDir()
	bin := proctest.BuildFlowrun(t, dir)
	in, out := uniqueQueue("kill.in"), uniqueQueue("kill.out")
	deleteQueues(t, url, in, out, in+".dead")
	flow := fmt.Sprintf(`name: load
connectors:
  input:  { type: amqp, mode: read, url: %q, queue: %q, window: 256 }
  exact:  { type: kv, dir: exact, namespace: load, idem_from: message_id }
  loose:  { type: kv, dir: loose, namespace: load }
  slow:   { type: lua, file: slow.lua }
  output: { type: amqp, mode: write, url: %q, queue: %q }
  drop:   { type: null }
links:
  - input/out -> exact/in
  - input/out -> loose/in
  - exact/out -> slow/in
  - slow/out -> output/in
  - loose/out -> drop/in
`, url, in, url, out)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))
	// Half a millisecond an event after the stores: a kill most likely
	// finds messages whose increments are stored but not yet acked.
	must(t, os.WriteFile(filepath.Join(dir, "slow.lua"), []byte("local t = os.clock() + 0.0005\nwhile os.clock() < t do end\nemit(\"out\")\n"), 0o644))

	evs := make([]pipeline.Event, killMessages)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(`{}`),
			Meta: []byte(fmt.Sprintf(`{"correlation":"m-%d","kv":{"increment":"c/%d"}}`, i, i%killCounters))}
	}
	publishEvents(t, url, in, evs)
	results := readQueue(t, url, out)
	seen := map[string]int{}
	total := 0
	poll := func(d time.Duration) {
		for _, ev := range results.next(t, killMessages, d) {
			seen[gjson.GetBytes(ev.Meta, "correlation").String()]++
			total++
		}
	}
	t.Logf("built flowrun and published %d messages in %v", killMessages, time.Since(start).Round(time.Millisecond))

	startFlow := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(bin, "run", "flow.yaml")
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		return cmd, &stderr
	}
	runStart := time.Now()
	first, firstErr := startFlow()
	for len(seen) < killMessages/3 && time.Since(runStart) < 60*time.Second {
		poll(50 * time.Millisecond)
	}
	must(t, first.Process.Signal(syscall.SIGKILL))
	_ = first.Wait()
	poll(300 * time.Millisecond)
	atKill := len(seen)
	t.Logf("first run: SIGKILL after %v with %d distinct results published", time.Since(runStart).Round(time.Millisecond), atKill)
	if atKill == 0 || atKill >= killMessages {
		t.Fatalf("kill came at %d of %d results: not midway\n%s", atKill, killMessages, proctest.Tail(firstErr.String(), 2000))
	}

	restart := time.Now()
	second, secondErr := startFlow()
	for len(seen) < killMessages && time.Since(restart) < 90*time.Second {
		poll(200 * time.Millisecond)
	}
	must(t, second.Process.Signal(syscall.SIGTERM))
	if err := second.Wait(); err != nil {
		t.Fatalf("second run after SIGTERM: %v\n%s", err, proctest.Tail(secondErr.String(), 2000))
	}
	poll(300 * time.Millisecond)
	t.Logf("second run: %d correlations answered after %v; %d results in all (%d duplicates)",
		len(seen), time.Since(restart).Round(time.Millisecond), total, total-len(seen))
	if len(seen) != killMessages {
		t.Fatalf("%d of %d correlations answered\n%s", len(seen), killMessages, proctest.Tail(secondErr.String(), 2000))
	}
	// A graceful stop acks what it handled: nothing is left in the queue.
	conn, err := amqp091.Dial(url)
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	q, err := ch.QueueDeclarePassive(in, true, false, false, false, nil)
	must(t, err)
	if q.Messages != 0 {
		t.Errorf("%d messages left in the queue after a graceful stop", q.Messages)
	}

	counters := func(state string) gjson.Result {
		verify := fmt.Sprintf(`name: verify
connectors:
  queries: { type: stdin }
  store:   { type: kv, dir: %s, namespace: load }
  show:    { type: stdout }
links:
  - queries/out -> store/in
  - store/out -> show/in
  - store/err -> show/in
`, state)
		res := proctest.Replay(t, bin, dir, verify, `{"meta":{"kv":{"get_all":"c/"}}}`+"\n")
		return gjson.GetBytes(bytes.TrimSpace(res), "data")
	}
	per := killMessages / killCounters
	exact, loose := counters("exact"), counters("loose")
	extra := 0
	for c := range killCounters {
		key := fmt.Sprintf("c/%d", c)
		if v := exact.Get(gjson.Escape(key)).Int(); v != int64(per) {
			t.Errorf("idem_from store: counter %s = %d, want exactly %d", key, v, per)
		}
		v := loose.Get(gjson.Escape(key)).Int()
		if v < int64(per) {
			t.Errorf("store without idem_from: counter %s = %d, want at least %d", key, v, per)
		}
		extra += int(v) - per
	}
	t.Logf("with idem_from: counters exact; without: %d increments applied twice (redelivered after the kill); test took %v",
		extra, time.Since(start).Round(time.Millisecond))
	if extra == 0 {
		t.Log("no increment was redelivered this run: the kill found nothing stored and unacked, idem_from was not exercised")
	}
}

// TestPoisonMessageIsSetAsideAfterMaxDeliveriesRestarts: on a quorum queue,
// a message whose handling never ends (a Lua loop standing for anything
// that kills the process) is delivered to `flowrun run`, which is
// SIGKILLed while handling it, max_deliveries times; the queue counts
// those deliveries (x-delivery-count), so the next start dead-letters it on
// arrival, without processing it, and goes on with the next message.
func TestPoisonMessageIsSetAsideAfterMaxDeliveriesRestarts(t *testing.T) {
	url := brokerURL(t)
	if testing.Short() {
		t.Skip("builds flowrun and restarts it three times")
	}
	const maxDeliveries = 2
	dir := t.TempDir()
	bin := proctest.BuildFlowrun(t, dir)
	in, out := uniqueQueue("crash.in"), uniqueQueue("crash.out")
	deleteQueues(t, url, in, out, in+".dead")
	flow := fmt.Sprintf(`name: poison
connectors:
  input:  { type: amqp, mode: read, url: %q, queue: %q, queue_type: quorum, window: 1, max_deliveries: %d }
  work:   { type: lua, file: work.lua, timeout: 10m }
  output: { type: amqp, mode: write, url: %q, queue: %q }
links:
  - input/out -> work/in
  - work/out -> output/in
`, url, in, maxDeliveries, url, out)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "work.lua"), []byte(
		"if event.data.poison then while true do end end\nemit(\"out\")\n"), 0o644))
	conn, err := amqp091.Dial(url)
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	_, err = ch.QueueDeclare(in, true, false, false, false, amqp091.Table{"x-queue-type": "quorum"})
	must(t, err)
	publishWith(t, amqpOptions(url, in), []pipeline.Event{{Data: []byte(`{"poison":true}`), Meta: []byte(`{"correlation":"poison"}`)}})
	deadLetters, results := readQueue(t, url, in+".dead"), readQueue(t, url, out)

	start := func() (*exec.Cmd, *bytes.Buffer) {
		cmd := exec.Command(bin, "run", "flow.yaml")
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		return cmd, &stderr
	}
	for k := 1; k <= maxDeliveries; k++ {
		cmd, stderr := start()
		// Wait for the poison message to be delivered (no message ready),
		// let it reach the script, then kill the process.
		deadline := time.Now().Add(30 * time.Second)
		for {
			q, err := ch.QueueDeclarePassive(in, true, false, false, false, nil)
			must(t, err)
			if q.Messages == 0 && q.Consumers == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("start %d: the message was never delivered\n%s", k, proctest.Tail(stderr.String(), 2000))
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		must(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		t.Logf("start %d: killed while handling delivery %d", k, k)
	}
	cmd, stderr := start()
	publishWith(t, amqpOptions(url, in), []pipeline.Event{{Data: []byte(`{"n":1}`), Meta: []byte(`{"correlation":"ok"}`)}})
	dead := deadLetters.next(t, 1, 30*time.Second)
	if len(dead) != 1 {
		t.Fatalf("no dead letter for the poison message\n%s", proctest.Tail(stderr.String(), 2000))
	}
	reason := gjson.GetBytes(dead[0].Meta, "error").String()
	if c := gjson.GetBytes(dead[0].Meta, "correlation").String(); c != "poison" ||
		!strings.Contains(reason, fmt.Sprintf("delivered %d times, more than max_deliveries %d", maxDeliveries+1, maxDeliveries)) {
		t.Errorf("dead letter meta %s", dead[0].Meta)
	}
	// Handling the poison message would loop for 10 minutes (window 1):
	// the next message coming out shows it was not processed.
	res := results.next(t, 1, 30*time.Second)
	if len(res) != 1 || gjson.GetBytes(res[0].Meta, "correlation").String() != "ok" {
		t.Fatalf("the message after the poison one was not handled: %v\n%s", res, proctest.Tail(stderr.String(), 2000))
	}
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, proctest.Tail(stderr.String(), 2000))
	}
}

// amqpOptions publishes to an existing queue (whatever its arguments).
func amqpOptions(url, queue string) amqp.Options {
	return amqp.Options{URL: url, Queue: queue, Mandatory: true, Declare: amqp.DeclarePassive}
}
