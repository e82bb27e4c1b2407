package partitioned_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/internal/incrflow"
	"github.com/flowrun/flowrun/internal/lease"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/internal/proctest"
)

// TestFailoverOfProcesses is the process-level proof of partitioned
// state: three `flowrun run` instances of one flow share 12 partitions of
// a kv store whose changelogs and input live on the three-node JetStream
// cluster; 30,000 increments over 3,000 keys are published to the
// partition subjects, the last third only once the first kill has been
// taken over. One instance is SIGKILLed after a third of the messages
// are answered, a second once every partition answered again and a
// quarter of the last third is answered; the last one takes every
// partition over. Every message is answered, each with one value
// (a redelivered message is answered from its idempotency record), and
// every key's answers are exactly 1..10: no increment lost or applied
// twice. The time from each kill until every partition answers again is
// logged (docs/scaling.md reports it). The "sigstop" scenario pauses an
// instance instead; "natsnode" kills a NATS node (see failover).
func TestFailoverOfProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("three processes and 30,000 messages a scenario; skipped with -short")
	}
	for _, scenario := range []string{"sigkill", "sigstop", "natsnode"} {
		t.Run(scenario, func(t *testing.T) {
			failover(t, scenario)
		})
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
	// Bounded well inside the package's 10-minute test timeout, so that a
	// run that stalls fails with the instances' logs.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	began := time.Now()
	// api bounds one JetStream API call made while waiting: a request
	// the cluster never answers (seen under load) must cost seconds, not
	// the rest of ctx with no report.
	api := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, apiWait) }

	const (
		parts = 12
		per   = 10
	)
	// Enough messages that each kill or pause comes while every
	// instance is busy, few enough that CI's loaded 2 cores run the three
	// scenarios in a few minutes.
	keys, maxDeliveries := 3000, bus.DefaultMaxDeliveries
	if scenario == "natsnode" {
		// Fewer: the private cluster's start and the node's downtime
		// add to the run.
		keys = 2000
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
	for _, sc := range []jetstream.StreamConfig{incrflow.InputStream(in), incrflow.AnswerStream(out)} {
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

	// The witness sees every answer published and every acknowledgement
	// of one, so that a stall tells which side lost a missing answer.
	witness, err := incrflow.Watch(urls, out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(witness.Close)

	// Publish the increments to their partitions' subjects, as a
	// producer that knows the key does (the repartition stage does the
	// same). "sigkill" holds the last third back until its second kill
	// (see there); published is how many are out.
	published := n
	if scenario == "sigkill" {
		published = 2 * n / 3
	}
	if err := incrflow.PublishRange(ctx, js, in, 0, published, keys, parts); err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	bin := proctest.BuildFlowrun(t, work)
	flow, err := incrflow.Flow{Name: base, URLs: urls, In: in, Out: out, Durable: "counts", Partitions: parts, MaxDeliveries: maxDeliveries}.YAML()
	if err != nil {
		t.Fatal(err)
	}

	var instances []named
	start := func(name string) *incrflow.Instance {
		// Each instance has its flow file, and so its state directory
		// (relative to the file), in a directory of its own, as on
		// machines of their own.
		in, err := incrflow.Start(bin, filepath.Join(work, name), flow)
		if err != nil {
			t.Fatal(err)
		}
		instances = append(instances, named{name, in})
		t.Cleanup(func() {
			in.Kill()
			if t.Failed() || os.Getenv("FLOWRUN_TEST_LOGS") != "" {
				t.Logf("%s's log:\n%s", name, proctest.Tail(in.Logs(), 4000))
			}
		})
		return in
	}
	a, b, c := start("a"), start("b"), start("c")
	kill := func(name string, in *incrflow.Instance) time.Time {
		t.Helper()
		if exited, err := in.Exited(); exited {
			t.Fatalf("instance %s exited by itself before its kill (%v):\n%s", name, err, proctest.Tail(in.Logs(), 4000))
		}
		at := time.Now()
		if err := in.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		return at
	}

	// Read the answers as they are stored.
	var (
		mu      sync.Mutex
		answers []incrflow.Answer
	)
	reader, err := incrflow.NewReader(ctx, js, out)
	if err != nil {
		t.Fatal(err)
	}
	readCtx, stopReading := context.WithCancel(ctx)
	readDone := make(chan error, 1)
	go func() {
		var got []incrflow.Answer
		for readCtx.Err() == nil {
			var err error
			got, err = reader.Fetch(got[:0], 1024, 500*time.Millisecond)
			if errors.Is(err, incrflow.ErrBadAnswer) {
				readDone <- err
				return
			}
			mu.Lock()
			answers = append(answers, got...)
			mu.Unlock()
		}
		readDone <- nil
	}()
	distinct := func() int {
		mu.Lock()
		defer mu.Unlock()
		seen := make(map[int]bool, len(answers))
		for _, a := range answers {
			seen[a.Corr] = true
		}
		return len(seen)
	}
	// deadLettered fails the test when the source set input messages
	// aside: they are never answered, so waiting for them would only
	// time out.
	deadLettered := func() {
		t.Helper()
		actx, acancel := api()
		info, err := js.Stream(actx, bus.StreamName(in+bus.DeadLetterSuffix))
		acancel()
		if err != nil {
			return // not created yet, or the broker is busy: next time
		}
		if msgs := info.CachedInfo().State.Msgs; msgs > 0 {
			t.Fatalf("%d input messages dead-lettered (never applied); %d of %d answered", msgs, distinct(), n)
		}
	}
	// stalled reports, and diagnoses, a run in which no new message was
	// answered for stallAfter: the partitions still to answer are stuck,
	// and waiting longer only hides where.
	var (
		progress     int
		progressedAt = time.Now()
	)
	stalled := func(what string) bool {
		t.Helper()
		if d := distinct(); d != progress {
			progress, progressedAt = d, time.Now()
			return false
		}
		if time.Since(progressedAt) < stallAfter {
			return false
		}
		mu.Lock()
		snapshot := slices.Clone(answers)
		mu.Unlock()
		// Whether the answers missing are missing from the stream, or
		// only from what the test read of it.
		var readTo uint64
		for _, a := range snapshot {
			readTo = max(readTo, a.Seq)
		}
		actx, acancel := api()
		defer acancel()
		if info, err := js.Stream(actx, bus.StreamName(out)); err == nil {
			st := info.CachedInfo().State
			t.Logf("stall: answers stream holds %d messages, last %d; the test read %d of them, up to %d", st.Msgs, st.LastSeq, len(snapshot), readTo)
		}
		if info, err := js.Stream(actx, bus.StreamName(in+bus.DeadLetterSuffix)); err == nil {
			t.Logf("stall: dead letters: %d", info.CachedInfo().State.Msgs)
		} else {
			t.Logf("stall: dead letters: %v", err)
		}
		if missing := reportMissing(t, snapshot, n, keys, parts); len(missing) > 0 {
			wctx, wcancel := context.WithTimeout(context.Background(), 60*time.Second)
			e, err := witness.Explain(wctx, js, missing)
			wcancel()
			if err != nil {
				t.Logf("stall: the witness: %v", err)
			}
			t.Logf("stall: the witness on the missing answers: %s", e)
		}
		diagnoseStall(t, js, base, in, parts, snapshot, instances)
		t.Errorf("no message answered for %v while waiting for %s: %d of %d answered", stallAfter, what, progress, n)
		return true
	}
	// readFailed fails the test for the reader's end: an error, or ctx's
	// end, which also ends the reader (err nil).
	readFailed := func(err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("timed out (%v): %d of %d answered", ctx.Err(), distinct(), n)
		}
		t.Fatalf("reading answers: %v", err)
	}
	waitFor := func(what string, want int) {
		t.Helper()
		for i := 0; distinct() < want; i++ {
			if i%20 == 19 {
				deadLettered()
			}
			if stalled(what) {
				t.FailNow()
			}
			select {
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %s: %d of %d answered", what, distinct(), n)
			case err := <-readDone:
				readFailed(err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	// waitRecovered waits until every partition answered after at.
	waitRecovered := func(what string, at time.Time) {
		t.Helper()
		for {
			mu.Lock()
			recovered := recovered(answers, at, parts, published, keys)
			mu.Unlock()
			if recovered == parts {
				return
			}
			if stalled("every partition to answer after " + what) {
				t.FailNow()
			}
			select {
			case <-ctx.Done():
				t.Fatalf("timed out waiting for the partitions to answer again after %s: %d of %d", what, recovered, parts)
			case err := <-readDone:
				readFailed(err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	terminate := func(name string, in *incrflow.Instance) {
		t.Helper()
		if err := in.Stop(60 * time.Second); err != nil {
			t.Errorf("instance %s after SIGTERM: %v", name, err)
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
		waitFor("the two thirds published", published)
		// The second kill comes once every partition answered again
		// after the first, so that each kill's failover is measured on
		// its own, and while b is busy with the last third: published
		// only now, it would otherwise have been answered before.
		waitRecovered("the first kill", kill1)
		if err := incrflow.PublishRange(ctx, js, in, published, n, keys, parts); err != nil {
			t.Fatal(err)
		}
		published = n
		waitFor("a quarter of the last third", 3*n/4)
		kill2 := kill("b", b)
		marks = []time.Time{kill1, kill2}
		waitFor("every answer", n)
		terminate("c", c)
	case "sigstop":
		waitFor("a third of the answers", n/3)
		stopped := time.Now()
		if err := a.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// Every partition answering again means the others took the
		// paused instance's partitions over: it is past its leases.
		waitRecovered("the pause", stopped)
		if err := a.Signal(syscall.SIGCONT); err != nil {
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
	if reader.Restarts > 0 {
		t.Logf("the answers' reader made its consumer again %d times: %d after a gap in the sequences it got, the rest after an empty fetch while the stream held more", reader.Restarts, reader.Gaps)
	}

	mu.Lock()
	defer mu.Unlock()
	// Each message is answered with one value, however often it was
	// delivered; each key's values are exactly 1..per.
	sum, err := incrflow.Check(answers, n, keys)
	if err != nil {
		t.Fatal(err)
	}
	dups := sum.Repeated
	t.Logf("%d messages, %d answers (%d, %.2f%%, repeated from idempotency records)", n, len(answers), dups, 100*float64(dups)/float64(len(answers)))
	actx, acancel := api()
	defer acancel()
	if info, err := js.Stream(actx, bus.StreamName(out)); err == nil {
		t.Logf("answers stream holds %d messages", info.CachedInfo().State.Msgs)
	}
	for p := range parts {
		c, err := js.Consumer(actx, bus.PartitionStreamName(in), bus.PartitionDurable("counts", p))
		if err != nil {
			t.Logf("partition %d consumer: %v", p, err)
			continue
		}
		ci := c.CachedInfo()
		t.Logf("partition %d: %d delivered for %d stream messages, %d redelivered", p, ci.Delivered.Consumer, ci.Delivered.Stream, ci.NumRedelivered)
	}
	acked, lost, details := witness.Audit(answers)
	t.Logf("the witness saw %d publishes of answers acknowledged; %d of them at a sequence holding another answer or none %q", acked, lost, details)
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
	lctx, lcancel := context.WithTimeout(ctx, apiWait)
	defer lcancel()
	streams := js.ListStreams(lctx)
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
func recovery(answers []incrflow.Answer, kill time.Time, parts int) time.Duration {
	first := map[int]time.Time{}
	for _, a := range answers {
		if !a.At.After(kill) {
			continue
		}
		p := partition.OfString(a.Key, parts)
		if f, ok := first[p]; !ok || a.At.Before(f) {
			first[p] = a.At
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

// recovered returns how many partitions answered after kill, or have
// every one of their messages (of the n published, over keys keys)
// answered: a partition whose input was all answered before the kill has
// nothing left to answer after it.
func recovered(answers []incrflow.Answer, kill time.Time, parts, n, keys int) int {
	seen := map[int]bool{}
	answered := map[int]bool{}
	for _, a := range answers {
		p := partition.OfString(a.Key, parts)
		if a.At.After(kill) {
			seen[p] = true
		}
		answered[a.Corr] = true
	}
	left := map[int]bool{} // partitions with a message not answered
	for i := range n {
		if !answered[i] {
			left[partition.OfString(incrflow.StoreKey(i, keys), parts)] = true
		}
	}
	count := 0
	for p := range parts {
		if seen[p] || !left[p] {
			count++
		}
	}
	return count
}

// apiWait bounds each JetStream API call failover makes while it waits.
const apiWait = 10 * time.Second

// stallAfter is how long failover waits without a new answer before it
// takes a stall for one: it diagnoses it (diagnoseStall) and fails. Every
// scenario's longest quiet spell is a lease TTL and a take-over, seconds.
const stallAfter = 90 * time.Second

// named is an instance of the flow and its name in the test.
type named struct {
	name string
	in   *incrflow.Instance
}

// diagnoseStall logs what a stalled run of group's flow (input base
// subject in) looks like from the broker: for each partition, its last
// answer, its input consumer's state (pending, waiting for acks, pull
// requests waiting, leader), its lease's holder and its changelog's
// leader; then it makes each live instance dump its goroutines (SIGQUIT)
// and writes each instance's whole log into a directory that outlives
// the test, whose path it logs.
func diagnoseStall(t *testing.T, js jetstream.JetStream, group, in string, parts int, answers []incrflow.Answer, instances []named) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	last := map[int]time.Time{}
	for _, a := range answers {
		p := partition.OfString(a.Key, parts)
		if a.At.After(last[p]) {
			last[p] = a.At
		}
	}
	holders := map[string]string{}
	if table, err := lease.Open(ctx, js, partitioned.LeaseStream(group), "stall-diagnosis", lease.Options{}); err != nil {
		t.Logf("stall: lease stream: %v", err)
	} else if states, err := table.Survey(ctx, "p."); err != nil {
		t.Logf("stall: partition leases: %v", err)
	} else {
		for _, st := range states {
			holders[st.Name] = fmt.Sprintf("%s (revision %d)", st.Holder, st.Revision)
		}
	}
	leader := func(ci *jetstream.ClusterInfo) string {
		if ci == nil {
			return "?"
		}
		return ci.Leader
	}
	for p := range parts {
		line := fmt.Sprintf("stall: partition %d: last answer %s; lease %s", p, last[p].UTC().Format("15:04:05.000"), holders["p."+partition.Token(p)])
		if c, err := js.Consumer(ctx, bus.PartitionStreamName(in), bus.PartitionDurable("counts", p)); err != nil {
			line += fmt.Sprintf("; consumer: %v", err)
		} else {
			ci := c.CachedInfo()
			line += fmt.Sprintf("; consumer: %d pending, %d waiting for acks, %d pull requests waiting, %d redelivered, delivered %d/%d, ack floor %d/%d, leader %s",
				ci.NumPending, ci.NumAckPending, ci.NumWaiting, ci.NumRedelivered, ci.Delivered.Consumer, ci.Delivered.Stream,
				ci.AckFloor.Consumer, ci.AckFloor.Stream, leader(ci.Cluster))
		}
		name, _ := partitioned.ChangelogStream(group, p)
		if s, err := js.Stream(ctx, name); err != nil {
			line += fmt.Sprintf("; changelog: %v", err)
		} else {
			si := s.CachedInfo()
			line += fmt.Sprintf("; changelog: last %d, leader %s", si.State.LastSeq, leader(si.Cluster))
		}
		t.Log(line)
	}
	dir, err := os.MkdirTemp("", "flowrun-stall-*")
	if err != nil {
		t.Logf("stall: no directory for the instances' logs: %v", err)
		return
	}
	for _, n := range instances {
		if exited, _ := n.in.Exited(); !exited {
			// The Go runtime prints every goroutine's stack on SIGQUIT
			// and exits.
			_ = n.in.Signal(syscall.SIGQUIT)
			for i := 0; i < 100; i++ {
				if exited, _ := n.in.Exited(); exited {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		path := filepath.Join(dir, n.name+".log")
		if err := os.WriteFile(path, []byte(n.in.Logs()), 0o644); err != nil {
			t.Logf("stall: %v", err)
		}
	}
	t.Logf("stall: the instances' whole logs, with their goroutines at the stall, are in %s", dir)
}

// TestRecoveredCountsFinishedPartitions: a partition whose messages were
// all answered before the kill counts as recovered (it has nothing left
// to answer); one with a message left counts once it answers after it.
func TestRecoveredCountsFinishedPartitions(t *testing.T) {
	const n, keys, parts = 4, 4, 2
	kill := time.Unix(100, 0)
	before, after := kill.Add(-time.Second), kill.Add(time.Second)
	answer := func(i int, at time.Time) incrflow.Answer {
		return incrflow.Answer{Corr: i, Key: incrflow.StoreKey(i, keys), Value: 1, At: at}
	}
	byPart := map[int][]int{}
	for i := range n {
		p := partition.OfString(incrflow.StoreKey(i, keys), parts)
		byPart[p] = append(byPart[p], i)
	}
	if len(byPart) != parts {
		t.Fatalf("the %d keys fall into %d partitions, want %d: pick other keys", keys, len(byPart), parts)
	}
	var all []incrflow.Answer
	for i := range n {
		all = append(all, answer(i, before))
	}
	first := byPart[0]
	for _, tc := range []struct {
		name    string
		answers []incrflow.Answer
		want    int
	}{
		{"everything answered before the kill", all, parts},
		{"nothing answered", nil, 0},
		{"partition 0 answered before, partition 1 not at all", func() (as []incrflow.Answer) {
			for _, i := range first {
				as = append(as, answer(i, before))
			}
			return as
		}(), 1},
		{"one answer of partition 1 after the kill, the rest not", []incrflow.Answer{answer(byPart[1][0], after)}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := recovered(tc.answers, kill, parts, n, keys); got != tc.want {
				t.Fatalf("recovered = %d, want %d", got, tc.want)
			}
		})
	}
}

// reportMissing logs, at a stall, which of messages 0..n-1 have no answer
// (the first few, and how many by partition) and, for their keys, the
// counts answered: a key whose highest count answered is its number of
// messages had every increment applied, so its missing answers were
// lost after the store applied them; a lower one, that they were not
// applied (or not yet). It returns the messages without an answer.
func reportMissing(t *testing.T, answers []incrflow.Answer, n, keys, parts int) (missing []int) {
	t.Helper()
	seen := make(map[int]bool, len(answers))
	top := map[string]int64{}
	for _, a := range answers {
		seen[a.Corr] = true
		top[a.Key] = max(top[a.Key], a.Value)
	}
	var first []int
	byPart := map[int]int{}
	applied, unapplied := 0, 0
	perKey := map[string]int64{}
	for i := range n {
		perKey[incrflow.StoreKey(i, keys)]++
	}
	for i := range n {
		if seen[i] {
			continue
		}
		if len(first) < 8 {
			first = append(first, i)
		}
		missing = append(missing, i)
		k := incrflow.StoreKey(i, keys)
		byPart[partition.OfString(k, parts)]++
		if top[k] == perKey[k] {
			applied++
		} else {
			unapplied++
		}
	}
	t.Logf("stall: %d of %d answered; missing: first %v, by partition %v; %d of them on keys whose every increment was answered for (applied, answer lost), %d on keys short of their count",
		len(seen), n, first, byPart, applied, unapplied)
	return missing
}
