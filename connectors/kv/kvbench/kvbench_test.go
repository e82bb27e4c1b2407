package kvbench

import (
	"context"
	"errors"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

func TestRunEveryWorkload(t *testing.T) {
	for _, sync := range []bool{false, true} {
		cfg := Config{Ops: 1050, Keys: 300, ValueBytes: 40, Batch: 100, Sync: sync, Dir: t.TempDir()}
		var calls, last, total int
		cfg.Progress = func(done, tot int) {
			if done < last {
				t.Errorf("progress went back from %d to %d", last, done)
			}
			calls++
			last, total = done, tot
		}
		results, err := Run(context.Background(), cfg)
		if err != nil {
			t.Fatalf("sync=%t: %v", sync, err)
		}
		var names []string
		for _, r := range results {
			names = append(names, r.Workload)
			if r.Ops != cfg.Ops {
				t.Errorf("%s: ops = %d, want %d", r.Workload, r.Ops, cfg.Ops)
			}
			if r.FlowrunOpsPerS <= 0 || r.PebbleOpsPerS <= 0 {
				t.Errorf("%s: throughputs %v, %v must be positive", r.Workload, r.FlowrunOpsPerS, r.PebbleOpsPerS)
			}
			if want := r.FlowrunOpsPerS / r.PebbleOpsPerS; math.Abs(r.Ratio-want) > 1e-9*want {
				t.Errorf("%s: ratio = %v, want flowrun/pebble = %v", r.Workload, r.Ratio, want)
			}
			if r.P50us <= 0 || r.P99us < r.P50us {
				t.Errorf("%s: p50 %v, p99 %v", r.Workload, r.P50us, r.P99us)
			}
			if r.FlowrunCPUusPerOp <= 0 && runtime.GOOS == "linux" {
				t.Errorf("%s: flowrun CPU per operation %v µs, want it measured", r.Workload, r.FlowrunCPUusPerOp)
			}
			if r.PeakRSSMB < 0 {
				t.Errorf("%s: peak RSS %v", r.Workload, r.PeakRSSMB)
			}
		}
		if !slices.Equal(names, Workloads()) {
			t.Errorf("workloads run = %v, want %v", names, Workloads())
		}
		if want := 2 * cfg.Ops * len(Workloads()); last != want || total != want {
			t.Errorf("progress ended at %d of %d, want %d of %d", last, total, want, want)
		}
		// 11 batches per side and workload: 1050 ops in batches of 100.
		if want := 2 * 11 * len(Workloads()); calls != want {
			t.Errorf("progress called %d times, want once per batch (%d)", calls, want)
		}
	}
}

// TestRowCacheHitRate checks the row cache option reaches the flowrun
// store: reads of a preloaded key space hit the cache once warm, and never
// when it is disabled.
//
// Gets read through View, which fills the cache whatever the grouping, so
// all but the first read of each of the 100 keys can hit. A cas reads in
// the writer, and only a key's first read in a commit group is counted
// (later ones come from the group's own writes); it is answered by the
// cache, or by the previous group's batch when that group wrote the key,
// and both count as hits. Hits need more than one group: the graph merges queued batches (up to
// pipeline.DefaultMaxCoalesce events) and the writer queued requests (up to
// pebblestore.DefaultMaxGroup transactions, plus one request), so a loaded
// machine may run thousands of cas in one group. casOps guarantees at
// least three groups, each reading all 100 keys.
func TestRowCacheHitRate(t *testing.T) {
	const keys = 100
	casOps := 3 * (pebblestore.DefaultMaxGroup + pipeline.DefaultMaxCoalesce)
	tests := []struct {
		name     string
		workload string
		ops      int
		bytes    int64
		wantHit  bool
	}{
		{"get default", Get, 2000, 0, true},
		{"get disabled", Get, 2000, -1, false},
		{"cas default", CAS, casOps, 0, true},
		{"cas disabled", CAS, 2000, -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Workloads: []string{tt.workload}, Ops: tt.ops, Keys: keys, Batch: 100, Dir: t.TempDir(), RowCacheBytes: tt.bytes}
			results, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != 1 {
				t.Fatalf("%d results, want 1", len(results))
			}
			r := results[0]
			if hit := r.RowCacheHitRate > 0.3; hit != tt.wantHit || r.RowCacheHitRate > 1 {
				t.Errorf("%s: row cache hit rate %v", r.Workload, r.RowCacheHitRate)
			}
		})
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"unknown workload", Config{Workloads: []string{"put", "delete"}}},
		{"tiny values", Config{ValueBytes: MinValueBytes - 1}},
		{"too many keys", Config{Keys: maxKeys}},
		{"negative max coalesce", Config{MaxCoalesce: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Dir = t.TempDir()
			_, err := Run(context.Background(), tt.cfg)
			if !errors.Is(err, ErrBadConfig) {
				t.Fatalf("err = %v, want ErrBadConfig", err)
			}
		})
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Run(ctx, Config{Workloads: []string{Put}, Ops: 1000, Keys: 10, Dir: t.TempDir()})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestDefaults(t *testing.T) {
	c := DefaultConfig()
	if !c.Sync || c.Ops != DefaultOps || c.Keys != DefaultKeys || c.ValueBytes != DefaultValueBytes ||
		c.Batch != DefaultBatch || !slices.Equal(c.Workloads, Workloads()) || c.Dir == "" {
		t.Fatalf("DefaultConfig() = %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestPercentile(t *testing.T) {
	us := time.Microsecond
	tests := []struct {
		lat     []time.Duration
		weights []int
		q       float64
		want    float64
	}{
		{[]time.Duration{3 * us, 1 * us, 2 * us}, []int{1, 1, 1}, 0.5, 2},
		{[]time.Duration{3 * us, 1 * us, 2 * us}, []int{1, 1, 1}, 0.99, 3},
		{[]time.Duration{10 * us, 1 * us}, []int{1, 99}, 0.99, 1},
		{[]time.Duration{10 * us, 1 * us}, []int{2, 98}, 0.99, 10},
		{nil, nil, 0.5, 0},
	}
	for _, tt := range tests {
		if got := percentile(tt.lat, tt.weights, tt.q); got != tt.want {
			t.Errorf("percentile(%v, %v, %v) = %v, want %v", tt.lat, tt.weights, tt.q, got, tt.want)
		}
	}
}

func TestParseVmHWM(t *testing.T) {
	tests := []struct {
		status string
		want   float64
	}{
		{"Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1 kB\n", 2},
		{"Name:\tx\n", 0},
		{"VmHWM:\tlots kB\n", 0},
	}
	for _, tt := range tests {
		if got := parseVmHWM([]byte(tt.status)); got != tt.want {
			t.Errorf("parseVmHWM(%q) = %v, want %v", tt.status, got, tt.want)
		}
	}
}

func TestGeneratorIsDeterministic(t *testing.T) {
	for _, w := range Workloads() {
		a, b := newGen(w, 50), newGen(w, 50)
		for range 500 {
			oa, ob := a.op(), b.op()
			if oa != ob {
				t.Fatalf("%s: %+v != %+v", w, oa, ob)
			}
			if oa.key < 0 || oa.key >= 50 {
				t.Fatalf("%s: key %d out of range", w, oa.key)
			}
		}
	}
}

func TestValueSize(t *testing.T) {
	for _, size := range []int{MinValueBytes, 100, 10000} {
		v := newValues(size).appendValue(nil, 12345)
		if len(v) != size || v[0] != '"' || v[size-1] != '"' {
			t.Errorf("value of size %d: got %d bytes %.20q", size, len(v), v)
		}
	}
}

// Every workload runs on etcd, when a cluster is given by
// FLOWRUN_ETCD_ENDPOINTS (scripts/etcd-cluster.sh start); under CI its
// absence fails the test, elsewhere it skips.
func TestRunEtcd(t *testing.T) {
	env := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	if env == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("FLOWRUN_ETCD_ENDPOINTS is not set (CI needs the cluster: scripts/etcd-cluster.sh start)")
		}
		t.Skip("FLOWRUN_ETCD_ENDPOINTS is not set; start a cluster with scripts/etcd-cluster.sh start")
	}
	// Two rounds of 225 and 226 operations per side (Ops is odd).
	done, total := 0, 0
	cfg := Config{Ops: 451, Keys: 200, ValueBytes: 40, Batch: 150, Backend: BackendEtcd, Rounds: 2,
		Etcd:     etcdstore.Options{Endpoints: strings.Split(env, ","), Prefix: "flowrun-test/"},
		Progress: func(d, t int) { done, total = d, t }}
	results, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(Workloads()) {
		t.Fatalf("%d results, want %d", len(results), len(Workloads()))
	}
	if want := 2 * 451 * len(Workloads()); done != want || total != want {
		t.Errorf("progress %d of %d operations, want %d of %d", done, total, want, want)
	}
	for _, r := range results {
		if r.Backend != BackendEtcd || r.FlowrunOpsPerS <= 0 || r.EtcdOpsPerS <= 0 || r.PebbleOpsPerS != 0 || r.Rounds != 2 || r.Ops != 451 {
			t.Errorf("%s: %+v", r.Workload, r)
		}
		if want := r.FlowrunOpsPerS / r.EtcdOpsPerS; math.Abs(r.Ratio-want) > 1e-9*want {
			t.Errorf("%s: ratio = %v, want flowrun/etcd = %v", r.Workload, r.Ratio, want)
		}
	}
	// Serializable reads on both sides: the raw side, like the store,
	// reads its own commits (a member behind them is not believed).
	ser := cfg
	ser.Workloads, ser.Ops, ser.Batch, ser.Progress = []string{Increment, CAS, Mixed}, 1200, 300, nil
	ser.Etcd.Reads = etcdstore.Serializable
	if _, err := Run(context.Background(), ser); err != nil {
		t.Errorf("serializable reads: %v", err)
	}
	cfg.Rounds = 452
	if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrBadConfig) {
		t.Errorf("more rounds than ops: %v, want ErrBadConfig", err)
	}
	cfg.Rounds = 1
	cfg.Etcd.Endpoints = nil
	if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrBadConfig) {
		t.Errorf("etcd without endpoints: %v, want ErrBadConfig", err)
	}
	cfg.Backend = "redis"
	if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrBadConfig) {
		t.Errorf("unknown backend: %v, want ErrBadConfig", err)
	}
}
