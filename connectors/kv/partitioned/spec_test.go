package partitioned_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/internal/natstest"
)

// TestFlowWithPartitions: a flow file declaring a partitioned kv
// connector loads, builds and runs: stdin's increments over 20 keys come
// out in order per key with exact counts (events of a source that does
// not redeliver wait for their partitions while the instance takes them).
// A second connector on the same group in one process is refused.
func TestFlowWithPartitions(t *testing.T) {
	dir := t.TempDir()
	group := natstest.Name("ptflow")
	deleteGroupStreams(t, natstest.JetStream(t), group, 3)
	src := fmt.Sprintf(`name: counts
connectors:
  input: { type: stdin }
  store: { type: kv, dir: state, partitions: 3, group: %s, lease_ttl: 2s,
           changelog: { urls: "${FLOWRUN_NATS_CLUSTER_URLS}", replicas: 3 } }
  out: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> out/in
  - store/out -> out/in
  - store/err -> out/in
`, group)
	path := filepath.Join(dir, "flow.yaml")
	flow := loadFlow(t, path, src)
	var in bytes.Buffer
	for i := range 100 {
		fmt.Fprintf(&in, `{"data":null,"meta":{"kv":{"increment":"k%d"}}}`+"\n", i%20)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	built, err := flow.Build(ctx, flows.BuildOptions{Stdin: &in, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(ctx); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		key := gjson.Get(line, "meta.kv.key").Str
		seen[key]++
		if gjson.Get(line, "data").Raw != fmt.Sprint(seen[key]) {
			t.Fatalf("%s: want %s = %d", line, key, seen[key])
		}
	}
	if len(seen) != 20 || seen["k0"] != 5 {
		t.Fatalf("counts %v, want 5 for each of 20 keys", seen)
	}

	// Two connectors of one group in one process would compete.
	twice := strings.Replace(src, "  out: { type: stdout }", fmt.Sprintf(`  store2: { type: kv, dir: state2, partitions: 3, group: %s,
           changelog: { urls: "${FLOWRUN_NATS_CLUSTER_URLS}" } }
  out: { type: stdout }`, group), 1) + "  - input/out -> store2/in\n  - store2/out -> out/in\n  - store2/err -> out/in\n"
	flow = loadFlow(t, path, twice)
	if _, err := flow.Build(ctx, flows.BuildOptions{Stdin: &in, Stdout: &out}); err == nil || !strings.Contains(err.Error(), "already used by connector") {
		t.Fatalf("two connectors on one group: %v", err)
	}

	// A Lua node cannot use a partitioned connector.
	withLua := strings.Replace(src, "  out: { type: stdout }", "  rules: { type: lua, kv: store, script: 'emit(\"out\", event)' }\n  out: { type: stdout }", 1) +
		"  - input/out -> rules/in\n  - rules/out -> out/in\n  - rules/err -> out/in\n"
	flow = loadFlow(t, path, withLua)
	if _, err := flow.Build(ctx, flows.BuildOptions{Stdin: &in, Stdout: &out}); err == nil || !strings.Contains(err.Error(), "Lua scripts cannot use a partitioned kv connector") {
		t.Fatalf("lua on a partitioned connector: %v", err)
	}
}

// TestFlowWaitsForItsChangelogServers: a partitioned kv connector whose
// changelog servers cannot be reached when the flow is built waits for
// them, reporting itself not ready, and the flow runs once they answer;
// with fail_fast the build fails instead.
func TestFlowWaitsForItsChangelogServers(t *testing.T) {
	first := strings.Split(natstest.ClusterURLs(t), ",")[0]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String() // nothing listens there until the proxy starts
	_ = ln.Close()
	group := natstest.Name("ptwait")
	deleteGroupStreams(t, natstest.JetStream(t), group, 2)
	dir := t.TempDir()
	src := fmt.Sprintf(`name: waits
connectors:
  input: { type: stdin }
  store: { type: kv, dir: state, partitions: 2, group: %s, lease_ttl: 2s,
           changelog: { urls: "nats://%s", replicas: 3 } }
  out: { type: stdout }
links:
  - input/out -> store/in
  - store/out -> out/in
  - store/err -> out/in
`, group, addr)
	path := filepath.Join(dir, "flow.yaml")
	flow := loadFlow(t, path, src)
	var in, out bytes.Buffer
	for i := range 10 {
		fmt.Fprintf(&in, `{"data":null,"meta":{"kv":{"increment":"k%d"}}}`+"\n", i%2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// With fail_fast the build fails at once instead.
	failFast := filepath.Join(dir, "failfast.yaml")
	ff := loadFlow(t, failFast, strings.Replace(src, "replicas: 3 }", "replicas: 3, fail_fast: true }", 1))
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	if _, err := ff.Build(fctx, flows.BuildOptions{Stdin: &in, Stdout: &out}); err == nil || !strings.Contains(err.Error(), "changelog: connect to") {
		t.Fatalf("build with fail_fast and no server = %v, want the connection's error", err)
	}

	res := component.NewResources()
	type result struct {
		built *flows.Built
		err   error
	}
	done := make(chan result, 1)
	go func() {
		b, err := flow.Build(ctx, flows.BuildOptions{Stdin: &in, Stdout: &out, Resources: res})
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("the build ended while no changelog server was reachable: %v", r.err)
	case <-time.After(1500 * time.Millisecond):
	}
	if err := component.HealthOf(res).Err(); !errors.Is(err, component.ErrNotReady) || !strings.Contains(err.Error(), "store") {
		t.Errorf("readiness while waiting = %v, want the store not ready", err)
	}
	natstest.DropProxyAt(t, addr, first, func(string) bool { return false })
	r := <-done
	if r.err != nil {
		t.Fatalf("build once the server answers: %v", r.err)
	}
	if err := component.HealthOf(res).Err(); err != nil {
		t.Errorf("readiness once connected = %v, want ready", err)
	}
	if err := r.built.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(out.String(), "\n"); got != 10 {
		t.Fatalf("%d results, want 10:\n%s", got, out.String())
	}
}

// deleteGroupStreams deletes, when the test ends, the lease stream and
// the changelog streams of the first partitions of group.
func deleteGroupStreams(t *testing.T, js jetstream.JetStream, group string, partitions int) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, partitioned.LeaseStream(group))
		for p := range partitions {
			s, _ := partitioned.ChangelogStream(group, p)
			_ = js.DeleteStream(ctx, s)
		}
	})
}

// loadFlow writes src to path and loads the flow it declares.
func loadFlow(t *testing.T, path, src string) *flows.Flow {
	t.Helper()
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	flow, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	return flow
}
