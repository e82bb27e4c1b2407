package partitioned_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/changelog"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
)

// lockedBuffer is a bytes.Buffer safe for a flow's sink and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Count(l.b.Bytes(), []byte("\n"))
}

// pollUntil polls cond every 50ms until it holds or d passes.
func pollUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFlowRecordsInputPositions runs, from a flow file, a partitions_of
// nats source into a partitioned kv connector with input_from:
// nats.sequence and checkpoint_every: 64KiB, on the three-node cluster:
// 4,500 increments published to the partition subjects of 3 partitions.
// Once every one is answered and each partition checkpointed, the flow
// stops and a new instance (a fresh directory) takes every partition over:
// each take-over reports as its input position (TakeOver.Input) the
// stream sequence of the last message published to that partition, and
// restores from a checkpoint. Without input_from the positions are 0;
// without meta.nats from the source the events fail; without
// checkpoint_every the default 64 MiB writes no checkpoint.
func TestFlowRecordsInputPositions(t *testing.T) {
	urls := natstest.ClusterURLs(t)
	js := natstest.JetStream(t)
	const parts, n = 3, 4500
	group := natstest.Name("ptinput")
	base := "flowrun.test." + natstest.Name("in")
	inStream := natstest.Name("ptinput_in")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: inStream, Subjects: []string{base + ".p.*"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer dcancel()
		_ = js.DeleteStream(dctx, inStream)
		_ = js.DeleteStream(dctx, partitioned.LeaseStream(group))
		for p := range parts {
			s, _ := partitioned.ChangelogStream(group, p)
			_ = js.DeleteStream(dctx, s)
		}
	})
	last := make([]uint64, parts) // the sequence of each partition's last message
	for i := range n {
		k := fmt.Sprintf("k%d", i%60)
		p := partition.OfString("c/"+k, parts)
		ack, err := js.Publish(ctx, partition.Subject(base, p), fmt.Appendf(nil, `{"k":%q}`, k))
		if err != nil {
			t.Fatal(err)
		}
		last[p] = ack.Sequence
	}

	dir := t.TempDir()
	src := fmt.Sprintf(`name: inputpos
connectors:
  input: { type: nats, mode: read, url: %q, subject: %s, durable: counts, partitions_of: store, window: 64 }
  store:
    type: kv
    dir: state
    partitions: %d
    group: %s
    lease_ttl: 2s
    changelog: { urls: %q, replicas: 3 }
    idem_from: message_id
    input_from: nats.sequence
    checkpoint_every: 64KiB
  out: { type: stdout }
pipelines:
  apply:
    - set:
        meta.kv: '{"increment": "c/" + data.k}'
links:
  - input/out -> apply/in
  - apply/out -> store/in
  - store/out -> out/in
  - store/err -> out/in
`, urls, base, parts, group, urls)
	path := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	flow, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	var out lockedBuffer
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	built, err := flow.Build(rctx, flows.BuildOptions{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- built.Run(rctx) }()
	pollUntil(t, 2*time.Minute, "every increment answered", func() bool { return out.lines() >= n })
	// Each partition's owner checkpoints within a poll of passing 64 KiB.
	for p := range parts {
		stream, subject := partitioned.ChangelogStream(group, p)
		s, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		pollUntil(t, 30*time.Second, fmt.Sprintf("a checkpoint of partition %d", p), func() bool {
			_, err := s.GetLastMsgForSubject(ctx, subject+".ckm")
			return err == nil
		})
	}
	stop()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the flow did not stop")
	}
	out.mu.Lock()
	text := out.b.String()
	out.mu.Unlock()
	if strings.Contains(text, `"error"`) {
		t.Fatalf("failed events: %.500s", text)
	}

	var mu sync.Mutex
	taken := map[int]partitioned.TakeOver{}
	takeOvers := map[int]int{}
	// A partition whose lease is lost (a renewal late, or a take-over not
	// serving within the TTL) stops, and its next take-over resumes from
	// what the store had applied, without the checkpoint: with a TTL of
	// 2 s, a CI run's load did that to partition 1 ("deadline passed
	// without a renewal", resumed after 583 of 839). Nothing here waits
	// on this instance's leases: 10 s.
	opts := partitioned.Options{
		Partitions: parts, Dir: filepath.Join(t.TempDir(), "state"), JetStream: js, Group: group,
		Instance: "reader", LeaseTTL: 10 * time.Second, Poll: 200 * time.Millisecond,
		KV: kv.Options{ReclaimInterval: -1, Namespace: "inputpos"},
		OnServe: func(to partitioned.TakeOver) {
			mu.Lock()
			taken[to.Partition] = to
			takeOvers[to.Partition]++
			mu.Unlock()
		},
	}
	c, err := partitioned.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	pollUntil(t, time.Minute, "every partition served", func() bool { return len(c.Serving()) == parts })
	mu.Lock()
	defer mu.Unlock()
	for p := range parts {
		to := taken[p]
		if to.Input != last[p] {
			t.Errorf("partition %d taken over at input position %d, want %d (its last message)", p, to.Input, last[p])
		}
		if to.Restored.Checkpoint == 0 {
			t.Errorf("partition %d: restored without a checkpoint (%+v; take-over %d)", p, to.Restored, takeOvers[p])
		}
		if got, ok := c.TakenOver(p); !ok || got.Input != to.Input {
			t.Errorf("TakenOver(%d) = %+v, %v; want input %d", p, got, ok, to.Input)
		}
	}
}

// TestCheckpointEveryDefault: the flow option's default is the
// changelog's.
func TestCheckpointEveryDefault(t *testing.T) {
	if n, ok := component.ParseByteSize(kv.DefaultCheckpointEvery); !ok || n != changelog.DefaultCheckpointEvery {
		t.Fatalf("kv.DefaultCheckpointEvery %q is %d bytes, changelog.DefaultCheckpointEvery is %d", kv.DefaultCheckpointEvery, n, changelog.DefaultCheckpointEvery)
	}
}
