package kvbench

import (
	"context"
	"errors"
	"math"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/loadgen"
)

func TestOpenLoopRun(t *testing.T) {
	cfg := Config{Workloads: []string{Put, Get}, Rate: 2000, Duration: 300 * time.Millisecond,
		Keys: 200, ValueBytes: 40, Batch: 50, Sync: true, Dir: t.TempDir()}
	var last, total int
	cfg.Progress = func(done, tot int) { last, total = done, tot }
	rs, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("%d results, want 2", len(rs))
	}
	const want = 600 // 2000 events/s for 0.3 s
	for _, r := range rs {
		if r.Ops != want || r.Rate != cfg.Rate {
			t.Errorf("%s: ops %d at rate %d, want %d at %d", r.Workload, r.Ops, r.Rate, want, cfg.Rate)
		}
		if r.PebbleOpsPerS != 0 || r.Ratio != 0 {
			t.Errorf("%s: raw side ran in open loop: %v ops/s, ratio %v", r.Workload, r.PebbleOpsPerS, r.Ratio)
		}
		// Events are sent on schedule, never early: the last completes
		// after the last is due, at 599/2000 s, so the achieved rate
		// cannot exceed 600 events in that time (a bound on the schedule,
		// not on speed).
		if limit := want / (599.0 / 2000); r.FlowrunOpsPerS <= 0 || r.FlowrunOpsPerS > limit {
			t.Errorf("%s: achieved rate %v, want in (0, %v]", r.Workload, r.FlowrunOpsPerS, limit)
		}
		ps := []float64{r.P50us, r.P90us, r.P99us, r.P999us, r.MaxUs}
		for i, p := range ps {
			if p <= 0 || (i > 0 && p < ps[i-1]) {
				t.Errorf("%s: percentiles p50..max %v not positive and ordered", r.Workload, ps)
				break
			}
		}
	}
	// Every event of both workloads completed (Run fails otherwise) and
	// was counted once.
	if last != 2*want || total != 2*want {
		t.Errorf("progress ended at %d of %d, want %d of %d", last, total, 2*want, 2*want)
	}
}

func TestSearch(t *testing.T) {
	for _, c := range []struct {
		name             string
		start, max, knee int // pass iff rate <= knee
		wantLo, wantHi   int
	}{
		{"double then bisect", 1000, 10_000_000, 37_000, 37_000 * 10 / 11, 37_000},
		{"halve then bisect", 1000, 10_000_000, 300, 300 * 10 / 11, 300},
		{"nothing passes", 1000, 10_000_000, 0, 0, 0},
		{"capped", 1000, 5000, 1 << 30, 5000, 5000},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, trials, err := search(c.start, c.max, func(rate int) (bool, error) {
				if rate < 1 || rate > c.max {
					t.Fatalf("tried rate %d outside [1, %d]", rate, c.max)
				}
				return rate <= c.knee, nil
			})
			if err != nil || got < c.wantLo || got > c.wantHi {
				t.Errorf("search = %d, %v; want %d..%d", got, err, c.wantLo, c.wantHi)
			}
			if trials > sweepMaxTrials {
				t.Errorf("%d trials", trials)
			}
		})
	}
	boom := errors.New("boom")
	if _, _, err := search(1000, 10_000, func(int) (bool, error) { return false, boom }); !errors.Is(err, boom) {
		t.Errorf("error = %v, want %v", err, boom)
	}
}

func TestSweepTerminates(t *testing.T) {
	cfg := Config{Workloads: []string{Put}, Duration: 20 * time.Millisecond, Keys: 100, ValueBytes: 20,
		Batch: 50, Dir: t.TempDir()}
	var trials int
	sr, err := Sweep(context.Background(), cfg, SweepOptions{P99: time.Hour, Start: 500, Max: 4000,
		Trial: func(Result, bool) { trials++ }})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing takes an hour: every trial passes up to Max.
	if sr.Rate != 4000 || sr.Best == nil || sr.Best.Rate != 4000 || sr.Trials != trials || trials != 4 {
		t.Errorf("sweep = %+v after %d trials, want rate 4000 after 4 (500, 1000, 2000, 4000)", sr, trials)
	}
	if _, err := Sweep(context.Background(), Config{Workloads: []string{Put, Get}}, SweepOptions{P99: time.Millisecond}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("two workloads: error %v, want ErrBadConfig", err)
	}
}

func TestOpenLoopConfig(t *testing.T) {
	c := Config{Rate: 500, Ops: 7}
	c.EnsureDefaults()
	if c.Duration != DefaultDuration || c.Ops != 5000 || c.Sides() != 1 {
		t.Errorf("defaults: duration %v, ops %d, sides %d; want %v, 5000 (rate × duration), 1", c.Duration, c.Ops, c.Sides(), DefaultDuration)
	}
	for _, bad := range []Config{
		{Rate: -1},
		{Rate: 100, Backend: BackendEtcd, Etcd: etcdstore.Options{Endpoints: []string{"http://127.0.0.1:1"}}},
	} {
		if _, err := Run(context.Background(), bad); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%+v: error %v, want ErrBadConfig", bad, err)
		}
	}
}

