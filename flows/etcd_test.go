package flows

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flowrun/flowrun/flows/builtin"
)

// etcdEndpoints returns FLOWRUN_ETCD_ENDPOINTS (scripts/etcd-cluster.sh
// start prints it). Under CI a missing cluster fails the test; elsewhere
// the test is skipped.
func etcdEndpoints(t *testing.T) string {
	t.Helper()
	env := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	if env == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("FLOWRUN_ETCD_ENDPOINTS is not set (CI needs the cluster: scripts/etcd-cluster.sh start)")
		}
		t.Skip("FLOWRUN_ETCD_ENDPOINTS is not set; start a cluster with scripts/etcd-cluster.sh start")
	}
	return env
}

// etcdTestPrefix returns a fresh key prefix, removed from the cluster when
// the test ends.
func etcdTestPrefix(t *testing.T, eps string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	prefix := "flowrun-test/" + hex.EncodeToString(b) + "/"
	t.Cleanup(func() {
		c, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(eps, ","), DialTimeout: 3 * time.Second})
		if err != nil {
			t.Errorf("wipe: %v", err)
			return
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
			t.Errorf("wipe %s: %v", prefix, err)
		}
	})
	return prefix
}

// Two kv connectors of one flow on the same etcd endpoints and prefix
// share one store (each in its own namespace); the endpoints come from the
// environment; state persists across runs of the flow.
func TestBuildEtcdBackend(t *testing.T) {
	eps := etcdEndpoints(t)
	prefix := etcdTestPrefix(t, eps)
	t.Setenv("FLOWRUN_TEST_PREFIX", prefix)
	src := `name: shared
connectors:
  input: { type: stdin }
  a: { type: kv, backend: etcd, endpoints: "${FLOWRUN_ETCD_ENDPOINTS}", prefix: "${FLOWRUN_TEST_PREFIX}", namespace: a }
  b: { type: kv, backend: etcd, endpoints: "${FLOWRUN_ETCD_ENDPOINTS}", prefix: "${FLOWRUN_TEST_PREFIX}", namespace: b }
  out: { type: stdout }
links:
  - input -> a
  - input -> b
  - input/err -> out
  - a -> out
  - a/err -> out
  - b -> out
  - b/err -> out
`
	flow := writeFlow(t, t.TempDir(), src)
	for run, want := range []string{"1", "2"} {
		var out bytes.Buffer
		built, err := flow.Build(context.Background(), BuildOptions{
			Stdin:  strings.NewReader(`{"data":null,"meta":{"kv":{"increment":"n"}}}`),
			Stdout: &out,
		})
		if err != nil {
			t.Fatalf("run %d: Build: %v", run, err)
		}
		if err := built.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("run %d: %d result lines, want 2:\n%s", run, len(lines), out.String())
		}
		for _, l := range lines {
			if !strings.HasPrefix(l, `{"data":`+want+`,`) {
				t.Errorf("run %d: %s, want data %s (one counter per namespace)", run, l, want)
			}
		}
	}
}

// Connectors naming one etcd store with different options are refused
// with the node's name: they would otherwise silently share the first.
func TestBuildEtcdConflictingOptions(t *testing.T) {
	eps := etcdEndpoints(t)
	prefix := etcdTestPrefix(t, eps)
	src := fmt.Sprintf(`name: clash
connectors:
  input: { type: stdin }
  a: { type: kv, backend: etcd, endpoints: %q, prefix: %q }
  b: { type: kv, backend: etcd, endpoints: %q, prefix: %q, request_timeout: 1s }
  out: { type: stdout }
links:
  - input -> a
  - input -> b
  - input/err -> out
  - a -> out
  - a/err -> out
  - b -> out
  - b/err -> out
`, eps, prefix, eps, prefix)
	flow := writeFlow(t, t.TempDir(), src)
	_, err := flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader("")})
	if err == nil || !strings.Contains(err.Error(), "already open") || !strings.Contains(err.Error(), "connector b") {
		t.Errorf("Build: %v, want the second connector refused", err)
	}
}

// The reads option reaches the store: two connectors on one etcd store
// asking for different read consistency are refused like any other
// difference, and a value other than linearizable or serializable is
// refused at the option.
func TestBuildEtcdReads(t *testing.T) {
	eps := etcdEndpoints(t)
	prefix := etcdTestPrefix(t, eps)
	for _, tc := range []struct{ a, b, want string }{
		{"reads: serializable", "reads: linearizable", "already open"},
		{"reads: eventual", "reads: serializable", "reads"},
	} {
		src := fmt.Sprintf(`name: reads
connectors:
  input: { type: stdin }
  a: { type: kv, backend: etcd, endpoints: %q, prefix: %q, %s }
  b: { type: kv, backend: etcd, endpoints: %q, prefix: %q, %s }
  out: { type: stdout }
links:
  - input -> a
  - input -> b
  - input/err -> out
  - a -> out
  - a/err -> out
  - b -> out
  - b/err -> out
`, eps, prefix, tc.a, eps, prefix, tc.b)
		path := filepath.Join(t.TempDir(), "flow.yaml")
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		flow, _, err := Load(path, builtin.NewRegistry())
		if err == nil {
			_, err = flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader("")})
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("a %s, b %s: %v, want an error containing %q", tc.a, tc.b, err, tc.want)
		}
	}
}
