// Package kafka_test runs the Kafka example's flow against kfake,
// franz-go's in-process Kafka started by the test (a protocol peer for
// tests, not a production broker): the recorded events are produced, the
// scores come out keyed by player, the record without a player is
// dead-lettered, and reading the topic again from the start (the group's
// offsets reset, as after a crash before any commit) changes no score.
package kafka_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestExampleOnKfake(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(2))
	must(t, err)
	defer c.Close()
	brokers := c.ListenAddrs()
	t.Setenv("KAFKA_BROKERS", strings.Join(brokers, ","))
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	must(t, err)
	defer cl.Close()
	adm := kadm.NewClient(cl)
	_, err = adm.CreateTopics(context.Background(), 2, 1, nil, "scores.in", "scores.out", "scores.in.dead")
	must(t, err)

	// Produce events.jsonl as `go run ./examples/kafka/produce` does.
	f, err := os.Open("events.jsonl")
	must(t, err)
	defer f.Close()
	var evs []pipeline.Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev pipeline.Event
		must(t, json.Unmarshal(sc.Bytes(), &ev))
		evs = append(evs, ev)
	}
	sink, err := kafka.NewSink(kafka.SinkOptions{Options: kafka.Options{Brokers: brokers, Topic: "scores.in"}, Key: "data.player"})
	must(t, err)
	must(t, sink.Process(context.Background(), evs, failOn(t)))
	must(t, sink.Close(context.Background()))

	dir := t.TempDir()
	b, err := os.ReadFile("flow.yaml")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), b, 0o644))
	out := &reader{t: t, cl: newReader(t, brokers, "scores.out")}
	dead := &reader{t: t, cl: newReader(t, brokers, "scores.in.dead")}

	for run := 1; run <= 2; run++ {
		stop := runFlow(t, filepath.Join(dir, "flow.yaml"))
		got := out.until(3 * run)
		dl := dead.until(run)
		stop()
		scores := map[string]int64{}
		for _, r := range got[3*(run-1):] {
			scores[string(r.Key)+" "+gjson.GetBytes(r.Value, "@this").Raw] = 1
			if run == 2 && !gjson.GetBytes(mustEvent(t, r).Meta, "kv.replayed").Bool() {
				t.Errorf("run 2: result not marked replayed: %s", mustEvent(t, r).Meta)
			}
		}
		for _, want := range []string{"score/ann 3", "score/bob 5", "score/ann 7"} {
			if scores[want] == 0 {
				t.Errorf("run %d: no result %q in %v", run, want, scores)
			}
		}
		if len(dl) != run || gjson.GetBytes(mustEvent(t, dl[run-1]).Meta, "correlation").String() != "m-4" {
			t.Fatalf("run %d: dead letters %d", run, len(dl))
		}
		if run == 1 {
			// As after a crash before any commit: the group starts over.
			offsets := kadm.Offsets{}
			offsets.Add(kadm.Offset{Topic: "scores.in", Partition: 0, At: 0})
			offsets.Add(kadm.Offset{Topic: "scores.in", Partition: 1, At: 0})
			resp, err := adm.CommitOffsets(context.Background(), "scores", offsets)
			must(t, err)
			must(t, resp.Error())
		}
	}
}

func runFlow(t *testing.T, path string) (stop func()) {
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	built, err := f.Build(context.Background(), flows.BuildOptions{})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	return func() {
		cancel()
		must(t, <-done)
	}
}

func newReader(t *testing.T, brokers []string, topic string) *kgo.Client {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	must(t, err)
	t.Cleanup(cl.Close)
	return cl
}

type reader struct {
	t    *testing.T
	cl   *kgo.Client
	recs []*kgo.Record
}

// until reads until n records have arrived (at most 20 s).
func (r *reader) until(n int) []*kgo.Record {
	deadline := time.Now().Add(20 * time.Second)
	for len(r.recs) < n && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		r.recs = append(r.recs, r.cl.PollFetches(ctx).Records()...)
		cancel()
	}
	if len(r.recs) < n {
		r.t.Fatalf("%d records, want %d", len(r.recs), n)
	}
	return r.recs
}

func mustEvent(t *testing.T, r *kgo.Record) pipeline.Event {
	m := bus.ToMessage(pipeline.Event{}) // only for its type
	m.Payload = r.Value
	m.Metadata = map[string]string{}
	for _, h := range r.Headers {
		m.Metadata[h.Key] = string(h.Value)
	}
	ev, err := bus.ToEvent(m)
	must(t, err)
	return ev
}

type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }

func failOn(t *testing.T) emitFunc {
	return func(port string, ev pipeline.Event) { t.Errorf("produce: %s %s", port, ev.MetaJSON()) }
}
