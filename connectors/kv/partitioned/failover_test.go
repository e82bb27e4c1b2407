package partitioned_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/internal/proctest"
)

// answer is one result a flow instance published: the increment of input
// message corr on key reached value.
type answer struct {
	corr  int
	key   string
	value int64
	at    time.Time // stored by the broker
}

// TestFailoverOfProcesses is the process-level proof of partitioned
// state: three `flowrun run` instances of one flow share 12 partitions of
// a kv store whose changelogs and input live on the three-node JetStream
// cluster; 100,000 increments over 10,000 keys are published to the
// partition subjects. One instance is SIGKILLed after a third of the
// messages are answered, a second after two thirds; the last one takes
// every partition over. Every message is answered, each with one value
// (a redelivered message is answered from its idempotency record), and
// every key's answers are exactly 1..10: no increment lost or applied
// twice. The time from each kill until every partition answers again is
// logged (docs/scaling.md reports it): the second kill comes once every
// partition answered after the first. The "sigstop" scenario pauses an
// instance instead; "natsnode" kills a NATS node (see failover).
func TestFailoverOfProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("three processes and 100,000 messages; skipped with -short")
	}
	for _, scenario := range []string{"sigkill", "sigstop", "natsnode"} {
		t.Run(scenario, func(t *testing.T) { failover(t, scenario) })
	}
}

