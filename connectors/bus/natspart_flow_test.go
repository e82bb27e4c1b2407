package bus_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
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
