package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/connectors/httpconn/httpbench"
	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/kvbench"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

type benchFlags struct {
	workloads   []string
	ops         int
	keys        int
	valueBytes  int
	batch       int
	sync        bool
	rowCache    int64
	dir         string
	json        bool
	cpuprofile  string
	trace       string
	backend     string
	endpoints   string
	etcdReads   string
	rounds      int
	http        bool
	httpEngine  string
	clients     int
	rate        int
	duration    time.Duration
	tick        time.Duration
	maxGroup    int
	groupBuild  time.Duration
	maxCoalesce int
	paceWork    time.Duration
	paceRest    time.Duration
	sweepP99    time.Duration
	peer        string
	peerPort    int
	peerConns   int
}

// benchPeerWorkloads are the workloads --peer redis runs by default: those
// Redis has a counterpart for.
var benchPeerWorkloads = []string{kvbench.Put, kvbench.Get, kvbench.Increment}

// Defaults of --ops and --keys with --backend etcd: a cluster commits a
// few thousand operations per second, not hundreds of thousands.
const (
	etcdBenchOps  = 20_000
	etcdBenchKeys = 10_000
	// etcdBenchRounds alternates the two sides every 2000 operations of
	// the default 20000, so load from other processes falls on both alike.
	etcdBenchRounds = 10
)

