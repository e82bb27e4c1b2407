package bus_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
)

// loadFlow writes src to a flow file and loads it.
func loadFlow(t *testing.T, src string) (*flows.Flow, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flow.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	f, _, err := flows.Load(path, builtin.NewRegistry())
	return f, err
}

// TestPartitionOptionsAreChecked: partitions_of must name a kv connector
// of the flow (when the flow is loaded) that declares partitions (when it
// is built: no broker is contacted before), and partition_key needs
// partitions.
func TestPartitionOptionsAreChecked(t *testing.T) {
	const head = "name: orders\nconnectors:\n"
	for _, tt := range []struct {
		name, connectors, wantLoad string
	}{
		{"partitions_of names no connector", `
  input: { type: nats, mode: read, subject: orders.in, partitions_of: stor }
  store: { type: kv, dir: state }
links: [input/out -> store/in]
`, `no connector "stor" in this flow`},
		{"partitions_of names a nats connector", `
  input: { type: nats, mode: read, subject: orders.in, partitions_of: out }
  store: { type: kv, dir: state }
  out:   { type: nats, mode: write, subject: orders.out }
links: [input/out -> store/in, store/out -> out/in]
`, `connector "out" is of type nats, not kv`},
		{"partition_key without partitions", `
  input: { type: nats, mode: read, subject: orders.in }
  out:   { type: nats, mode: write, subject: orders.p, partition_key: data.customer }
links: [input/out -> out/in]
`, "partition_key: has no effect without `partitions`"},
		{"partitions out of range", `
  input: { type: nats, mode: read, subject: orders.in }
  out:   { type: nats, mode: write, subject: orders.p, partitions: 1001 }
links: [input/out -> out/in]
`, "partitions"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadFlow(t, head+tt.connectors)
			if !errors.Is(err, flows.ErrInvalidFlow) || !strings.Contains(err.Error(), tt.wantLoad) {
				t.Errorf("load: %v, want an invalid flow mentioning %q", err, tt.wantLoad)
			}
		})
	}

	src := head + `
  input: { type: nats, mode: read, url: "nats://127.0.0.1:1", subject: orders.in, partitions_of: store }
  store: { type: kv, dir: ` + t.TempDir() + ` }
links: [input/out -> store/in]
`
	f, err := loadFlow(t, src)
	if err != nil {
		t.Fatal(err)
	}
	// A kv connector that declares no partitions: refused when built.
	_, err = f.Build(context.Background(), flows.BuildOptions{Resources: component.NewResources()})
	if !errors.Is(err, bus.ErrNotPartitioned) || !strings.Contains(err.Error(), "partitions_of") {
		t.Fatalf("build with an unpartitioned kv connector: %v, want ErrNotPartitioned naming partitions_of", err)
	}
	// Its partitions declared (as a partitioned kv connector does when it
	// is built), the flow builds, and stops at once.
	res := component.NewResources()
	if err := partition.BoardOf(res, "store").Declare(4); err != nil {
		t.Fatal(err)
	}
	built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
	if err != nil {
		t.Fatalf("build with declared partitions: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := built.Run(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("run: %v", err)
	}
}

