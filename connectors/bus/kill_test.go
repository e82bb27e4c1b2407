package bus

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/proctest"
	"github.com/flowrun/flowrun/pipeline"
)

// Sizes of the kill test.
const (
	killMessages = 10_000
	killCounters = 100
)

// killInput is message i of the kill test: even ones increment one of
// killCounters counters (not idempotent: a redelivery counts twice), odd
// ones put a value under their own key (idempotent: a redelivery writes
// the same value again).
func killInput(i int) pipeline.Event {
	corr := fmt.Sprintf(`"m-%d"`, i)
	if i%2 == 0 {
		return pipeline.Event{Data: []byte(`{}`),
			Meta: []byte(fmt.Sprintf(`{"correlation":%s,"kv":{"increment":"c/%d"}}`, corr, (i/2)%killCounters))}
	}
	return pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
		Meta: []byte(fmt.Sprintf(`{"correlation":%s,"kv":{"put":"p/%d"}}`, corr, i))}
}

// outputWatcher counts the distinct correlations published on a subject,
// reading it from the start.
type outputWatcher struct {
	sub      *nats.Subscription
	seen     map[string]int
	total    int
	badShape []string
}

func watchOutput(t *testing.T, js nats.JetStreamContext, subject string) *outputWatcher {
	t.Helper()
	sub, err := js.SubscribeSync(subject, nats.DeliverAll(), nats.AckNone())
	must(t, err)
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &outputWatcher{sub: sub, seen: map[string]int{}}
}

// poll reads what has arrived, for at most d.
func (w *outputWatcher) poll(d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		m, err := w.sub.NextMsg(50 * time.Millisecond)
		if err != nil {
			return
		}
		wm, _ := natsUnmarshaler{}.Unmarshal(m)
		ev, err := ToEvent(wm)
		corr := gjson.GetBytes(ev.Meta, "correlation").String()
		op := gjson.GetBytes(ev.Meta, "kv.op").String()
		n, _ := strconv.Atoi(strings.TrimPrefix(corr, "m-"))
		if wantOp := map[bool]string{true: "increment", false: "put"}[n%2 == 0]; err != nil || op != wantOp {
			w.badShape = append(w.badShape, string(ev.Meta))
		}
		w.seen[corr]++
		w.total++
	}
}