func newBenchCommand(e env) *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure kv connector throughput end to end against raw Pebble",
		Long: `Run key-value workloads through the full event path (source -> kv connector
on a Pebble store -> sink) and, on a fresh directory, the same operations
against Pebble directly, with the same batch size and sync policy.

Workloads: put, get, mixed (50% put, 50% get), increment, cas, scan (10
entries per scan). Keys are drawn uniformly from --keys keys; get, mixed,
increment, cas and scan preload every key first (untimed).

With --backend etcd the kv connector runs on the etcd cluster of
--endpoints (default $FLOWRUN_ETCD_ENDPOINTS) under a fresh key prefix
deleted afterwards, and the comparison is the etcd client used directly
doing the same work as the store (reported as "etcd_ops_per_s";
"pebble_ops_per_s" is 0): the same operations, keys and values, batches
cut to etcd's 128 operations per transaction, one read transaction per
chunk with the next chunk's read sent as soon as one is answered,
read-modify-writes committed one chunk at a time under compares on what
they read, read-only batches read in two concurrent halves, reads with
--etcd-reads consistency on both sides. Each side preloads once; its
timed operations are then split into --rounds rounds (default 10) that
alternate the two sides, so load from other processes falls on both
alike; "ratio" is flowrun's throughput over the raw client's over the
summed times. --ops and --keys
then default to 20000 and 10000; --sync, --dir and --row-cache do not
apply.

The flowrun store keeps hot records in its row cache (--row-cache bytes,
default 32 MiB); --row-cache -1 disables it, so that both sides read
through Pebble alike.

One JSON object per workload is printed on stdout with --json or when stdout
is not a terminal:
  {"workload","ops","flowrun_ops_per_s","pebble_ops_per_s","ratio",
   "p50_us","p99_us","peak_rss_mb","row_cache_hit_rate","flowrun_cpu_us_per_op"}
and an aligned table otherwise. flowrun_cpu_us_per_op is the process's
CPU time (all threads, the benchmark's own source and sink included) per
operation over the flowrun side's timed window: on a shared machine it
moves less than the throughput. Latency is per batch, from the source
handing the batch to the graph to the sink receiving its last result,
counted once for each operation of the batch. Progress goes to stderr.

With --rate N the flowrun side runs open loop: N events/s for --duration
(N x duration operations), each event sent once it is due whether or not
earlier ones have completed, in groups of whatever is due (the source
sleeps at least --tick, default 200µs, between groups), and its latency
counted from its scheduled time to its completion, so queueing, and the
wait for the tick, are not hidden. The raw Pebble side is not run ("pebble_ops_per_s" and "ratio"
are 0); "flowrun_ops_per_s" is the achieved rate, and the JSON adds
  {"rate","p90_us","p999_us","max_us","diag"}
where "diag" breaks the latency down (docs/performance.md, Open loop): the
generator's lag and the service time per event, commit groups, WAL fsyncs,
Go scheduler latency, GC. --max-group and --max-group-build set the flowrun
store's commit group bounds, --max-coalesce the graph's merging of the
slices queued for the kv node.
With --sweep-p99 D, each workload is run open loop at rising rates from
--rate (default 1000), doubling then bisecting, for --duration each, to find
the highest rate whose p99 stays at most D (within 10%). Each trial is
reported on stderr; one JSON object per workload on stdout:
  {"workload","sweep_p99_us","rate","trials","best":{...}}
("rate" 0 and no "best" when no rate tried met the bound).

With --peer redis, put, get and increment (the default workloads then) are
also measured against Redis, in the same run: after the two sides of each,
a redis-server is started for it on loopback (--peer-port, default a free
port) in a fresh directory under --dir, with "appendonly yes",
"appendfsync always" (every write fsynced before its reply, as the flowrun
store syncs every group) and no RDB snapshots; it gets the same preload,
then redis-benchmark runs SET, GET or INCR with --ops requests over --keys
random keys, --value-bytes values, --batch commands per pipeline (-P) on
--peer-clients connections (-c, default 16: the batches the graph queues
on a link), and the server is stopped. The JSON adds
  {"redis_test","redis_ops_per_s","redis_ratio","redis_cpu_us_per_op"}
(redis_ratio = flowrun_ops_per_s / redis_ops_per_s; redis_cpu_us_per_op is
the CPU time of redis-server and redis-benchmark per request, to set beside
flowrun_cpu_us_per_op on a busy machine). Needs redis-server,
redis-cli and redis-benchmark in PATH (Debian: redis-server, redis-tools).

With --http the kv connector is served by an http_server connector on
loopback, and --clients keep-alive connections (opened before the clock
starts) send sync requests (put, get; default both), each waiting for its answer (closed loop), compared
with the same commands fed through stdin in the same run. With --rate N the
load is open loop instead: N requests/s for --duration, sent on schedule
whether or not earlier ones were answered, and latency counts from each
request's scheduled time. One JSON object per workload:
  {"workload","mode","clients","rate","requests","errors","http_req_per_s",
   "stdin_ops_per_s","ratio","p50_us","p90_us","p99_us","p999_us","max_us"}`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext(cmd.Context(), e)
			defer stop()
			if f.backend == kvbench.BackendEtcd {
				if !cmd.Flags().Changed("ops") {
					f.ops = etcdBenchOps
				}
				if !cmd.Flags().Changed("keys") {
					f.keys = etcdBenchKeys
				}
				if !cmd.Flags().Changed("rounds") {
					f.rounds = etcdBenchRounds
				}
			}
			if f.http {
				if f.sweepP99 != 0 || f.peer != "" {
					return usageError{errors.New("--sweep-p99 and --peer do not apply to --http")}
				}
				return runHTTPBench(ctx, e, f, cmd.Flags().Changed("workload"), cmd.Flags().Changed("ops"))
			}
			if f.peer != "" && !cmd.Flags().Changed("workload") {
				f.workloads = benchPeerWorkloads
			}
			return runBench(ctx, e, f)
		},
	}
	d := kvbench.DefaultConfig()
	fl := cmd.Flags()
	fl.StringSliceVar(&f.workloads, "workload", d.Workloads, "workloads to run, comma-separated")
	fl.IntVar(&f.ops, "ops", d.Ops, "timed operations per workload and side")
	fl.IntVar(&f.keys, "keys", d.Keys, "number of distinct keys")
	fl.IntVar(&f.valueBytes, "value-bytes", d.ValueBytes, "size of each value in bytes")
	fl.IntVar(&f.batch, "batch", d.Batch, "events per batch (and operations per raw Pebble batch)")
	fl.BoolVar(&f.sync, "sync", d.Sync, "fsync every batch before its results count")
	fl.Int64Var(&f.rowCache, "row-cache", pebblestore.DefaultRowCacheBytes, "row cache of the flowrun store in bytes; -1 disables it, to measure Pebble's own reads")
	fl.StringVar(&f.dir, "dir", "", "directory for the temporary stores (default: the system temp dir)")
	fl.BoolVar(&f.json, "json", false, "print JSON lines even on a terminal")
	fl.StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to `FILE`")
	fl.StringVar(&f.trace, "trace", "", "write an execution trace (go tool trace) of the whole run to `FILE`: where goroutines waited, GC cycles, processor use")
	fl.StringVar(&f.backend, "backend", kvbench.BackendPebble, "store under test: pebble or etcd")
	fl.BoolVar(&f.http, "http", false, "measure sync requests to an http_server connector against stdin")
	fl.IntVar(&f.clients, "clients", 64, "--http: keep-alive connections")
	fl.StringVar(&f.httpEngine, "http-engine", "", "--http: the http_server's engine, fasthttp or net/http (default: the connector's)")
	fl.IntVar(&f.rate, "rate", 0, "open loop at this many events/s (--http: requests/s); 0: closed loop; with --sweep-p99, the first rate tried")
	fl.DurationVar(&f.duration, "duration", kvbench.DefaultDuration, "--rate, --sweep-p99: how long each open-loop run sends")
	fl.DurationVar(&f.tick, "tick", kvbench.DefaultTick, "--rate, --sweep-p99: shortest sleep of the open-loop source between emits; 0 wakes it for every event due")
	fl.IntVar(&f.maxGroup, "max-group", pebblestore.DefaultMaxGroup, "most transactions in one commit group of the flowrun store")
	fl.DurationVar(&f.groupBuild, "max-group-build", 0, "bound a commit group of the flowrun store by the time its writer spends building it (0: no bound), as the kv connector's max_group_build")
	fl.IntVar(&f.maxCoalesce, "max-coalesce", pipeline.DefaultMaxCoalesce, "most events of the slices queued for the kv node merged into one call (the graph's coalescing; smaller: shorter waits for reads, smaller commit groups for writes)")
	fl.DurationVar(&f.paceWork, "pace-work", pebblestore.DefaultPaceWork, "how long each flush or compaction of the flowrun store writes before it rests, as the kv connector's pace_work")
	fl.DurationVar(&f.paceRest, "pace-rest", pebblestore.DefaultPaceRest, "how long each flush or compaction of the flowrun store then rests (0: no pacing), as the kv connector's pace_rest")
	fl.DurationVar(&f.sweepP99, "sweep-p99", 0, "find the highest open-loop rate whose p99 latency stays at most this `bound` (e.g. 5ms)")
	fl.StringVar(&f.peer, "peer", "", "also measure put, get, increment on a redis-server started for each (redis): SET, GET, INCR by redis-benchmark")
	fl.IntVar(&f.peerPort, "peer-port", 0, "--peer redis: loopback port of the redis-server (0: a free port)")
	fl.IntVar(&f.peerConns, "peer-clients", kvbench.DefaultRedisClients, "--peer redis: redis-benchmark connections (-c), each pipelining --batch commands (-P)")
	fl.StringVar(&f.endpoints, "endpoints", os.Getenv("FLOWRUN_ETCD_ENDPOINTS"), "etcd client URLs, comma-separated, for --backend etcd (default $FLOWRUN_ETCD_ENDPOINTS)")
	fl.IntVar(&f.rounds, "rounds", 1, "--backend etcd: alternate the flowrun and raw sides in this many rounds (default 10 with --backend etcd)")
	fl.StringVar(&f.etcdReads, "etcd-reads", string(etcdstore.Linearizable), "--backend etcd: read consistency of both sides, linearizable or serializable")
	return cmd
}

