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

// Sizes of the scale-out test.
const (
	scaleMessages  = 12_000
	scalePlayers   = 100
	scaleProcesses = 3
)

// etcdEndpoints returns FLOWRUN_ETCD_ENDPOINTS (scripts/etcd-cluster.sh
// start prints it). Under CI a missing value fails the test; elsewhere the
// test is skipped. Reachability is left to the flow, which fails clearly.
func etcdEndpoints(t *testing.T) string {
	t.Helper()
	eps := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	if eps == "" {
		msg := "FLOWRUN_ETCD_ENDPOINTS is not set; start a cluster with scripts/etcd-cluster.sh start"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return eps
}

// scaleInput is message i: player i%scalePlayers scores 1 + i%7 points.
func scaleInput(i int) (player string, points int, ev pipeline.Event) {
	player, points = fmt.Sprintf("p%02d", i%scalePlayers), 1+i%7
	return player, points, pipeline.Event{Data: []byte(fmt.Sprintf(`{"player":%q,"points":%d}`, player, points))}
}

// scaleFlow is the flow every process runs. Stage one adds the message's
// points to the player's score, with the message id as idempotency key, and
// answers the new score T. Stage two claims the player's leaderboard entry
// rank/PLAYER/T with a cas on an absent key, under an idempotency key of its
// own, recording the points and message that reached T. Scores of one
// player are serialised by the store, so each T is reached by exactly one
// message: a message applied twice would reach a second T (and leave a
// score too high), and a claim refused because T was taken would go to the
// unlinked err port, be redelivered over and over and keep the consumer
// from draining.
func scaleFlow(natsURL, subject, durable, endpoints, prefix, maxTxnOps string) string {
	return fmt.Sprintf(`name: scores
connectors:
  input: { type: nats, mode: read, url: %q, subject: %q, durable: %q, ack_wait: 5s, window: 256 }
  store: { type: kv, backend: etcd, endpoints: %q, prefix: %q, namespace: scores, max_txn_ops: %s, idem_from: message_id }
  board: { type: kv, backend: etcd, endpoints: %q, prefix: %q, namespace: scores, max_txn_ops: %s }
  done:  { type: "null" }
pipelines:
  score:
    - set:
        meta.correlation: '{"id": meta.message_id, "player": data.player, "points": data.points}'
        meta.kv: '{"increment": "score/" + data.player, "by": data.points}'
  rank:
    - set:
        meta.kv: '{"cas": "rank/" + meta.correlation.player + "/" + string(data), "idem": meta.correlation.id + "/rank"}'
        data: '{"points": meta.correlation.points, "message": meta.correlation.id}'
links:
  - input/out -> score/in
  - score/out -> store/in
  - store/out -> rank/in
  - rank/out -> board/in
  - board/out -> done/in
`, natsURL, subject, durable, endpoints, prefix, maxTxnOps, endpoints, prefix, maxTxnOps)
}

// TestScaleOutExactlyOnce runs three `flowrun run` processes sharing one
// JetStream durable consumer and one etcd-backed store. They consume
// scaleMessages score messages over scalePlayers players; one process is
// SIGKILLed midway and restarted. Every score must end exactly at its
// expected total (no message lost, none counted twice) and every
// leaderboard entry must equal its score.
func TestScaleOutExactlyOnce(t *testing.T) {
	url := natsURL(t)
	endpoints := etcdEndpoints(t)
	if testing.Short() {
		t.Skip("builds flowrun and moves 12,000 messages through three processes")
	}
	start := time.Now()
	dir := t.TempDir()
	bin := proctest.BuildFlowrun(t, dir)
	// The cluster's --max-txn-ops, as scripts/etcd-cluster.sh sets it.
	maxTxnOps := os.Getenv("FLOWRUN_ETCD_MAX_TXN_OPS")
	if maxTxnOps == "" {
		maxTxnOps = "128"
	}
	id := natstest.Token()
	subject, durable, prefix := "scale."+id+".in", "scale_"+id, "flowrun-test/scale-"+id+"/"

	query := fmt.Sprintf(`name: query
connectors:
  input: { type: stdin }
  store: { type: kv, backend: etcd, endpoints: %q, prefix: %q, namespace: scores }
  show:  { type: stdout }
links:
  - input/out -> store/in
  - store/out -> show/in
  - store/err -> show/in
`, endpoints, prefix)
	must(t, os.WriteFile(filepath.Join(dir, "query.yaml"), []byte(query), 0o644))
	replay := func(flow, events string) []byte {
		t.Helper()
		cmd := exec.Command(bin, "replay", "-q", flow, events)
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("replay %s: %v\n%s", flow, err, proctest.Tail(stderr.String(), 2000))
		}
		return out
	}

	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	// Published as a producer outside flowrun would: plain JSON payloads
	// without headers, asynchronously. Each message's id is then its
	// stream name and sequence, the same on every redelivery.
	stream, err := ensureStream(context.Background(), js, subject, "")
	must(t, err)
	want := map[string]int64{}
	for i := range scaleMessages {
		player, points, ev := scaleInput(i)
		want[player] += int64(points)
		_, err := js.PublishAsync(subject, ev.Data)
		must(t, err)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		t.Fatalf("publishing %d messages took over a minute", scaleMessages)
	}
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(scaleFlow(url, subject, durable, endpoints, prefix, maxTxnOps)), 0o644))
	t.Logf("built flowrun and published %d messages in %v", scaleMessages, time.Since(start).Round(time.Millisecond))

	type proc struct {
		cmd    *exec.Cmd
		stderr *bytes.Buffer
	}
	startFlow := func(name string) proc {
		cmd := exec.Command(bin, "run", "flow.yaml")
		cmd.Dir = dir
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		must(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		t.Logf("%s: started pid %d", name, cmd.Process.Pid)
		return proc{cmd, &stderr}
	}
	// acked returns how many messages the consumer has had acknowledged
	// and how many are still to deliver or awaiting their ack.
	acked := func() (done, undelivered, ackPending int) {
		info, err := js.ConsumerInfo(stream, durable)
		if err != nil {
			return 0, scaleMessages, 0
		}
		undelivered, ackPending = int(info.NumPending), info.NumAckPending
		return scaleMessages - undelivered - ackPending, undelivered, ackPending
	}
	runStart := time.Now()
	procs := make([]proc, scaleProcesses)
	for i := range procs {
		procs[i] = startFlow(fmt.Sprintf("process %d", i))
	}

	// Kill process 1 once a third of the messages are acknowledged, and
	// restart it a second later.
	deadline := time.Now().Add(4 * time.Minute)
	for {
		done, _, _ := acked()
		if done >= scaleMessages/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages acknowledged after %v\n%s", done, scaleMessages, time.Since(runStart), proctest.Tail(procs[0].stderr.String(), 2000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	must(t, procs[1].cmd.Process.Signal(syscall.SIGKILL))
	_ = procs[1].cmd.Wait()
	done, _, inFlight := acked()
	t.Logf("SIGKILL process 1 after %v: %d messages acknowledged, %d in flight", time.Since(runStart).Round(time.Millisecond), done, inFlight)
	time.Sleep(time.Second)
	procs[1] = startFlow("process 1 (restarted)")

	for {
		_, undelivered, ackPending := acked()
		if undelivered == 0 && ackPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer not drained after %v: %d not delivered, %d awaiting ack\n%s", time.Since(runStart), undelivered, ackPending,
				proctest.Tail(procs[0].stderr.String(), 2000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	redeliveredByBroker := 0
	if info, err := js.ConsumerInfo(stream, durable); err == nil {
		// The consumer sequence counts deliveries, redeliveries included.
		redeliveredByBroker = int(info.Delivered.Consumer) - scaleMessages
	}
	t.Logf("all %d messages acknowledged after %v; the broker redelivered %d messages (the killed process's, at least)",
		scaleMessages, time.Since(runStart).Round(time.Millisecond), redeliveredByBroker)
	for i, p := range procs {
		must(t, p.cmd.Process.Signal(syscall.SIGTERM))
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("process %d after SIGTERM: %v\n%s", i, err, proctest.Tail(p.stderr.String(), 2000))
		}
	}
	redelivered := 0
	for _, p := range procs {
		redelivered += strings.Count(p.stderr.String(), "message failed, redelivering")
	}

	// Nothing was dead-lettered.
	dead, err := js.SubscribeSync(subject+DeadLetterSuffix, nats.DeliverAll(), nats.AckNone())
	if err == nil {
		if m, err := dead.NextMsg(500 * time.Millisecond); err == nil {
			t.Errorf("a message was dead-lettered: %s %v", m.Data, m.Header)
		}
		_ = dead.Unsubscribe()
	}

	// The store: every score exactly its total; every player's leaderboard
	// entries are exactly the running totals of its messages, each reached
	// by one message.
	var queries bytes.Buffer
	queries.WriteString(`{"meta":{"kv":{"get_all":"score/"}}}` + "\n")
	for p := range scalePlayers {
		fmt.Fprintf(&queries, `{"meta":{"kv":{"get_all":"rank/p%02d/"}}}`+"\n", p)
	}
	must(t, os.WriteFile(filepath.Join(dir, "verify.jsonl"), queries.Bytes(), 0o644))
	lines := bytes.Split(bytes.TrimSpace(replay("query.yaml", "verify.jsonl")), []byte("\n"))
	if len(lines) != 1+scalePlayers {
		t.Fatalf("verify output: %d lines, want %d:\n%s", len(lines), 1+scalePlayers, proctest.Tail(string(bytes.Join(lines, []byte("\n"))), 2000))
	}
	scores := gjson.GetBytes(lines[0], "data")
	if n := len(scores.Map()); n != scalePlayers {
		t.Errorf("%d scores in the store, want %d", n, scalePlayers)
	}
	wrong, entries := 0, 0
	messages := map[string]bool{}
	for p := range scalePlayers {
		player := fmt.Sprintf("p%02d", p)
		score := scores.Get("score/" + player).Int()
		if score != want[player] {
			wrong++
			t.Errorf("%s: score %d, want %d", player, score, want[player])
		}
		// Walk the entries from the top: each T minus its points is the
		// previous entry's T, down to 0.
		ranks := map[int64]gjson.Result{}
		gjson.GetBytes(lines[1+p], "data").ForEach(func(k, v gjson.Result) bool {
			total, err := strconv.ParseInt(strings.TrimPrefix(k.String(), "rank/"+player+"/"), 10, 64)
			if err != nil {
				t.Errorf("%s: leaderboard key %s", player, k)
			}
			ranks[total] = v
			messages[v.Get("message").String()] = true
			return true
		})
		entries += len(ranks)
		at, walked := score, 0
		for at > 0 {
			v, ok := ranks[at]
			if !ok {
				t.Errorf("%s: no leaderboard entry for running total %d (score %d)", player, at, score)
				break
			}
			at -= v.Get("points").Int()
			walked++
		}
		if at == 0 && walked != len(ranks) {
			t.Errorf("%s: %d leaderboard entries, %d on the chain from the score down to 0", player, len(ranks), walked)
		}
	}
	if entries != scaleMessages || len(messages) != scaleMessages {
		t.Errorf("%d leaderboard entries from %d distinct messages, want %d of each", entries, len(messages), scaleMessages)
	}
	t.Logf("store: %d scores exact (%d wrong), %d leaderboard entries; %d redeliveries logged; test took %v",
		scalePlayers-wrong, wrong, entries, redelivered, time.Since(start).Round(time.Millisecond))
}