// TestOpenLoopTick checks that the open-loop source sleeps at least
// Config.Tick between emits: 4000 events over 200 ms with a 20 ms tick
// reach the graph in at most one slice per wake (10 wakes, and one at the
// start and end) plus one per Batch events a late wake may hold, where
// waking for every event due makes hundreds of slices.
func TestOpenLoopTick(t *testing.T) {
	cfg := Config{Workloads: []string{Put}, Rate: 20_000, Duration: 200 * time.Millisecond, Tick: 20 * time.Millisecond,
		Keys: 200, ValueBytes: 40, Batch: 1000, Sync: true, Dir: t.TempDir()}
	slices := 0 // Progress is called once per completed slice
	cfg.Progress = func(int, int) { slices++ }
	rs, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r := rs[0]; r.Ops != 4000 {
		t.Fatalf("%d ops, want 4000", r.Ops)
	}
	if limit := 12 + 4000/cfg.Batch; slices > limit {
		t.Errorf("4000 events came in %d slices, want at most %d with a %v tick", slices, limit, cfg.Tick)
	}
}

// TestOpenLoopDiag checks the breakdown of an open-loop run: every event's
// lag in the source and its service time add up to its latency, and the
// commit groups, WAL fsyncs and transactions of the timed window (not the
// preload) are counted.
func TestOpenLoopDiag(t *testing.T) {
	for _, workload := range []string{Put, Get} {
		t.Run(workload, func(t *testing.T) {
			cfg := Config{Workloads: []string{workload}, Rate: 2000, Duration: 300 * time.Millisecond,
				Keys: 2000, ValueBytes: 40, Batch: 50, Sync: true, Dir: t.TempDir()}
			rs, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			d := rs[0].Diag
			if d == nil {
				t.Fatal("no diag in open loop")
			}
			if d.GenLag.P50 < 0 || d.GenLag.Max < d.GenLag.P50 || d.Service.P50 <= 0 {
				t.Errorf("gen lag %+v, service %+v: want lag >= 0 and service > 0", d.GenLag, d.Service)
			}
			// Each event's lag and service sum to its latency, so the
			// largest of each is at most the largest latency.
			if d.GenLag.Max > rs[0].MaxUs || d.Service.Max > rs[0].MaxUs {
				t.Errorf("gen lag max %v or service max %v above latency max %v", d.GenLag.Max, d.Service.Max, rs[0].MaxUs)
			}
			if d.CPUusPerOp <= 0 {
				t.Errorf("cpu per op %v", d.CPUusPerOp)
			}
			if workload == Get {
				// Reads only: nothing to commit in the window, though the
				// preload wrote 2000 keys in 40 groups; closing the store
				// may sync the log once.
				if d.Groups != 0 || d.WALSyncs > 2 {
					t.Errorf("get: %d groups, %d WAL syncs counted, want 0 and at most 2 (preload left out)", d.Groups, d.WALSyncs)
				}
				return
			}
			// The mean is a float: 298 groups of 600/298 make
			// 600.0000000000001.
			if d.Groups == 0 || math.Round(d.GroupTxnMean*float64(d.Groups)) != float64(rs[0].Ops) {
				t.Errorf("%d groups of %v transactions on average, want %d transactions in all", d.Groups, d.GroupTxnMean, rs[0].Ops)
			}
			if d.GroupTxns.Max < d.GroupTxns.P50 || d.GroupTxns.P50 < 1 {
				t.Errorf("transactions per group %+v", d.GroupTxns)
			}
			if d.WALSyncs == 0 || d.WALSync.P50 <= 0 {
				t.Errorf("%d WAL syncs, p50 %v µs: want some", d.WALSyncs, d.WALSync.P50)
			}
		})
	}
}

// TestStoreOptionsGroupBounds checks that the commit group bounds of a
// Config reach the flowrun store, defaults when unset, and that negative
// ones are refused.
func TestStoreOptionsGroupBounds(t *testing.T) {
	for _, c := range []struct {
		name      string
		maxGroup  int
		build     time.Duration
		wantGroup int
		wantBuild time.Duration
	}{
		{"defaults", 0, 0, pebblestore.DefaultMaxGroup, 0},
		{"set", 256, 500 * time.Microsecond, 256, 500 * time.Microsecond},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := Config{Sync: true, MaxGroup: c.maxGroup, MaxGroupBuild: c.build}
			cfg.EnsureDefaults()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			o := cfg.storeOptions()
			if o.MaxGroup != c.wantGroup || o.MaxGroupBuild != c.wantBuild {
				t.Errorf("store MaxGroup %d, MaxGroupBuild %v; want %d, %v", o.MaxGroup, o.MaxGroupBuild, c.wantGroup, c.wantBuild)
			}
		})
	}
	for _, cfg := range []Config{{MaxGroup: -1}, {MaxGroupBuild: -time.Millisecond}} {
		cfg.EnsureDefaults()
		if err := cfg.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("MaxGroup %d, MaxGroupBuild %v: Validate = %v, want ErrBadConfig", cfg.MaxGroup, cfg.MaxGroupBuild, err)
		}
	}
}

// TestHistQuantiles checks the percentiles read from a runtime/metrics
// histogram's growth: only what was counted after the first sample.
func TestHistQuantiles(t *testing.T) {
	buckets := []float64{0, 1e-6, 1e-3, 1e-2, math.Inf(1)}
	before := &metrics.Float64Histogram{Counts: []uint64{5, 0, 0, 7}, Buckets: buckets}
	h := &metrics.Float64Histogram{Counts: []uint64{5, 98, 1, 8}, Buckets: buckets}
	q := histQuantiles(h, before)
	want := loadgen.Quantiles{P50: 1000, P90: 1000, P99: 10_000, P999: 10_000, Max: 10_000}
	if q != want {
		t.Errorf("histQuantiles = %+v, want %+v", q, want)
	}
	if q := histQuantiles(h, nil); q != (loadgen.Quantiles{}) {
		t.Errorf("without a first sample: %+v, want zero", q)
	}
}
