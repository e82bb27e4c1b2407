package kvbench

import (
	"math"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/loadgen"
)

// Diag breaks an open-loop run's latency down by where it was spent, with
// figures that a loaded machine moves less than the latency itself: how
// late the source sent each event, the latency from sending, the commit
// groups, the WAL fsyncs of this disk and the garbage collector. All of
// it covers the timed window only (the preload is left out).
type Diag struct {
	// GenLag is, per event, the time from its scheduled time to the
	// source handing it to the graph (the start of the Flush that sends
	// it): the wait for the source's tick (at most Config.Tick), the
	// source's own scheduling delay, and the time earlier Flush calls were
	// held back by a full graph.
	GenLag loadgen.Quantiles `json:"gen_lag_us"`
	// FlushBlocked is the total time the source's Flush calls waited for
	// room in the kv node's queue (backpressure from the graph).
	FlushBlockedUs float64 `json:"flush_blocked_us"`
	// Service is, per event, the time from the source handing it over to
	// its completion: the latency without the source's share.
	Service loadgen.Quantiles `json:"service_us"`
	// Groups counts the store's commit groups; GroupTxns is the
	// distribution of transactions per group (mean, p50, p99, max) and
	// GroupLatency that of each group's time from the writer starting it
	// to its release (build, apply and fsync).
	Groups       int               `json:"groups"`
	GroupTxnMean float64           `json:"group_txns_mean"`
	GroupTxns    loadgen.Quantiles `json:"group_txns"`
	GroupLatency loadgen.Quantiles `json:"group_latency_us"`
	// WALSyncs counts the fsyncs of the store's write-ahead log and
	// WALSync is their duration (the disk's, under this load).
	WALSyncs int               `json:"wal_syncs"`
	WALSync  loadgen.Quantiles `json:"wal_sync_us"`
	// GCCycles counts completed garbage collections; GCPauseTotalUs sums
	// their stop-the-world pauses (from the runtime's histogram, each
	// pause counted at its bucket's midpoint) and GCPauseMaxUs is the
	// upper bound of the largest pause's bucket. GCCPUShare is the
	// garbage collector's share of the process's CPU time (marking, assists
	// and pauses), by the runtime's own estimate.
	GCCycles       uint64  `json:"gc_cycles"`
	GCPauseTotalUs float64 `json:"gc_pause_total_us"`
	GCPauseMaxUs   float64 `json:"gc_pause_max_us"`
	GCCPUShare     float64 `json:"gc_cpu_share"`
	// SchedLatency is the distribution of the time goroutines spent
	// runnable before a P ran them (runtime/metrics /sched/latencies,
	// bucket upper bounds): how long work waited for a CPU inside the
	// process, flush and compaction goroutines holding the Ps included.
	// It does not include the time the kernel kept the process's threads
	// off the CPUs.
	SchedLatency loadgen.Quantiles `json:"sched_latency_us"`
	// CPUusPerOp is the process's CPU time per event over the run.
	CPUusPerOp float64 `json:"cpu_us_per_op"`
}

// diagCollector gathers a Diag while an open-loop run goes on. on turns
// the commit group and fsync records on when the timed window starts.
type diagCollector struct {
	on atomic.Bool

	// Written by the store's syncer goroutine only, read after Close.
	groupTxns []time.Duration // transactions per group, as Durations for loadgen.Percentiles
	groupLat  []time.Duration

	mu    sync.Mutex // syncs come from Pebble's log writer goroutine(s)
	syncs []time.Duration

	gc0      gcSample
	cpuStart time.Duration
}

// storeOptions adds the collector's hooks to opts: OnCommit, and a file
// system under Pebble's that times every WAL fsync.
func (d *diagCollector) storeOptions(opts *pebblestore.Options) {
	opts.OnCommit = func(ci pebblestore.CommitInfo) {
		if !d.on.Load() || !ci.Wrote {
			return
		}
		d.groupTxns = append(d.groupTxns, time.Duration(ci.Transactions))
		d.groupLat = append(d.groupLat, ci.Latency)
	}
	next := opts.Pebble
	opts.Pebble = func(po *pebble.Options) {
		if next != nil {
			next(po)
		}
		base := po.FS
		if base == nil {
			base = vfs.Default
		}
		po.FS = syncTimingFS{FS: base, d: d}
	}
}

// start marks the beginning of the timed window.
func (d *diagCollector) start() {
	d.gc0 = readGC()
	d.cpuStart = processCPU()
	d.on.Store(true)
}

// addSync records one WAL fsync.
func (d *diagCollector) addSync(t time.Duration) {
	if !d.on.Load() {
		return
	}
	d.mu.Lock()
	d.syncs = append(d.syncs, t)
	d.mu.Unlock()
}

