package kafka_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// TestRoundTripThroughKV: 10,000 kv commands produced to a topic go
// through kafka -> kv -> kafka; every correlation is answered, the results
// carry the command's op, and the group's committed offsets reach the end
// of every partition.
func TestRoundTripThroughKV(t *testing.T) {
	n := 10_000
	if testing.Short() {
		n = 1000
	}
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out")
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = kvInput(i, 100)
	}
	produceEvents(t, brokers, "in", evs)
	out := readTopic(t, brokers, "out")
	start := time.Now()
	rf := runFlow(t, fmt.Sprintf(`name: rt
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: rt, commit_interval: 50ms }
  store:  { type: kv, dir: state }
  output: { type: kafka, mode: write, brokers: %q, topic: out, key: meta.correlation }
links:
  - input/out -> store/in
  - store/out -> output/in
`, strings.Join(brokers, ","), strings.Join(brokers, ",")))
	got := out.until(t, 60*time.Second, distinct(n))
	seen := correlations(got)
	t.Logf("%d results (%d distinct) in %v", len(got), len(seen), time.Since(start).Round(time.Millisecond))
	for i := range n {
		if seen[fmt.Sprintf("m-%d", i)] == 0 {
			t.Fatalf("no result for m-%d (%d of %d answered)", i, len(seen), n)
		}
	}
	for i, ev := range got {
		corr := gjson.GetBytes(ev.Meta, "correlation").String()
		var k int
		fmt.Sscanf(corr, "m-%d", &k)
		want := map[bool]string{true: "increment", false: "put"}[k%2 == 0]
		if op := gjson.GetBytes(ev.Meta, "kv.op").String(); op != want {
			t.Fatalf("result %d: op %q, want %q: %s", i, op, want, ev.Meta)
		}
		if key := string(out.recs[i].Key); key != corr {
			t.Fatalf("result %d: key %q, want the correlation %q", i, key, corr)
		}
		if gjson.GetBytes(ev.Meta, "kafka.offset").Int() != out.recs[i].Offset {
			t.Fatalf("result %d: meta.kafka %s is not the output record's", i, gjson.GetBytes(ev.Meta, "kafka").Raw)
		}
	}
	// Offsets are committed up to the end of each partition.
	ends := endOffsets(t, brokers, "in")
	deadline := time.Now().Add(10 * time.Second)
	for {
		com := committed(t, brokers, "rt", "in")
		ok := true
		for p, end := range ends {
			if com[p] != end {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want the ends %v", com, ends)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rf.stop(t)
}