func runBench(ctx context.Context, e env, f benchFlags) error {
	for name, v := range map[string]int{"--ops": f.ops, "--keys": f.keys, "--value-bytes": f.valueBytes, "--batch": f.batch, "--rounds": f.rounds} {
		if v <= 0 {
			return usageError{fmt.Errorf("%s must be positive, got %d", name, v)}
		}
	}
	if f.maxGroup <= 0 || f.groupBuild < 0 {
		return usageError{fmt.Errorf("--max-group (%d) must be positive and --max-group-build (%v) not negative", f.maxGroup, f.groupBuild)}
	}
	if f.maxCoalesce <= 0 {
		return usageError{fmt.Errorf("--max-coalesce must be positive, got %d", f.maxCoalesce)}
	}
	if f.paceWork <= 0 || f.paceRest < 0 {
		return usageError{fmt.Errorf("--pace-work (%v) must be positive and --pace-rest (%v) not negative", f.paceWork, f.paceRest)}
	}
	if f.rate < 0 || f.duration <= 0 || f.sweepP99 < 0 || f.tick < 0 {
		return usageError{fmt.Errorf("--rate (%d) must not be negative, --duration (%v) must be positive, --sweep-p99 (%v) and --tick (%v) must not be negative", f.rate, f.duration, f.sweepP99, f.tick)}
	}
	tick := f.tick
	if tick == 0 {
		tick = -1 // kvbench: every event due; 0 is its default
	}
	cfg := kvbench.Config{
		Rate:       f.rate,
		Duration:   f.duration,
		Tick:       tick,
		Workloads:  f.workloads,
		Ops:        f.ops,
		Keys:       f.keys,
		ValueBytes: f.valueBytes,
		Batch:      f.batch,
		Sync:       f.sync,
		Dir:        f.dir,
		Backend:    f.backend,
		Rounds:     f.rounds,
		Peer:       f.peer,
		Redis:      kvbench.RedisOptions{Port: f.peerPort, Clients: f.peerConns},

		RowCacheBytes: f.rowCache,
		MaxGroup:      f.maxGroup,
		MaxGroupBuild: f.groupBuild,
		MaxCoalesce:   f.maxCoalesce,
		Pace:          pebblestore.Pace{Work: f.paceWork, Rest: f.paceRest},
		NoPace:        f.paceRest == 0,
	}
	switch r := etcdstore.ReadConsistency(f.etcdReads); r {
	case etcdstore.Linearizable, etcdstore.Serializable:
		cfg.Etcd.Reads = r
	default:
		return usageError{fmt.Errorf("--etcd-reads %q: want %s or %s", f.etcdReads, etcdstore.Linearizable, etcdstore.Serializable)}
	}
	for _, ep := range strings.Split(f.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			cfg.Etcd.Endpoints = append(cfg.Etcd.Endpoints, ep)
		}
	}
	if f.sweepP99 > 0 {
		cfg.Rate = max(f.rate, 1) // open loop, for Validate
	}
	if f.peer != "" && f.peerConns <= 0 {
		return usageError{fmt.Errorf("--peer-clients must be positive, got %d", f.peerConns)}
	}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	if st, err := os.Stat(cfg.Dir); err != nil || !st.IsDir() {
		return usageError{fmt.Errorf("--dir %q is not a directory", cfg.Dir)}
	}

	if f.cpuprofile != "" {
		end, err := startCPUProfile(f.cpuprofile)
		if err != nil {
			return err
		}
		defer end()
	}
	if f.trace != "" {
		end, err := startTrace(f.trace)
		if err != nil {
			return err
		}
		defer end()
	}

	asJSON := f.json || !stdoutIsTerminal(e)
	enc := json.NewEncoder(e.stdout)
	if f.sweepP99 > 0 {
		return runBenchSweep(ctx, e, cfg, f, asJSON)
	}
	sides := cfg.Sides()
	prog := newBenchProgress(e, sides*cfg.Ops*len(cfg.Workloads))
	var results []kvbench.Result
	// One workload at a time, so each JSON line appears as soon as its
	// workload is done.
	for i, w := range cfg.Workloads {
		one := cfg
		one.Workloads = []string{w}
		offset := sides * cfg.Ops * i
		one.Progress = func(done, _ int) { prog.update(w, offset+done) }
		rs, err := kvbench.Run(ctx, one)
		if err != nil {
			prog.clear()
			if errors.Is(err, context.Canceled) {
				return exitError{exitFail}
			}
			return err
		}
		for _, r := range rs {
			if asJSON {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			results = append(results, r)
		}
	}
	prog.clear()
	if !asJSON {
		printBenchTable(e, results)
	}
	return nil
}

