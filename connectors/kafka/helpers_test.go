package kafka_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

// The tests run against kfake, franz-go's in-process Kafka: a protocol
// peer started by each test on loopback, not a production broker.

const testPartitions = 4

// startCluster starts a one-broker kfake cluster on loopback with topics
// (kfake listens on 127.0.0.1) of testPartitions partitions (more are created on first use), closed at
// the end of the test.
func startCluster(t testing.TB, extra ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	opts := append([]kfake.Opt{
		kfake.NumBrokers(1),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(testPartitions),
	}, extra...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// createTopics creates topics with testPartitions partitions.
func createTopics(t testing.TB, brokers []string, topics ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	must(t, err)
	defer cl.Close()
	resp, err := kadm.NewClient(cl).CreateTopics(context.Background(), testPartitions, 1, nil, topics...)
	must(t, err)
	must(t, resp.Error())
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// produceEvents produces evs to topic as a flowrun sink would (meta as
// headers), keyed by their index so they spread over the partitions.
func produceEvents(t testing.TB, brokers []string, topic string, evs []pipeline.Event) {
	t.Helper()
	produceKeyed(t, brokers, topic, evs, func(i int) string { return fmt.Sprint(i) })
}

// produceKeyed produces evs with the keys keyOf gives.
func produceKeyed(t testing.TB, brokers []string, topic string, evs []pipeline.Event, keyOf func(int) string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(time.Millisecond))
	must(t, err)
	defer cl.Close()
	recs := make([]*kgo.Record, len(evs))
	for i, ev := range evs {
		recs[i] = kafka.RecordOf(topic, bus.ToMessage(ev))
		recs[i].Key = []byte(keyOf(i))
	}
	must(t, cl.ProduceSync(context.Background(), recs...).FirstErr())
}

// topicReader reads a topic from the start, without a group, each record
// once (a client that reconnects to a restarted broker may read records
// again).
type topicReader struct {
	cl   *kgo.Client
	mu   sync.Mutex
	evs  []pipeline.Event
	recs []*kgo.Record
	seen map[[2]int64]bool // partition, offset
}

func readTopic(t testing.TB, brokers []string, topic string) *topicReader {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	must(t, err)
	t.Cleanup(cl.Close)
	return &topicReader{cl: cl, seen: map[[2]int64]bool{}}
}

// poll reads what arrives within d.
func (r *topicReader) poll(t testing.TB, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	f := r.cl.PollFetches(ctx)
	for _, rec := range f.Records() {
		if k := [2]int64{int64(rec.Partition), rec.Offset}; r.seen[k] {
			continue
		} else {
			r.seen[k] = true
		}
		ev, err := bus.ToEvent(kafka.RecordMessage(rec, 1))
		if err != nil {
			t.Errorf("record %s: %v", kafka.MessageID(rec.Topic, rec.Partition, rec.Offset), err)
		}
		r.mu.Lock()
		r.evs = append(r.evs, ev)
		r.recs = append(r.recs, rec)
		r.mu.Unlock()
	}
}

// until polls until have(events so far) or timeout, and returns the events.
func (r *topicReader) until(t testing.TB, timeout time.Duration, have func([]pipeline.Event) bool) []pipeline.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !have(r.evs) && time.Now().Before(deadline) {
		r.poll(t, 200*time.Millisecond)
	}
	return r.evs
}

// atLeast is an until condition: n events.
func atLeast(n int) func([]pipeline.Event) bool {
	return func(evs []pipeline.Event) bool { return len(evs) >= n }
}

// correlations counts the events of each correlation.
func correlations(evs []pipeline.Event) map[string]int {
	seen := map[string]int{}
	for _, ev := range evs {
		seen[gjson.GetBytes(ev.Meta, "correlation").String()]++
	}
	return seen
}

// distinct is an until condition: n distinct correlations.
func distinct(n int) func([]pipeline.Event) bool {
	return func(evs []pipeline.Event) bool { return len(correlations(evs)) >= n }
}

// committed returns the group's committed offsets of topic, by partition.
func committed(t testing.TB, brokers []string, group, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	must(t, err)
	defer cl.Close()
	resp, err := kadm.NewClient(cl).FetchOffsets(context.Background(), group)
	must(t, err)
	out := map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.Err == nil {
			out[o.Partition] = o.At
		}
	})
	return out
}

// endOffsets returns the end offset of each partition of topic.
func endOffsets(t testing.TB, brokers []string, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	must(t, err)
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(context.Background(), topic)
	must(t, err)
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// runningFlow is a flow file run in this process.
type runningFlow struct {
	cancel context.CancelFunc
	done   chan error
	health *component.Health
}

// runFlow loads the flow text (in a temp dir) and runs it until stop.
func runFlow(t testing.TB, text string) *runningFlow {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "flow.yaml")
	must(t, os.WriteFile(path, []byte(text), 0o644))
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	res := component.NewResources()
	built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	rf := &runningFlow{cancel: cancel, done: make(chan error, 1), health: component.HealthOf(res)}
	go func() { rf.done <- built.Run(ctx) }()
	t.Cleanup(func() { rf.stop(t) })
	return rf
}

// stop cancels the flow and waits for it (once).
func (rf *runningFlow) stop(t testing.TB) {
	t.Helper()
	if rf.cancel == nil {
		return
	}
	rf.cancel()
	rf.cancel = nil
	select {
	case err := <-rf.done:
		if err != nil {
			t.Errorf("flow: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("flow did not stop within 30s")
	}
}

// kvInput is message i of the round trips: even ones increment one of
// counters counters (a redelivery counts twice unless idempotent), odd
// ones put a value under their own key.
func kvInput(i, counters int) pipeline.Event {
	corr := fmt.Sprintf(`"m-%d"`, i)
	if i%2 == 0 {
		return pipeline.Event{Data: []byte(`{}`),
			Meta: []byte(fmt.Sprintf(`{"correlation":%s,"kv":{"increment":"c/%d"}}`, corr, (i/2)%counters))}
	}
	return pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
		Meta: []byte(fmt.Sprintf(`{"correlation":%s,"kv":{"put":"p/%d"}}`, corr, i))}
}