// result summarises what was collected; o holds the per-event figures
// (the caller holds o.mu).
func (d *diagCollector) result(o *openLoop) *Diag {
	gc := readGC().since(d.gc0)
	r := &Diag{
		GCCycles:       gc.cycles,
		GCPauseTotalUs: gc.pauseTotal.Seconds() * 1e6,
		GCPauseMaxUs:   gc.pauseMax.Seconds() * 1e6,
		GCCPUShare:     gc.share(),
		SchedLatency:   gc.sched,
		FlushBlockedUs: float64(o.flushBlocked) / float64(time.Microsecond),
		Groups:         len(d.groupTxns),
	}
	if n := o.sched.N; n > 0 {
		r.CPUusPerOp = float64(processCPU()-d.cpuStart) / float64(time.Microsecond) / float64(n)
		r.GenLag, r.Service = o.lag.Quantiles(), o.svc.Quantiles()
	}
	if len(d.groupTxns) > 0 {
		var sum time.Duration
		for _, t := range d.groupTxns {
			sum += t
		}
		r.GroupTxnMean = float64(sum) / float64(len(d.groupTxns))
		q := loadgen.Percentiles(d.groupTxns)
		// Percentiles reports microseconds: back to plain counts.
		scale := float64(time.Microsecond)
		r.GroupTxns = loadgen.Quantiles{P50: q.P50 * scale, P90: q.P90 * scale, P99: q.P99 * scale, P999: q.P999 * scale, Max: q.Max * scale}
		r.GroupLatency = loadgen.Percentiles(d.groupLat)
	}
	d.mu.Lock()
	r.WALSyncs = len(d.syncs)
	r.WALSync = loadgen.Percentiles(d.syncs)
	d.mu.Unlock()
	return r
}

// syncTimingFS times the fsyncs of write-ahead log files (*.log).
type syncTimingFS struct {
	vfs.FS
	d *diagCollector
}

func (fs syncTimingFS) Unwrap() vfs.FS { return fs.FS }

func (fs syncTimingFS) wrap(name string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return syncTimingFile{File: f, d: fs.d}, nil
}

func (fs syncTimingFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.Create(name, c)
	return fs.wrap(name, f, err)
}

func (fs syncTimingFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, c, opts...)
	return fs.wrap(name, f, err)
}

func (fs syncTimingFS) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := fs.FS.ReuseForWrite(oldname, newname, c)
	return fs.wrap(newname, f, err)
}

type syncTimingFile struct {
	vfs.File
	d *diagCollector
}

func (f syncTimingFile) Sync() error {
	t := time.Now()
	err := f.File.Sync()
	f.d.addSync(time.Since(t))
	return err
}

func (f syncTimingFile) SyncData() error {
	t := time.Now()
	err := f.File.SyncData()
	f.d.addSync(time.Since(t))
	return err
}

// gcSample is the garbage collector's counters at one moment.
type gcSample struct {
	cycles        uint64
	pauses        *metrics.Float64Histogram
	gcCPU, allCPU float64
	sched         *metrics.Float64Histogram
}

// gcDelta is what the collector did between two samples.
type gcDelta struct {
	cycles               uint64
	pauseTotal, pauseMax time.Duration
	gcCPU, allCPU        float64
	sched                loadgen.Quantiles
}

func (d gcDelta) share() float64 {
	if d.allCPU <= 0 {
		return 0
	}
	return d.gcCPU / d.allCPU
}

var gcMetricNames = []string{
	"/gc/cycles/total:gc-cycles",
	"/sched/pauses/total/gc:seconds",
	"/cpu/classes/gc/total:cpu-seconds",
	"/cpu/classes/total:cpu-seconds",
	"/sched/latencies:seconds",
}

func readGC() gcSample {
	s := make([]metrics.Sample, len(gcMetricNames))
	for i, n := range gcMetricNames {
		s[i].Name = n
	}
	metrics.Read(s)
	var g gcSample
	if s[0].Value.Kind() == metrics.KindUint64 {
		g.cycles = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindFloat64Histogram {
		g.pauses = s[1].Value.Float64Histogram()
	}
	if s[2].Value.Kind() == metrics.KindFloat64 {
		g.gcCPU = s[2].Value.Float64()
	}
	if s[3].Value.Kind() == metrics.KindFloat64 {
		g.allCPU = s[3].Value.Float64()
	}
	if s[4].Value.Kind() == metrics.KindFloat64Histogram {
		g.sched = s[4].Value.Float64Histogram()
	}
	return g
}

func (g gcSample) since(before gcSample) gcDelta {
	d := gcDelta{cycles: g.cycles - before.cycles, gcCPU: g.gcCPU - before.gcCPU, allCPU: g.allCPU - before.allCPU}
	d.sched = histQuantiles(g.sched, before.sched)
	if g.pauses == nil || before.pauses == nil || len(g.pauses.Counts) != len(before.pauses.Counts) {
		return d
	}
	var total float64
	for i, c := range g.pauses.Counts {
		n := c - before.pauses.Counts[i]
		if n == 0 {
			continue
		}
		lo, hi := g.pauses.Buckets[i], g.pauses.Buckets[i+1]
		if math.IsInf(lo, -1) {
			lo = 0
		}
		if math.IsInf(hi, 1) {
			hi = lo
		}
		total += float64(n) * (lo + hi) / 2
		d.pauseMax = time.Duration(hi * float64(time.Second))
	}
	d.pauseTotal = time.Duration(total * float64(time.Second))
	return d
}

// histQuantiles returns the percentiles, in microseconds, of what a
// runtime/metrics histogram counted between before and h, each the upper
// bound of the bucket it falls in (the lower bound for the last, open
// bucket).
func histQuantiles(h, before *metrics.Float64Histogram) loadgen.Quantiles {
	if h == nil || before == nil || len(h.Counts) != len(before.Counts) {
		return loadgen.Quantiles{}
	}
	counts := make([]uint64, len(h.Counts))
	var total uint64
	for i, c := range h.Counts {
		counts[i] = c - before.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return loadgen.Quantiles{}
	}
	at := func(q float64) float64 {
		want := uint64(math.Ceil(q * float64(total)))
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen >= want && c > 0 {
				hi := h.Buckets[i+1]
				if math.IsInf(hi, 1) {
					hi = h.Buckets[i]
				}
				return hi * 1e6
			}
		}
		return 0
	}
	return loadgen.Quantiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: at(1)}
}