// natsURLFor returns FLOWRUN_NATS_URL, skipping the test without it but
// under CI, which starts a broker.
func natsURLFor(t *testing.T) string {
	t.Helper()
	url := os.Getenv("FLOWRUN_NATS_URL")
	if url == "" {
		msg := "FLOWRUN_NATS_URL is not set; start a broker with `scripts/nats-server.sh start 14222`"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return url
}

// startFlow builds the flow src with res and runs it until stop.
func startFlow(t *testing.T, src string, res *component.Resources) (built *flows.Built, stop func()) {
	t.Helper()
	f, err := loadFlow(t, src)
	if err != nil {
		t.Fatal(err)
	}
	built, err = f.Build(context.Background(), flows.BuildOptions{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("flow: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the flow did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return built, stop
}

// TestPartitionedFlowAppliesEachOrderOnce runs the whole chain on one
// broker: a producer publishes orders on the input subject, the
// repartition stage routes them to 4 partition subjects, and an owner flow
// (its kv connector's partitions declared and served by the test, as the
// partitioned kv connector will) adds each order to its customer's total
// with idem_from: message_id. Two partitions are handed over and back
// midway. The totals are exact; then every partition consumer is deleted,
// so the owner reads every stored message again: the totals do not move.
func TestPartitionedFlowAppliesEachOrderOnce(t *testing.T) {
	url := natsURLFor(t)
	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	base := "orders." + natstest.Token()
	_, err = js.AddStream(&nats.StreamConfig{Name: bus.StreamName(base), Subjects: []string{base}})
	must(t, err)
	const n, count, customers = 300, 4, 10
	want := map[string]int64{}
	for i := range n {
		c := fmt.Sprintf("c%d", i%customers)
		want[c] += int64(i)
		_, err := js.Publish(base, fmt.Appendf(nil, `{"customer":%q,"amount":%d}`, c, i))
		must(t, err)
	}

	_, stopStage := startFlow(t, fmt.Sprintf(`name: route
connectors:
  input: { type: nats, mode: read, url: %q, subject: %s, durable: route }
  route: { type: nats, mode: write, url: %q, subject: %s, partitions: %d, partition_key: data.customer }
links: [input/out -> route/in]
`, url, base, url, base, count), component.NewResources())
	defer stopStage()

	dir := t.TempDir()
	owner := fmt.Sprintf(`name: owner
connectors:
  input: { type: nats, mode: read, url: %q, subject: %s, durable: owner, partitions_of: store, window: 8 }
  store: { type: kv, dir: %s, idem_from: message_id }
pipelines:
  apply:
    - set:
        meta.kv: '{"increment": "total/" + data.customer, "by": data.amount}'
links: [input/out -> apply/in, apply/out -> store/in]
`, url, base, dir)
	partitionsDone := func() bool {
		for p := range count {
			info, err := js.ConsumerInfo(bus.PartitionStreamName(base), bus.PartitionDurable("owner", p))
			if err != nil || info.NumPending != 0 || info.NumAckPending != 0 || info.Delivered.Stream == 0 {
				return false
			}
		}
		name, err := js.StreamNameBySubject(bus.PartitionFilter(base))
		if err != nil {
			return false
		}
		info, err := js.StreamInfo(name)
		return err == nil && info.State.Msgs == n
	}
	totals := func() map[string]int64 {
		st, err := flowrun.OpenStore(context.Background(), dir, flowrun.StoreOptions{})
		must(t, err)
		defer st.Close()
		got := map[string]int64{}
		for c := range want {
			v, _, err := st.Namespace("owner").Get(context.Background(), "total/"+c)
			must(t, err)
			if got[c], err = strconv.ParseInt(string(v), 10, 64); err != nil {
				t.Fatalf("total/%s: %q: %v", c, v, err)
			}
		}
		return got
	}
	for run := 1; run <= 2; run++ {
		res := component.NewResources()
		board := partition.BoardOf(res, "store")
		must(t, board.Declare(count))
		built, stop := startFlow(t, owner, res)
		ctxA, endA := context.WithCancel(context.Background())
		ctxB, endB := context.WithCancel(context.Background())
		board.Serve(ctxA, 0)
		board.Serve(ctxA, 1)
		board.Serve(ctxB, 2)
		board.Serve(ctxB, 3)
		if run == 1 {
			// Hand partitions 0 and 1 over once some orders are applied.
			waitUntilExt(t, "some orders applied", func() bool {
				for _, c := range built.Graph.Counts() {
					if c.Node == "store" && c.Port == "in" && c.Events >= n/4 {
						return true
					}
				}
				return false
			})
			endA()
			time.Sleep(300 * time.Millisecond)
			ctxA, endA = context.WithCancel(context.Background())
			board.Serve(ctxA, 0)
			board.Serve(ctxA, 1)
		}
		waitUntilExt(t, "every partition message acked", partitionsDone)
		stop()
		endA()
		endB()
		if got := totals(); !maps.Equal(got, want) {
			t.Fatalf("run %d: totals %v, want %v", run, got, want)
		}
		if run == 1 {
			// As if no ack had reached the broker: every partition
			// message is delivered again, with the same id.
			for p := range count {
				must(t, js.DeleteConsumer(bus.PartitionStreamName(base), bus.PartitionDurable("owner", p)))
			}
		}
	}
}

func waitUntilExt(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
