package kafka_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// TestSinkKeyAndHeaders: the sink's record key comes from its key
// expression (a string as is, a number as its text, missing: no key; an
// object fails the event, whose record is then dead-lettered), the
// event's meta becomes headers, and the coordinates of the record read
// (meta.kafka) are not copied to the record produced.
func TestSinkKeyAndHeaders(t *testing.T) {
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out", "in.dead")
	evs := []pipeline.Event{
		{Data: []byte(`{"user":"alice"}`), Meta: []byte(`{"correlation":"a","tag":"x"}`)},
		{Data: []byte(`{"user":7}`), Meta: []byte(`{"correlation":"b","tag":"y"}`)},
		{Data: []byte(`{}`), Meta: []byte(`{"correlation":"c","tag":"z"}`)},
		{Data: []byte(`{"user":{"id":1}}`), Meta: []byte(`{"correlation":"d"}`)},
	}
	produceEvents(t, brokers, "in", evs)
	out, dead := readTopic(t, brokers, "out"), readTopic(t, brokers, "in.dead")
	b := strings.Join(brokers, ",")
	runFlow(t, fmt.Sprintf(`name: keys
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: keys, max_deliveries: 1 }
  output: { type: kafka, mode: write, brokers: %q, topic: out, key: data.user }
links:
  - input/out -> output/in
`, b, b))
	got := out.until(t, 20*time.Second, atLeast(3))
	if len(got) != 3 {
		t.Fatalf("%d records out, want 3", len(got))
	}
	wantKey := map[string]string{"a": "alice", "b": "7", "c": "<nil>"}
	for i, ev := range got {
		rec := out.recs[i]
		corr := gjson.GetBytes(ev.Meta, "correlation").String()
		key := "<nil>"
		if rec.Key != nil {
			key = string(rec.Key)
		}
		if key != wantKey[corr] {
			t.Errorf("%s: key %q, want %q", corr, key, wantKey[corr])
		}
		headers := map[string]string{}
		for _, h := range rec.Headers {
			headers[h.Key] = string(h.Value)
		}
		if headers["correlation_id"] != corr || headers["tag"] == "" {
			t.Errorf("%s: headers %v: want correlation_id and tag", corr, headers)
		}
		if _, ok := headers["kafka"]; ok {
			t.Errorf("%s: the record read's coordinates were copied: %v", corr, headers)
		}
		if gjson.GetBytes(ev.Meta, "kafka.topic").String() != "out" {
			t.Errorf("%s: read back, meta.kafka is %s", corr, gjson.GetBytes(ev.Meta, "kafka").Raw)
		}
	}
	dl := dead.until(t, 20*time.Second, atLeast(1))
	if len(dl) != 1 || gjson.GetBytes(dl[0].Meta, "correlation").String() != "d" ||
		!strings.Contains(gjson.GetBytes(dl[0].Meta, "error").String(), "want a string, number or boolean") {
		t.Fatalf("dead letters %v", dl)
	}
}