// failover runs TestFailoverOfProcesses's flow through one scenario:
// "sigkill" kills two instances one after the other; "sigstop" pauses one
// past its leases (SIGSTOP), lets the others take its partitions over,
// then resumes it (SIGCONT): whatever it still had in flight cannot be
// applied over the new owners (its changelog appends are fenced), which
// the exact answers prove; "natsnode" runs the flow on a cluster of its
// own and SIGKILLs the NATS node leading the most streams, restarting it
// on its storage a few seconds later (see natsNodeDown).
func failover(t *testing.T, scenario string) {
	var (
		urls    string
		js      jetstream.JetStream
		cluster *natstest.Cluster
	)
	if scenario == "natsnode" {
		// Never kill a node of the shared cluster: other tests use it.
		cluster = natstest.StartCluster(t)
		urls, js = cluster.URLs, natstest.JetStreamAt(t, cluster.URLs)
	} else {
		urls, js = natstest.ClusterURLs(t), natstest.JetStream(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	began := time.Now()

	const (
		parts = 12
		per   = 10
	)
	keys, maxDeliveries := 10000, bus.DefaultMaxDeliveries
	if scenario == "natsnode" {
		// Half the messages: the private cluster's start and the
		// node's downtime add to the run, which stays within about a
		// minute on a loaded 2-core machine.
		keys = 5000
		// While the node is down, settlements fail and leases lapse
		// and move, each time redelivering what was in flight: on a
		// heavily loaded machine a message was once delivered 6 times
		// unsettled and set aside as if it crashed its process each
		// time (docs/scaling.md, "Failure cases and limits").
		maxDeliveries = 20
	}
	n := keys * per
	base := natstest.Name("failover")
	in, out := base+".in", base+".out"
	for _, sc := range []jetstream.StreamConfig{
		{Name: bus.PartitionStreamName(in), Subjects: []string{bus.PartitionFilter(in)}, Replicas: 3},
		{Name: bus.StreamName(out), Subjects: []string{out}, Replicas: 3},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatalf("create stream %s: %v", sc.Name, err)
		}
	}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer dcancel()
		_ = js.DeleteStream(dctx, bus.PartitionStreamName(in))
		_ = js.DeleteStream(dctx, bus.StreamName(out))
	})

	// Publish every increment to its partition's subject, as a producer
	// that knows the key does (the repartition stage does the same).
	for i := range n {
		k := fmt.Sprintf("k%05d", i%keys)
		subj := partition.Subject(in, partition.OfString("c/"+k, parts))
		if _, err := js.PublishAsync(subj, fmt.Appendf(nil, `{"k":%q,"i":%d}`, k, i)); err != nil {
			t.Fatalf("publish: %v", err)
		}
		if i%4096 == 4095 {
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				t.Fatal("publishing timed out")
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishing timed out")
	}

	work := t.TempDir()
	bin := proctest.BuildFlowrun(t, work)
	flow := fmt.Sprintf(`name: %s
connectors:
  input:   { type: nats, mode: read, url: %q, subject: %s, durable: counts, partitions_of: store, window: 256, max_deliveries: %d }
  store:
    type: kv
    dir: state
    partitions: %d
    changelog: { urls: %q, replicas: 3 }
    idem_from: message_id
  answers: { type: nats, mode: write, url: %q, subject: %s }
pipelines:
  apply:
    - set:
        meta.kv: '{"increment": "c/" + data.k}'
        meta.correlation: data.i
links:
  - input/out -> apply/in
  - apply/out -> store/in
  - store/out -> answers/in
`, base, urls, in, maxDeliveries, parts, urls, urls, out)

	type instance struct {
		cmd  *exec.Cmd
		logs *bytes.Buffer
		done chan error
	}
	start := func(name string) *instance {
		dir := filepath.Join(work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		in := &instance{logs: &bytes.Buffer{}, done: make(chan error, 1)}
		// Each instance has its flow file, and so its state directory
		// (relative to the file), in a directory of its own, as on
		// machines of their own.
		flowPath := filepath.Join(dir, "flow.yaml")
		if err := os.WriteFile(flowPath, []byte(flow), 0o644); err != nil {
			t.Fatal(err)
		}
		in.cmd = exec.Command(bin, "run", flowPath)
		in.cmd.Dir = dir
		in.cmd.Stderr = &syncWriter{w: in.logs}
		if err := in.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { in.done <- in.cmd.Wait() }()
		t.Cleanup(func() {
			_ = in.cmd.Process.Kill()
			<-in.done
			if t.Failed() || os.Getenv("FLOWRUN_TEST_LOGS") != "" {
				t.Logf("%s's log:\n%s", name, proctest.Tail(in.logs.String(), 4000))
			}
		})
		return in
	}
	a, b, c := start("a"), start("b"), start("c")
	kill := func(name string, in *instance) time.Time {
		t.Helper()
		select {
		case err := <-in.done:
			in.done <- err
			t.Fatalf("instance %s exited by itself before its kill (%v):\n%s", name, err, proctest.Tail(in.logs.String(), 4000))
		default:
		}
		at := time.Now()
		if err := in.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		return at
	}

	// Read the answers as they are stored.
	var (
		mu      sync.Mutex
		answers []answer
	)
	cons, err := js.OrderedConsumer(ctx, bus.StreamName(out), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	readCtx, stopReading := context.WithCancel(ctx)
	readDone := make(chan error, 1)
	go func() {
		var lastSeq uint64
		for readCtx.Err() == nil {
			batch, err := cons.Fetch(1024, jetstream.FetchMaxWait(500*time.Millisecond))
			if err != nil {
				continue
			}
			for m := range batch.Messages() {
				md, err := m.Metadata()
				if err != nil {
					readDone <- err
					return
				}
				corr, err := strconv.Atoi(m.Headers().Get(bus.CorrelationKey))
				if err != nil {
					readDone <- fmt.Errorf("answer without a numeric correlation: %v %s", m.Headers(), m.Data())
					return
				}
				v, err := strconv.ParseInt(string(m.Data()), 10, 64)
				if err != nil {
					readDone <- fmt.Errorf("answer %d: data %q is not a count", corr, m.Data())
					return
				}
				key := gjson.Get(m.Headers().Get("kv"), "key").String()
				if md.Sequence.Stream <= lastSeq {
					continue // the ordered consumer delivered it again
				}
				lastSeq = md.Sequence.Stream
				mu.Lock()
				answers = append(answers, answer{corr: corr, key: key, value: v, at: md.Timestamp})
				mu.Unlock()
			}
		}
		readDone <- nil
	}()
	distinct := func() int {
		mu.Lock()
		defer mu.Unlock()
		seen := make(map[int]bool, len(answers))
		for _, a := range answers {
			seen[a.corr] = true
		}
		return len(seen)
	}
	// deadLettered fails the test when the source set input messages
	// aside: they are never answered, so waiting for them would only
	// time out.
	deadLettered := func() {
		t.Helper()
		info, err := js.Stream(ctx, bus.StreamName(in+bus.DeadLetterSuffix))
		if err != nil {
			return // not created yet, or the broker is busy: next time
		}
		if msgs := info.CachedInfo().State.Msgs; msgs > 0 {
			t.Fatalf("%d input messages dead-lettered (never applied); %d of %d answered", msgs, distinct(), n)
		}
	}
	waitFor := func(what string, want int) {
		t.Helper()
		for i := 0; distinct() < want; i++ {
			if i%20 == 19 {
				deadLettered()
			}
			select {
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %s: %d of %d answered", what, distinct(), n)
			case err := <-readDone:
				t.Fatalf("reading answers: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	// waitRecovered waits until every partition answered after at.
	waitRecovered := func(what string, at time.Time) {
		t.Helper()
		for {
			mu.Lock()
			recovered := recovered(answers, at, parts)
			mu.Unlock()
			if recovered == parts {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("timed out waiting for the partitions to answer again after %s: %d of %d", what, recovered, parts)
			case err := <-readDone:
				t.Fatalf("reading answers: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	terminate := func(name string, in *instance) {
		t.Helper()
		if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-in.done:
			in.done <- err
			if err != nil {
				t.Errorf("instance %s exited with %v after SIGTERM", name, err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("instance %s did not exit within 60 s of SIGTERM", name)
		}
	}

	terminateAll := func() {
		t.Helper()
		terminate("a", a)
		terminate("b", b)
		terminate("c", c)
	}

	var marks []time.Time
	switch scenario {
	case "sigkill":
		waitFor("a third of the answers", n/3)
		kill1 := kill("a", a)
		waitFor("two thirds of the answers", 2*n/3)
		// The second kill comes once every partition answered again
		// after the first, so that each kill's failover is measured on
		// its own.
		waitRecovered("the first kill", kill1)
		kill2 := kill("b", b)
		marks = []time.Time{kill1, kill2}
		waitFor("every answer", n)
		terminate("c", c)
	case "sigstop":
		waitFor("a third of the answers", n/3)
		stopped := time.Now()
		if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// Every partition answering again means the others took the
		// paused instance's partitions over: it is past its leases.
		waitRecovered("the pause", stopped)
		if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		marks = []time.Time{stopped}
		waitFor("every answer", n)
		terminateAll()
	case "natsnode":
		waitFor("a third of the answers", n/3)
		marks = []time.Time{natsNodeDown(ctx, t, js, cluster)}
		waitRecovered("the NATS node's kill", marks[0])
		waitFor("every answer", n)
		terminateAll()
	}
	stopReading()
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	// Each message is answered with one value, however often it was
	// delivered; each key's values are exactly 1..per.
	valueOf := map[int]int64{}
	dups := 0
	for _, a := range answers {
		if v, ok := valueOf[a.corr]; ok {
			dups++
			if v != a.value {
				t.Fatalf("message %d answered %d and %d: applied twice", a.corr, v, a.value)
			}
			continue
		}
		valueOf[a.corr] = a.value
	}
	if len(valueOf) != n {
		t.Fatalf("%d of %d messages answered", len(valueOf), n)
	}
	byKey := map[string][]int64{}
	for corr, v := range valueOf {
		k := fmt.Sprintf("k%05d", corr%keys)
		byKey[k] = append(byKey[k], v)
	}
	want := make([]int64, per)
	for i := range want {
		want[i] = int64(i + 1)
	}
	for k, vs := range byKey {
		slices.Sort(vs)
		if !slices.Equal(vs, want) {
			t.Fatalf("key %s: increments answered %v, want 1..%d: an increment lost or applied twice", k, vs, per)
		}
	}
	t.Logf("%d messages, %d answers (%d, %.2f%%, repeated from idempotency records)", n, len(answers), dups, 100*float64(dups)/float64(len(answers)))
	if info, err := js.Stream(ctx, bus.StreamName(out)); err == nil {
		t.Logf("answers stream holds %d messages", info.CachedInfo().State.Msgs)
	}
	for p := range parts {
		c, err := js.Consumer(ctx, bus.PartitionStreamName(in), bus.PartitionDurable("counts", p))
		if err != nil {
			t.Logf("partition %d consumer: %v", p, err)
			continue
		}
		ci := c.CachedInfo()
		t.Logf("partition %d: %d delivered for %d stream messages, %d redelivered", p, ci.Delivered.Consumer, ci.Delivered.Stream, ci.NumRedelivered)
	}
	t.Logf("run took %v", time.Since(began).Round(time.Second))
	for i, mark := range marks {
		t.Logf("%s %d at %s: every partition answered again %v after it", scenario, i+1, mark.UTC().Format("15:04:05.000"), recovery(answers, mark, parts).Round(time.Millisecond))
	}
}

// natsNodeDown SIGKILLs the node of cluster that leads the most streams
// (the flow's changelogs, its lease stream, its input and the answers),
// restarts it on the same storage nodeDowntime later, and returns when it
// was killed.
func natsNodeDown(ctx context.Context, t *testing.T, js jetstream.JetStream, cluster *natstest.Cluster) time.Time {
	t.Helper()
	led := map[int][]string{}
	streams := js.ListStreams(ctx)
	for info := range streams.Info() {
		if info.Cluster != nil {
			n := cluster.Node(info.Cluster.Leader)
			led[n] = append(led[n], info.Config.Name)
		}
	}
	if err := streams.Err(); err != nil {
		t.Fatalf("list the streams: %v", err)
	}
	node := 0
	for n := 1; n <= 3; n++ {
		if node == 0 || len(led[n]) > len(led[node]) {
			node = n
		}
	}
	for n := 1; n <= 3; n++ {
		slices.Sort(led[n])
		t.Logf("NATS node %d leads %d streams: %v", n, len(led[n]), led[n])
	}
	at := time.Now()
	if err := cluster.Kill(node); err != nil {
		t.Fatal(err)
	}
	select {
	case <-time.After(nodeDowntime):
	case <-ctx.Done():
		t.Fatal("timed out while the NATS node was down")
	}
	if err := cluster.Restart(node); err != nil {
		t.Fatal(err)
	}
	t.Logf("NATS node %d SIGKILLed at %s, restarted on its storage %v later", node, at.UTC().Format("15:04:05.000"), time.Since(at).Round(time.Millisecond))
	return at
}

// nodeDowntime is how long natsNodeDown leaves the killed node down: past
// the flow's lease TTL (5 s), so that leases held through it must have
// moved.
const nodeDowntime = 6 * time.Second

// recovery returns how long after kill the last partition to answer
// again did so: each partition's first answer stored after kill, the
// latest of them (partitions of the killed instance answer once taken
// over; the others at once).
func recovery(answers []answer, kill time.Time, parts int) time.Duration {
	first := map[int]time.Time{}
	for _, a := range answers {
		if !a.at.After(kill) {
			continue
		}
		p := partition.OfString(a.key, parts)
		if f, ok := first[p]; !ok || a.at.Before(f) {
			first[p] = a.at
		}
	}
	var ds []time.Duration
	for _, f := range first {
		ds = append(ds, f.Sub(kill))
	}
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)-1]
}

// recovered returns how many partitions answered after kill.
func recovered(answers []answer, kill time.Time, parts int) int {
	seen := map[int]bool{}
	for _, a := range answers {
		if a.at.After(kill) {
			seen[partition.OfString(a.key, parts)] = true
		}
	}
	return len(seen)
}

// syncWriter serialises writes to w (a process's stderr copied by exec).
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
