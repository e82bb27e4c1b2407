package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/pipeline"
)

// TestRepartitionCommand: flowrun repartition on a flow whose
// partitions_of source has a message waiting in a partition subject is
// refused (exit 1, the source and subject named, nothing changed); once
// the message is consumed and acknowledged, --dry-run prints what it would
// do and the real run moves the state: the flow's group then has the new
// count. Bad usage exits 2.
func TestRepartitionCommand(t *testing.T) {
	urls := natstest.ClusterURLs(t)
	nc, err := nats.Connect(urls)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	group := natstest.Name("rp")
	subject := group + ".in"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, partitioned.LeaseStream(group))
		_ = js.DeleteStream(ctx, bus.PartitionStreamName(subject))
		for p := range 6 {
			for gen := range 2 {
				s, _ := partitioned.ChangelogStreamOf(group, gen, p)
				_ = js.DeleteStream(ctx, s)
			}
		}
	})

	// State written through 4 partitions.
	c, err := partitioned.New(ctx, partitioned.Options{Partitions: 4, Dir: filepath.Join(t.TempDir(), "state"), JetStream: js,
		Group: group, Replicas: 3, LeaseTTL: 2 * time.Second, Wait: time.Minute, KV: kv.Options{ReclaimInterval: -1}})
	if err != nil {
		t.Fatal(err)
	}
	var evs []pipeline.Event
	for i := range 20 {
		evs = append(evs, kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"k%d"`, i)), fmt.Sprint(i)))
	}
	var rec kvtest.Recorder
	if err := c.Process(ctx, evs, &rec); err != nil || len(rec.Events) != 20 {
		t.Fatalf("puts: %v, %v", err, kvtest.Strings(rec.Events))
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A message waiting in partition 1's subject.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.PartitionStreamName(subject),
		Subjects: []string{bus.PartitionFilter(subject)}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, partition.Subject(subject, 1), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	src := fmt.Sprintf(`name: rp
connectors:
  input: { type: nats, mode: read, url: %q, subject: %q, durable: orders, partitions_of: store }
  store:
    type: kv
    dir: state
    partitions: 4
    group: %s
    changelog: { urls: %q, replicas: 3 }
  output: { type: stdout }
pipelines:
  main:
    - set: { meta.kv: '{"get": "x"}' }
links:
  - input -> main
  - main -> store
  - store -> output
`, urls, subject, group, urls)
	if err := os.WriteFile(flow, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "", "repartition", flow, "--node", "store", "--partitions", "6", "--stop-wait", "10s")
	if code != exitFail || !strings.Contains(stderr, "input is waiting") || !strings.Contains(stderr, partition.Subject(subject, 1)) {
		t.Fatalf("with a message waiting: exit %d, stdout %q, stderr %q; want 1 and the subject named", code, stdout, stderr)
	}
	t.Log(stderr)

	// Consumed and acknowledged: no longer waiting.
	cons, err := js.CreateOrUpdateConsumer(ctx, bus.PartitionStreamName(subject), jetstream.ConsumerConfig{
		Durable: bus.PartitionDurable("orders", 1), FilterSubject: partition.Subject(subject, 1), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range msgs.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}

	code, stdout, stderr = runCLI(t, "", "repartition", flow, "--node", "store", "--partitions", "6", "--dry-run")
	if code != exitOK || !strings.Contains(stdout, "would move 20 keys from 4 to 6 partitions") {
		t.Fatalf("--dry-run: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	code, stdout, stderr = runCLI(t, "", "repartition", flow, "--node", "store", "--partitions", "6", "--json")
	if code != exitOK || !strings.Contains(stdout, `"from":4,"to":6`) || !strings.Contains(stdout, `"keys":20`) {
		t.Fatalf("repartition: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	// The group now has 6 partitions: 4 is refused.
	_, err = partitioned.New(ctx, partitioned.Options{Partitions: 4, Dir: filepath.Join(t.TempDir(), "state"), JetStream: js,
		Group: group, Replicas: 3, LeaseTTL: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), `"partitions":6`) {
		t.Fatalf("4 partitions after re-partitioning to 6: %v", err)
	}

	for _, args := range [][]string{
		{"repartition", flow, "--partitions", "6"},
		{"repartition", flow, "--node", "store"},
		{"repartition", flow, "--node", "output", "--partitions", "6"},
		{"repartition"},
	} {
		if code, _, stderr := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("%v: exit %d (%s), want 2", args, code, stderr)
		}
	}
}
