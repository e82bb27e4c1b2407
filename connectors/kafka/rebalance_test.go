package kafka_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

// TestRebalanceSecondConsumerJoins: two flows in one consumer group on
// kfake; the second joins while the first is midway. The cooperative
// rebalance revokes some partitions from the first, which finishes (or
// abandons) their records in flight and commits before handing them over.
// No record is lost: every correlation is answered, and the committed
// offsets reach the end of every partition; and since the revoke waits for
// the records in flight and commits them, none is answered twice.
func TestRebalanceSecondConsumerJoins(t *testing.T) {
	n := 4000
	if testing.Short() {
		n = 1000
	}
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out")
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = kvInput(i, 50)
	}
	produceEvents(t, brokers, "in", evs)
	out := readTopic(t, brokers, "out")
	b := strings.Join(brokers, ",")
	flow := fmt.Sprintf(`name: rb
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: shared, window: 32, commit_interval: 100ms }
  store:  { type: kv, dir: state }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
links:
  - input/out -> store/in
  - store/out -> output/in
`, b, b)
	first := runFlow(t, flow)
	out.until(t, 60*time.Second, distinct(n/4))
	atJoin := len(correlations(out.evs))
	second := runFlow(t, flow)
	got := out.until(t, 90*time.Second, distinct(n))
	seen := correlations(got)
	for i := range n {
		if seen[fmt.Sprintf("m-%d", i)] == 0 {
			t.Fatalf("no result for m-%d (%d of %d answered)", i, len(seen), n)
		}
	}
	ends := endOffsets(t, brokers, "in")
	deadline := time.Now().Add(20 * time.Second)
	for {
		com := committed(t, brokers, "shared", "in")
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
	out.poll(t, 300*time.Millisecond)
	dups := len(out.evs) - n
	t.Logf("second consumer joined after %d of %d answers; %d results, %d duplicates", atJoin, n, len(out.evs), dups)
	// The revoke waited for the records in flight (no failures here, and
	// revoke_wait is ample) and committed them: the new owner starts
	// exactly after them, so nothing is answered twice.
	if dups != 0 {
		t.Errorf("%d duplicates: the revoked partitions were not committed up to their finished records", dups)
	}
	second.stop(t)
	first.stop(t)
}
