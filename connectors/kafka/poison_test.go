package kafka_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// TestPoisonRecordRetriedInPlaceThenDeadLettered: a record whose kv
// command always fails is handed over again (same message_id, seen on each
// failure) until max_deliveries, then produced to the dead-letter topic
// with its key, its error and its coordinates (header kafka_origin); the
// records after it in the same partition flow meanwhile, and the
// partition's committed offset passes the poison record only once it is
// dead-lettered.
func TestPoisonRecordRetriedInPlaceThenDeadLettered(t *testing.T) {
	const maxDeliveries = 3
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out", "errs", "in.dead")
	evs := []pipeline.Event{{Data: []byte(`{}`), Meta: []byte(`{"correlation":"poison","kv":{"frobnicate":"k"}}`)}}
	for i := range 20 {
		evs = append(evs, pipeline.Event{Data: []byte(`{}`), Meta: []byte(fmt.Sprintf(`{"correlation":"ok-%d","kv":{"increment":"n"}}`, i))})
	}
	// One key: one partition, the poison record first.
	produceKeyed(t, brokers, "in", evs, func(int) string { return "same" })
	b := strings.Join(brokers, ",")
	errs, out, dead := readTopic(t, brokers, "errs"), readTopic(t, brokers, "out"), readTopic(t, brokers, "in.dead")
	rf := runFlow(t, fmt.Sprintf(`name: poison
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: poison, max_deliveries: %d, commit_interval: 20ms }
  store:  { type: kv, dir: state }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
  errors: { type: kafka, mode: write, brokers: %q, topic: errs }
pipelines:
  copy:
    - set:
        meta.id: meta.message_id
links:
  - input/out -> store/in
  - store/out -> output/in
  - input/out -> copy/in
  - copy/out -> errors/in
`, b, maxDeliveries, b, b))

	deadEvs := dead.until(t, 30*time.Second, atLeast(1))
	if len(deadEvs) != 1 {
		t.Fatalf("%d dead letters, want 1", len(deadEvs))
	}
	dl, rec := deadEvs[0], dead.recs[0]
	if c := gjson.GetBytes(dl.Meta, "correlation").String(); c != "poison" {
		t.Errorf("dead letter correlation %q", c)
	}
	if e := gjson.GetBytes(dl.Meta, "error").String(); !strings.Contains(e, fmt.Sprintf("delivery %d of %d", maxDeliveries, maxDeliveries)) {
		t.Errorf("dead letter error %q", e)
	}
	if string(rec.Key) != "same" {
		t.Errorf("dead letter key %q, want the record's", rec.Key)
	}
	origin := gjson.GetBytes(dl.Meta, "kafka_origin")
	if origin.Get("topic").String() != "in" || origin.Get("offset").Int() != 0 || origin.Get("key").String() != "same" {
		t.Errorf("dead letter kafka_origin %s", origin.Raw)
	}
	// Every delivery had the same message_id (a copy of each delivery
	// goes to topic errs).
	want := fmt.Sprintf("in/%d/0", origin.Get("partition").Int())
	seen := errs.until(t, 10*time.Second, atLeast(len(evs)-1+maxDeliveries))
	ids := map[string]int{}
	for _, ev := range seen {
		if gjson.GetBytes(ev.Meta, "correlation").String() == "poison" {
			ids[gjson.GetBytes(ev.Meta, "id").String()]++
		}
	}
	if len(ids) != 1 || ids[want] != maxDeliveries {
		t.Errorf("deliveries of the poison record by message_id: %v, want %d of %s", ids, maxDeliveries, want)
	}
	// The rest flowed, and the commit reached the end of the partition.
	if got := out.until(t, 10*time.Second, distinct(20)); len(correlations(got)) != 20 {
		t.Errorf("%d results, want 20", len(correlations(got)))
	}
	p := int32(origin.Get("partition").Int())
	deadline := time.Now().Add(10 * time.Second)
	for committed(t, brokers, "poison", "in")[p] != int64(len(evs)) {
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want %d on partition %d", committed(t, brokers, "poison", "in"), len(evs), p)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rf.stop(t)
}
