package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestBenchBackendUsage(t *testing.T) {
	t.Setenv("FLOWRUN_ETCD_ENDPOINTS", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--backend", "mongo"}, `unknown backend "mongo"`},
		{[]string{"bench", "--backend", "etcd"}, "backend etcd needs endpoints"},
	} {
		code, _, stderr := runCLI(t, "", tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
}

// flowrun bench --backend etcd measures the connector on the cluster of
// FLOWRUN_ETCD_ENDPOINTS against the etcd client.
func TestBenchEtcd(t *testing.T) {
	eps := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	if eps == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("FLOWRUN_ETCD_ENDPOINTS is not set (CI needs the cluster: scripts/etcd-cluster.sh start)")
		}
		t.Skip("FLOWRUN_ETCD_ENDPOINTS is not set; start a cluster with scripts/etcd-cluster.sh start")
	}
	code, stdout, stderr := runCLI(t, "", "bench", "--backend", "etcd", "--workload", "put,increment",
		"--ops", "300", "--keys", "50", "--batch", "100")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d result lines, want 2:\n%s", len(lines), stdout)
	}
	for _, l := range lines {
		var r struct {
			Workload string  `json:"workload"`
			Backend  string  `json:"backend"`
			Flowrun  float64 `json:"flowrun_ops_per_s"`
			Etcd     float64 `json:"etcd_ops_per_s"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		if r.Backend != "etcd" || r.Flowrun <= 0 || r.Etcd <= 0 {
			t.Errorf("result %s", l)
		}
	}
}