// TestKillAndRestart publishes killMessages kv commands to JetStream, runs
// `flowrun run` on nats -> kv -> nats, SIGKILLs it midway, restarts it and
// checks that every command's effect is in the store and every result was
// published at least once with its correlation.
func TestKillAndRestart(t *testing.T) {
	url := natsURL(t)
	if testing.Short() {
		t.Skip("builds flowrun and moves 10,000 messages")
	}
	start := time.Now()
	dir := t.TempDir()
	bin := proctest.BuildFlowrun(t, dir)
	id := natstest.Token()
	in, out := "kill."+id+".in", "kill."+id+".out"
	flow := fmt.Sprintf(`name: load
connectors:
  input:  { type: nats, mode: read, url: %q, subject: %q, durable: load_%s, ack_wait: 2s, window: 256 }
  store:  { type: kv, dir: state, namespace: load }
  output: { type: nats, mode: write, url: %q, subject: %q }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, id, url, out)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))

	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	// The output stream exists before the flow publishes, so the watcher
	// sees every result from the start.
	_, err = ensureStream(context.Background(), js, out, "")
	must(t, err)
	watcher := watchOutput(t, js, out)

	evs := make([]pipeline.Event, killMessages)
	for i := range evs {
		evs[i] = killInput(i)
	}
	publishEvents(t, url, in, evs)
	t.Logf("built flowrun and published %d messages in %v", killMessages, time.Since(start).Round(time.Millisecond))

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

	// First run: kill it once a third of the results are out.
	runStart := time.Now()
	first, firstErr := startFlow("first run")
	for len(watcher.seen) < killMessages/3 && time.Since(runStart) < 30*time.Second {
		watcher.poll(100 * time.Millisecond)
	}
	must(t, first.Process.Signal(syscall.SIGKILL))
	_ = first.Wait()
	watcher.poll(300 * time.Millisecond)
	atKill := len(watcher.seen)
	t.Logf("first run: SIGKILL after %v with %d distinct results published", time.Since(runStart).Round(time.Millisecond), atKill)
	if atKill == 0 || atKill >= killMessages {
		t.Fatalf("kill came at %d of %d results: not midway\n%s", atKill, killMessages, firstErr)
	}

	// Second run: until every correlation has been published.
	restart := time.Now()
	second, secondErr := startFlow("second run")
	for len(watcher.seen) < killMessages && time.Since(restart) < 40*time.Second {
		watcher.poll(200 * time.Millisecond)
	}
	// Wait for the consumer to have nothing unacknowledged, then stop
	// gracefully.
	var info *nats.ConsumerInfo
	stream, _ := js.StreamNameBySubject(in)
	for time.Since(restart) < 45*time.Second {
		info, err = js.ConsumerInfo(stream, "load_"+id)
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	must(t, second.Process.Signal(syscall.SIGTERM))
	if err := second.Wait(); err != nil {
		t.Fatalf("second run after SIGTERM: %v\n%s", err, proctest.Tail(secondErr.String(), 2000))
	}
	watcher.poll(300 * time.Millisecond)
	t.Logf("second run: all %d correlations out after %v; %d results published in all (%d duplicates)",
		len(watcher.seen), time.Since(restart).Round(time.Millisecond), watcher.total, watcher.total-len(watcher.seen))
	if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("consumer not drained: %+v, %v", info, err)
	}
	for i := range killMessages {
		if c := fmt.Sprintf("m-%d", i); watcher.seen[c] == 0 {
			t.Errorf("no result published for correlation %s", c)
			break
		}
	}
	if len(watcher.badShape) > 0 {
		t.Errorf("%d results with a wrong or missing correlation/op, first: %s", len(watcher.badShape), watcher.badShape[0])
	}

	// The store: counters at least their count (at-least-once may add
	// redelivered increments), puts exact (idempotent).
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
		if v < int64(perCounter) {
			t.Errorf("counter c/%d = %d, want at least %d", c, v, perCounter)
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
	t.Logf("store: %d puts exact; counters hold %d increments redelivered after the kill; test took %v",
		nputs, extra, time.Since(start).Round(time.Millisecond))
}

// TestPoisonMessageIsSetAsideAfterMaxDeliveriesRestarts: a message whose
// handling never ends (a Lua loop standing for anything that kills the
// process) is delivered to `flowrun run`, which is SIGKILLed while handling
// it, max_deliveries times; the next start dead-letters it on arrival,
// without processing it, and goes on with the next message.
func TestPoisonMessageIsSetAsideAfterMaxDeliveriesRestarts(t *testing.T) {
	url := natsURL(t)
	if testing.Short() {
		t.Skip("builds flowrun and restarts it three times")
	}
	const maxDeliveries = 2
	dir := t.TempDir()
	bin := proctest.BuildFlowrun(t, dir)
	id := natstest.Token()
	in, out, durable := "poison."+id+".in", "poison."+id+".out", "poison_"+id
	flow := fmt.Sprintf(`name: poison
connectors:
  input:  { type: nats, mode: read, url: %q, subject: %q, durable: %s, ack_wait: 1s, window: 1, max_deliveries: %d }
  work:   { type: lua, file: work.lua, timeout: 10m }
  output: { type: nats, mode: write, url: %q, subject: %q }
links:
  - input/out -> work/in
  - work/out -> output/in
`, url, in, durable, maxDeliveries, url, out)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "work.lua"), []byte(
		"if event.data.poison then while true do end end\nemit(\"out\")\n"), 0o644))

	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	publishEvents(t, url, in, []pipeline.Event{{Data: []byte(`{"poison":true}`), Meta: []byte(`{"correlation":"poison"}`)}})
	stream, err := js.StreamNameBySubject(in)
	must(t, err)

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
		// Wait for the k-th delivery of the poison message to await its ack
		// in this process, then kill it.
		deadline := time.Now().Add(30 * time.Second)
		for {
			info, err := js.ConsumerInfo(stream, durable)
			if err == nil && info.Delivered.Consumer >= uint64(k) && info.NumAckPending == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("start %d: delivery %d never came (%+v, %v)\n%s", k, k, info, err, proctest.Tail(stderr.String(), 2000))
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // let it reach the script
		must(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		t.Logf("start %d: killed while handling delivery %d", k, k)
	}

	// Start max_deliveries + 1: the poison message arrives a third time and
	// is set aside; a message published after it is handled.
	cmd, stderr := start()
	publishEvents(t, url, in, []pipeline.Event{{Data: []byte(`{"n":1}`), Meta: []byte(`{"correlation":"ok"}`)}})
	dead := readSubject(t, url, in+DeadLetterSuffix, 1, 30*time.Second)
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
	res := readSubject(t, url, out, 1, 30*time.Second)
	if len(res) != 1 || gjson.GetBytes(res[0].Meta, "correlation").String() != "ok" {
		t.Fatalf("the message after the poison one was not handled: %v\n%s", res, proctest.Tail(stderr.String(), 2000))
	}
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after SIGTERM: %v\n%s", err, proctest.Tail(stderr.String(), 2000))
	}
	if !strings.Contains(stderr.String(), "dead-lettered before processing") {
		t.Errorf("no warning logged:\n%s", proctest.Tail(stderr.String(), 2000))
	}
}
