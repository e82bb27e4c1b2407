package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
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

// flowrun bench --rate runs open loop and prints the percentiles.
func TestBenchOpenLoop(t *testing.T) {
	code, stdout, stderr := runCLI(t, "", "bench", "--rate", "1000", "--duration", "200ms", "--workload", "put",
		"--keys", "100", "--json", "--dir", t.TempDir())
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var r map[string]any
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	if r["workload"] != "put" || r["rate"] != 1000.0 || r["ops"] != 200.0 {
		t.Errorf("result %v: want workload put, rate 1000, ops 200", r)
	}
	for _, k := range []string{"p50_us", "p90_us", "p99_us", "p999_us", "max_us", "flowrun_ops_per_s"} {
		if v, ok := r[k].(float64); !ok || v <= 0 {
			t.Errorf("%s = %v, want a positive number in %s", k, r[k], stdout)
		}
	}
}

// flowrun bench --trace writes an execution trace of the run, and fails
// before running when it cannot create the file.
func TestBenchTrace(t *testing.T) {
	testRecording(t, "trace", func(path string) (int, string) {
		code, _, stderr := runCLI(t, "", "bench", "--rate", "1000", "--duration", "100ms", "--workload", "put",
			"--keys", "100", "--json", "--dir", t.TempDir(), "--trace", path)
		return code, stderr
	}, func(b []byte) bool {
		return bytes.HasPrefix(b, []byte("go 1.")) && bytes.Contains(b[:min(len(b), 16)], []byte("trace"))
	})
}

// flowrun bench --sweep-p99 prints one line per workload on stdout and
// each trial on stderr. No event completes within 1ns of its schedule, so
// the sweep halves the rate from 2000 down to 1 event/s (11 short runs) and finds
// none.
func TestBenchSweep(t *testing.T) {
	code, stdout, stderr := runCLI(t, "", "bench", "--sweep-p99", "1ns", "--rate", "2000", "--duration", "10ms",
		"--workload", "put", "--keys", "100", "--json", "--dir", t.TempDir())
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var sr struct {
		Workload string  `json:"workload"`
		Bound    float64 `json:"sweep_p99_us"`
		Rate     int     `json:"rate"`
		Trials   int     `json:"trials"`
	}
	if err := json.Unmarshal([]byte(stdout), &sr); err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	if sr.Workload != "put" || sr.Bound != 0.001 || sr.Rate != 0 || sr.Trials != 11 || strings.Contains(stdout, "best") {
		t.Errorf("sweep result %+v", sr)
	}
	if n := strings.Count(stderr, "bench --sweep-p99 1ns: put at "); n != sr.Trials {
		t.Errorf("%d trial lines on stderr for %d trials: %q", n, sr.Trials, stderr)
	}
}

func TestBenchOpenLoopUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--rate", "-1"},
		{"bench", "--rate", "100", "--duration", "0s"},
		{"bench", "--sweep-p99", "-1ms"},
		{"bench", "--http", "--sweep-p99", "5ms"},
	} {
		if code, _, stderr := runCLI(t, "", args...); code != exitUsage {
			t.Errorf("%v: exit %d, stderr %q; want %d", args, code, stderr, exitUsage)
		}
	}
}

func TestBenchPeerUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--peer", "memcached"}, `unknown peer "memcached"`},
		{[]string{"bench", "--peer", "redis", "--rate", "100"}, "closed loop only"},
		{[]string{"bench", "--peer", "redis", "--peer-clients", "0"}, "--peer-clients must be positive"},
		{[]string{"bench", "--max-coalesce", "0"}, "--max-coalesce must be positive"},
		{[]string{"bench", "--peer", "redis", "--http"}, "--peer do not apply to --http"},
	} {
		code, _, stderr := runCLI(t, "", tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
}

// flowrun bench --peer redis runs put, get and increment by default, each
// also against a redis-server, and reports the ratio to Redis. It needs
// redis-server and redis-benchmark: skipped without them, except under CI.
func TestBenchPeerRedis(t *testing.T) {
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	code, stdout, stderr := runCLI(t, "", "bench", "--peer", "redis", "--peer-port", "26379",
		"--ops", "20000", "--keys", "500", "--batch", "100", "--dir", t.TempDir())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var r struct {
			Workload   string  `json:"workload"`
			Test       string  `json:"redis_test"`
			Redis      float64 `json:"redis_ops_per_s"`
			RedisRatio float64 `json:"redis_ratio"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		if r.Redis <= 0 || r.RedisRatio <= 0 {
			t.Errorf("result %s", l)
		}
		got = append(got, r.Workload+"/"+r.Test)
	}
	if want := "put/SET get/GET increment/INCR"; strings.Join(got, " ") != want {
		t.Errorf("workloads %v, want %s", got, want)
	}
}