// runBenchSweep runs `flowrun bench --sweep-p99`: one sweep per workload,
// trials on stderr, one result per workload on stdout.
func runBenchSweep(ctx context.Context, e env, cfg kvbench.Config, f benchFlags, asJSON bool) error {
	enc := json.NewEncoder(e.stdout)
	for _, w := range cfg.Workloads {
		one := cfg
		one.Workloads = []string{w}
		one.Ops = 0 // Run derives it from each trial's rate
		opts := kvbench.SweepOptions{P99: f.sweepP99, Start: f.rate, Trial: func(r kvbench.Result, pass bool) {
			verdict := "over"
			if pass {
				verdict = "within"
			}
			fmt.Fprintf(e.stderr, "bench --sweep-p99 %v: %s at %d events/s: achieved %.0f/s, p50 %.0f µs, p99 %.0f µs (%s), max %.0f µs\n",
				f.sweepP99, w, r.Rate, r.FlowrunOpsPerS, r.P50us, r.P99us, verdict, r.MaxUs)
		}}
		sr, err := kvbench.Sweep(ctx, one, opts)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return exitError{exitFail}
			}
			return err
		}
		if asJSON {
			if err := enc.Encode(sr); err != nil {
				return err
			}
			continue
		}
		if sr.Best == nil {
			fmt.Fprintf(e.stdout, "%s: no rate tried kept p99 <= %v (%d trials)\n", w, f.sweepP99, sr.Trials)
			continue
		}
		fmt.Fprintf(e.stdout, "%s: highest rate with p99 <= %v: %d events/s (p99 %.0f µs, %d trials)\n",
			w, f.sweepP99, sr.Rate, sr.Best.P99us, sr.Trials)
	}
	return nil
}

func stdoutIsTerminal(e env) bool {
	f, ok := e.stdout.(*os.File)
	return ok && isTerminal(f)
}

func printBenchTable(e env, results []kvbench.Result) {
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	raw := "pebble"
	if len(results) > 0 && results[0].Backend == kvbench.BackendEtcd {
		raw = "etcd"
	}
	if len(results) > 0 && results[0].Rate > 0 {
		fmt.Fprintf(tw, "workload\trate/s\tops\tachieved/s\tp50 µs\tp90 µs\tp99 µs\tp99.9 µs\tmax µs\t\n")
		for _, r := range results {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t\n",
				r.Workload, r.Rate, r.Ops, r.FlowrunOpsPerS, r.P50us, r.P90us, r.P99us, r.P999us, r.MaxUs)
		}
		tw.Flush()
		return
	}
	peer := slices.ContainsFunc(results, func(r kvbench.Result) bool { return r.RedisTest != "" })
	fmt.Fprintf(tw, "workload\tops\tflowrun ops/s\t%s ops/s\tratio\t", raw)
	if peer {
		fmt.Fprintf(tw, "redis test\tredis ops/s\tratio to redis\tredis CPU µs/op\t")
	}
	fmt.Fprintf(tw, "p50 µs\tp99 µs\tpeak RSS MiB\tCPU µs/op\t\n")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%.2f\t", r.Workload, r.Ops, r.FlowrunOpsPerS, r.PebbleOpsPerS+r.EtcdOpsPerS, r.Ratio)
		if peer && r.RedisTest != "" {
			fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t", r.RedisTest, r.RedisOpsPerS, r.RedisRatio, r.RedisCPUusPerOp)
		} else if peer {
			fmt.Fprintf(tw, "-\t-\t-\t-\t")
		}
		fmt.Fprintf(tw, "%.0f\t%.0f\t%.0f\t%.2f\t\n", r.P50us, r.P99us, r.PeakRSSMB, r.FlowrunCPUusPerOp)
	}
	tw.Flush()
}

// benchProgress reports progress on stderr: a progress bar with rate and
// ETA on a terminal, a line per workload and tenth otherwise.
type benchProgress struct {
	e        env
	total    int
	bar      *progressbar.ProgressBar
	workload string
	lastStep int
}

func newBenchProgress(e env, total int) *benchProgress {
	p := &benchProgress{e: e, total: total, lastStep: -1}
	if e.stderrIsTerminal {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(e.stderr),
			progressbar.OptionSetDescription("bench"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("ops"),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

func (p *benchProgress) update(workload string, done int) {
	if p.bar != nil {
		if workload != p.workload {
			p.workload = workload
			p.bar.Describe("bench " + workload)
		}
		_ = p.bar.Set(done)
		return
	}
	if step := 10 * done / p.total; step != p.lastStep {
		p.lastStep = step
		fmt.Fprintf(p.e.stderr, "bench: %s %d%%\n", workload, 100*done/p.total)
	}
}

func (p *benchProgress) clear() {
	if p.bar != nil {
		_ = p.bar.Clear()
	}
}

// runHTTPBench runs `flowrun bench --http`.
func runHTTPBench(ctx context.Context, e env, f benchFlags, workloadSet, opsSet bool) error {
	cfg := httpbench.Config{
		Clients: f.clients, Keys: f.keys, ValueBytes: f.valueBytes,
		Rate: f.rate, Duration: f.duration, NoSync: !f.sync, Dir: f.dir, Engine: f.httpEngine,
	}
	if workloadSet {
		cfg.Workloads = f.workloads
	}
	if opsSet {
		cfg.Requests = f.ops
	}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return usageError{err}
	}
	enc := json.NewEncoder(e.stdout)
	for _, w := range cfg.Workloads {
		one := cfg
		one.Workloads = []string{w}
		fmt.Fprintf(e.stderr, "bench --http: %s...\n", w)
		rs, err := httpbench.Run(ctx, one)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return exitError{exitFail}
			}
			return err
		}
		for _, r := range rs {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
	}
	return nil
}
