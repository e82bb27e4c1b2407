// Package kvbench measures the kv connector end to end against raw Pebble.
//
// Each workload (put, get, mixed, increment, cas, scan) runs twice over the
// same deterministic operation sequence, each time on a fresh directory:
//
//   - the flowrun side builds a pipeline.Graph of a generating source, the kv
//     Connector over a pebblestore.Store and a counting sink, and feeds it
//     events whose meta.kv carries the command, exactly as a flow would;
//   - the raw side performs the same operations with Pebble directly, with
//     the same batch size and sync policy and no flowrun code.
//
// The ratio of the two throughputs is the cost of the event path. Latency is
// measured on the flowrun side only: for every batch, the time from the
// source handing it to the graph (just before Flush) to the sink receiving
// the last of its results, attributed to every operation of the batch. It
// therefore includes queueing behind earlier batches when the graph is
// saturated, which it is: the source produces as fast as backpressure lets
// it.
//
// With Config.Rate set, the flowrun side runs open loop instead: event i is
// due at start + i/Rate and sent at the source's first wake from then (it
// sleeps at least Config.Tick between emits) whether or not earlier events
// have completed, for
// Config.Duration, and each event's latency counts from its scheduled time
// to its completion, so queueing behind a saturated graph is not hidden
// (the coordinated-omission correction of wrk2). The raw Pebble side is not
// run in open loop: it has no event path to load, and its batch timing
// would not be comparable.
//
// With Config.Backend BackendEtcd the connector runs over an etcdstore.Store
// on Config.Etcd's cluster, and the raw side uses the etcd client directly
// doing the same work the store does: the same operations, key count and
// value size, the same batches cut to etcd's operations per transaction,
// one read transaction per chunk, the next chunk's read sent as soon as a
// chunk's is answered (while the chunk commits, under compares on what it
// read), a read-only batch read in two concurrent halves as the connector
// reads it, and the same read consistency (Config.Etcd.Reads). With
// Config.Rounds above 1 each side's timed operations are split into
// rounds that alternate the two sides (each side preloaded once), so that
// load from other processes falls on both sides alike; the ratio is of
// the summed times.
//
// With Config.Peer PeerRedis, each workload Redis has a counterpart for
// (put: SET, get: GET, increment: INCR) is also measured on a redis-server
// started for it on loopback, in a fresh directory, with an append-only
// file fsynced before every reply (appendfsync always), by redis-benchmark
// with the same operations, keys, value size and commands per pipeline as
// the flowrun side, after the same preload; the server is stopped before
// the next workload.
package kvbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// Defaults for Config.
const (
	DefaultOps        = 1_000_000
	DefaultKeys       = 100_000
	DefaultValueBytes = 100
	// DefaultBatch is the number of events per batch handed to the graph
	// (and committed together by the raw side). 1000 is large enough to
	// amortise an fsync per batch and small enough to keep per-batch
	// latency in the low milliseconds.
	DefaultBatch = 1000
	// DefaultDuration is how long an open-loop run (Config.Rate) sends.
	DefaultDuration = 10 * time.Second
	// DefaultTick is the open-loop source's shortest sleep between two
	// emits (Config.Tick). Woken for every event due, the source hands the
	// graph slices of a few events, and every slice costs each node, and
	// the store's writer, committer and syncer, a hand-over and often a
	// commit group of its own: at 40,000 put/s (loaded machine) slices of
	// 15 events on average cost 11.6 µs of CPU per event, slices of 60
	// (a 1 ms tick) 8.2 µs, where the closed loop spends 2-3 µs. At half
	// the closed-loop rate, that overhead leaves 2 cores no spare CPU,
	// and the graph queues until its slices grow. 200 µs makes slices of
	// about 86 events at 430,000 events/s; an event waits at most that
	// long in the source, and its latency includes the wait.
	DefaultTick = 200 * time.Microsecond
	// MinValueBytes is the smallest value size: a JSON string holding a
	// ten-digit version between its quotes.
	MinValueBytes = 12
	// ScanLimit is the number of entries each scan operation reads, on both
	// sides.
	ScanLimit = 10
)

// Workload names, in the order Run uses when Config.Workloads is empty.
const (
	Put       = "put"
	Get       = "get"
	Mixed     = "mixed"
	Increment = "increment"
	CAS       = "cas"
	Scan      = "scan"
)

// Workloads returns every workload name in run order.
func Workloads() []string { return []string{Put, Get, Mixed, Increment, CAS, Scan} }

// ErrBadConfig reports a Config that cannot be run.
var ErrBadConfig = errors.New("bad benchmark config")

// Config selects what Run measures. DefaultConfig gives the documented
// defaults; EnsureDefaults fills unset numeric fields of any Config.
type Config struct {
	// Workloads to run, in order. Default: all of Workloads().
	Workloads []string
	// Ops is the number of timed operations per workload and side.
	// Default DefaultOps.
	Ops int
	// Keys is the size of the key space operations draw from (uniformly,
	// with a fixed seed). Default DefaultKeys.
	Keys int
	// ValueBytes is the size of each stored value, a JSON string of exactly
	// this many bytes (or, for increment, a number). Default
	// DefaultValueBytes, at least MinValueBytes.
	ValueBytes int
	// Batch is the number of events per batch fed to the connector, and the
	// number of operations per raw Pebble batch. Default DefaultBatch.
	Batch int
	// Sync makes every batch durable before its results count: the flowrun
	// store waits for the WAL fsync, the raw side commits with pebble.Sync.
	// A bool cannot be defaulted by EnsureDefaults, so the zero Config runs
	// without sync; DefaultConfig and the CLI set it to true.
	Sync bool
	// RowCacheBytes is the flowrun store's row cache size
	// (pebblestore.Options.RowCacheBytes): 0 for the store's default,
	// negative to disable it and measure Pebble's own reads. The raw side
	// has no row cache.
	RowCacheBytes int64
	// MaxGroup and MaxGroupBuild bound the flowrun store's commit groups
	// (pebblestore.Options.MaxGroup, by transactions, and MaxGroupBuild,
	// by the writer's time building one): 0 for the store's defaults
	// (8192, and no time bound). They trade throughput, larger groups
	// being cheaper per write, against the time the first transaction of
	// a large group waits for the rest of it.
	MaxGroup      int
	MaxGroupBuild time.Duration
	// MaxCoalesce bounds how many events of the slices queued for the
	// kv node the graph merges into one Process call
	// (pipeline.Options.MaxCoalesce): 0 for the graph's default (4096).
	// Larger merges make larger commit groups when the node is behind;
	// every event of a merge waits until the whole merge is processed.
	MaxCoalesce int
	// Pace paces the flowrun store's flushes and compactions
	// (pebblestore.Options.Pace): the zero Pace for the store's default;
	// NoPace turns pacing off.
	Pace   pebblestore.Pace
	NoPace bool
	// Dir is where each workload gets its own temporary directory, removed
	// when the workload ends. Default os.TempDir().
	Dir string
	// Backend is the store under test: BackendPebble (default) or
	// BackendEtcd.
	Backend string
	// Etcd configures the cluster of BackendEtcd (Endpoints required).
	// Each workload works under its own key prefix, Etcd.Prefix +
	// "flowrun-bench/<random>/", deleted when the workload ends. Sync and
	// Dir do not apply: etcd always commits to a quorum's disks.
	Etcd etcdstore.Options
	// Rounds, on BackendEtcd, splits each workload into this many rounds
	// alternating the flowrun and raw sides (see the package doc), so a
	// loaded machine slows both alike. Default 1; at most Ops.
	Rounds int
	// Rate, when positive, runs the flowrun side open loop at Rate
	// events/s (see the package doc); Ops is then Rate × Duration and the
	// raw side is skipped. 0 runs the closed loop.
	Rate int
	// Duration is how long an open-loop run sends. Default
	// DefaultDuration; ignored in closed loop.
	Duration time.Duration
	// Tick, in open loop, is the shortest time the source sleeps after
	// emitting what is due: it then emits everything that fell due
	// meanwhile, so an event may wait up to Tick in the source, and its
	// latency (from its scheduled time) includes that. Default
	// DefaultTick; negative wakes the source for every event due.
	Tick time.Duration
	// Peer, when PeerRedis, also measures each workload Redis has a
	// counterpart for (put, get, increment) on a redis-server started for
	// it with Redis (see runRedisWorkload), after the flowrun and raw
	// sides. Default "": no peer.
	Peer string
	// Redis configures the Redis peer.
	Redis RedisOptions
	// Progress, when set, is called after each completed batch with the
	// operations done so far and the total over all workloads and both
	// sides. It is called from one goroutine at a time, never concurrently.
	Progress func(done, total int)
}

// DefaultConfig returns the documented defaults, with Sync on.
func DefaultConfig() Config {
	c := Config{Sync: true}
	c.EnsureDefaults()
	return c
}

// EnsureDefaults fills unset (zero or negative) fields with their defaults.
func (c *Config) EnsureDefaults() {
	if len(c.Workloads) == 0 {
		c.Workloads = Workloads()
	}
	if c.Ops <= 0 {
		c.Ops = DefaultOps
	}
	if c.Keys <= 0 {
		c.Keys = DefaultKeys
	}
	if c.ValueBytes <= 0 {
		c.ValueBytes = DefaultValueBytes
	}
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.Backend == "" {
		c.Backend = BackendPebble
	}
	if c.Rounds <= 0 {
		c.Rounds = 1
	}
	if c.Peer == PeerRedis {
		c.Redis.ensureDefaults()
	}
	if c.Rate > 0 {
		if c.Duration <= 0 {
			c.Duration = DefaultDuration
		}
		if c.Tick == 0 {
			c.Tick = DefaultTick
		}
		c.Ops = max(1, int(float64(c.Rate)*c.Duration.Seconds()))
	}
}

// Validate reports, wrapping ErrBadConfig, the first field that cannot be
// run. It expects defaults to be filled.
func (c *Config) Validate() error {
	for _, w := range c.Workloads {
		if !slices.Contains(Workloads(), w) {
			return fmt.Errorf("%w: unknown workload %q (known: %s)", ErrBadConfig, w, strings.Join(Workloads(), ", "))
		}
	}
	if c.ValueBytes < MinValueBytes {
		return fmt.Errorf("%w: value size %d bytes is below the minimum of %d", ErrBadConfig, c.ValueBytes, MinValueBytes)
	}
	if c.Keys >= maxKeys {
		return fmt.Errorf("%w: %d keys is more than the %d supported", ErrBadConfig, c.Keys, maxKeys-1)
	}
	if c.Ops <= 0 || c.Batch <= 0 {
		return fmt.Errorf("%w: ops and batch must be positive", ErrBadConfig)
	}
	if c.Rate < 0 {
		return fmt.Errorf("%w: rate %d events/s is negative", ErrBadConfig, c.Rate)
	}
	if c.MaxGroup < 0 || c.MaxGroupBuild < 0 || c.MaxCoalesce < 0 {
		return fmt.Errorf("%w: max group %d, max group build %v and max coalesce %d must not be negative", ErrBadConfig, c.MaxGroup, c.MaxGroupBuild, c.MaxCoalesce)
	}
	switch c.Backend {
	case BackendPebble:
	case BackendEtcd:
		if c.Rate > 0 {
			return fmt.Errorf("%w: open loop (rate) runs on backend %s only", ErrBadConfig, BackendPebble)
		}
		if len(c.Etcd.Endpoints) == 0 {
			return fmt.Errorf("%w: backend etcd needs endpoints", ErrBadConfig)
		}
		if c.Rounds > c.Ops {
			return fmt.Errorf("%w: %d rounds is more than the %d ops", ErrBadConfig, c.Rounds, c.Ops)
		}
	default:
		return fmt.Errorf("%w: unknown backend %q (known: %s, %s)", ErrBadConfig, c.Backend, BackendPebble, BackendEtcd)
	}
	switch c.Peer {
	case "":
	case PeerRedis:
		if c.Backend != BackendPebble || c.Rate > 0 {
			return fmt.Errorf("%w: peer %s runs with backend %s in closed loop only", ErrBadConfig, PeerRedis, BackendPebble)
		}
		if c.Redis.Port < 0 || c.Redis.Port > 65535 {
			return fmt.Errorf("%w: redis port %d is not a TCP port (0 picks a free one)", ErrBadConfig, c.Redis.Port)
		}
	default:
		return fmt.Errorf("%w: unknown peer %q (known: %s)", ErrBadConfig, c.Peer, PeerRedis)
	}
	return nil
}

// Result is one workload's measurement.
type Result struct {
	// Workload is the workload name.
	Workload string `json:"workload"`
	// Ops is the number of timed operations each side completed.
	Ops int `json:"ops"`
	// FlowrunOpsPerS is operations per second through the event path: from
	// the first timed batch handed to the graph to the last result reaching
	// the sink.
	FlowrunOpsPerS float64 `json:"flowrun_ops_per_s"`
	// PebbleOpsPerS is operations per second of the same operations on raw
	// Pebble (0 on BackendEtcd).
	PebbleOpsPerS float64 `json:"pebble_ops_per_s"`
	// Backend is the store measured: BackendPebble or BackendEtcd.
	Backend string `json:"backend"`
	// EtcdOpsPerS, on BackendEtcd, is operations per second of the same
	// operations with the etcd client directly, batched alike.
	EtcdOpsPerS float64 `json:"etcd_ops_per_s,omitempty"`
	// RedisTest, RedisOpsPerS and RedisRatio, with Config.Peer PeerRedis,
	// are the workload's redis-benchmark test (SET, GET, INCR), its
	// requests per second against a redis-server with appendfsync always,
	// and FlowrunOpsPerS / RedisOpsPerS. Omitted for workloads Redis has
	// no counterpart for.
	RedisTest    string  `json:"redis_test,omitempty"`
	RedisOpsPerS float64 `json:"redis_ops_per_s,omitempty"`
	RedisRatio   float64 `json:"redis_ratio,omitempty"`
	// RedisCPUusPerOp is the CPU time redis-server and redis-benchmark
	// used per request, in microseconds, to set beside
	// FlowrunCPUusPerOp (which includes the benchmark's own source and
	// sink, as this includes the client); 0 where the server's CPU time
	// cannot be read (/proc, Linux).
	RedisCPUusPerOp float64 `json:"redis_cpu_us_per_op,omitempty"`
	// Ratio is FlowrunOpsPerS / PebbleOpsPerS (on BackendEtcd,
	// FlowrunOpsPerS / EtcdOpsPerS).
	Ratio float64 `json:"ratio"`
	// FlowrunCPUusPerOp is the process's CPU time (user and system, every
	// thread: the connector, the store, Pebble's background work, the
	// garbage collector and the benchmark's own source and sink) per
	// operation over the flowrun side's timed window, in microseconds; 0
	// where it cannot be read and in open loop. On a machine shared with
	// other work it moves less than the throughput does.
	FlowrunCPUusPerOp float64 `json:"flowrun_cpu_us_per_op,omitempty"`
	// P50us and P99us are the median and 99th percentile per-operation
	// latency of the flowrun side in microseconds (see the package doc).
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// Rate, in open loop, is the scheduled rate in events/s; Ops events
	// were sent over Config.Duration and FlowrunOpsPerS is the achieved
	// rate, from the start of the schedule to the last completion.
	Rate int `json:"rate,omitempty"`
	// P90us, P999us and MaxUs, in open loop, complete the per-event
	// latency percentiles (P50us, P99us), each counted from the event's
	// scheduled time. Omitted in closed loop.
	P90us  float64 `json:"p90_us,omitempty"`
	P999us float64 `json:"p999_us,omitempty"`
	MaxUs  float64 `json:"max_us,omitempty"`
	// Diag, in open loop, says where the latency went (see Diag).
	Diag *Diag `json:"diag,omitempty"`
	// Rounds, on BackendEtcd, is how many alternating rounds each side's
	// operations were split into (Config.Rounds).
	Rounds int `json:"rounds,omitempty"`
	// PeakRSSMB is the process's peak resident set (VmHWM, MiB) over the
	// flowrun side of the workload, preload included; 0 when the platform
	// does not report it. When the peak cannot be reset between workloads
	// (see ResetPeakRSS) it is the peak of the whole process so far.
	PeakRSSMB float64 `json:"peak_rss_mb"`
	// RowCacheHitRate is the share of the flowrun store's point reads
	// answered without reading Pebble, by its row cache or by the writes
	// of the commit group before (pebblestore.RowCacheStats), preload
	// included; omitted when the row cache is disabled or read nothing.
	RowCacheHitRate float64 `json:"row_cache_hit_rate,omitempty"`
}

// Run runs every configured workload, flowrun side then raw side, and
// returns one Result per workload in order. It stops at the first failure,
// returning the results completed so far with the error.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Peer == PeerRedis {
		if err := checkRedis(cfg.Redis); err != nil {
			return nil, err
		}
	}
	p := &progress{fn: cfg.Progress, total: cfg.Sides() * cfg.Ops * len(cfg.Workloads)}
	var results []Result
	for _, name := range cfg.Workloads {
		r, err := runWorkload(ctx, cfg, name, p)
		if err != nil {
			return results, fmt.Errorf("workload %s: %w", name, err)
		}
		results = append(results, r)
	}
	return results, nil
}

func runWorkload(ctx context.Context, cfg Config, name string, p *progress) (Result, error) {
	if cfg.Backend == BackendEtcd {
		return runEtcdWorkload(ctx, cfg, name, p)
	}
	dir, err := os.MkdirTemp(cfg.Dir, "kvbench-"+name+"-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)

	// Start the RSS window from as little retained heap as possible.
	runtime.GC()
	debug.FreeOSMemory()
	ResetPeakRSS()

	// The sides are labelled (and every goroutine they start, Pebble's
	// flushes and compactions included), so that a CPU profile of the run
	// separates them: go tool pprof -tagfocus side=flowrun.
	var fr sideResult
	pprof.Do(ctx, pprof.Labels("side", "flowrun", "workload", name), func(ctx context.Context) {
		fr, err = runFlowrun(ctx, cfg, name, dir+"/flowrun", p)
	})
	if err != nil {
		return Result{}, fmt.Errorf("flowrun side: %w", err)
	}
	rss := PeakRSSMB()
	var pr sideResult
	if cfg.Rate == 0 {
		pprof.Do(ctx, pprof.Labels("side", "pebble", "workload", name), func(ctx context.Context) {
			pr, err = runPebble(ctx, cfg, name, dir+"/pebble", p)
		})
		if err != nil {
			return Result{}, fmt.Errorf("pebble side: %w", err)
		}
	}
	r := Result{
		Workload:       name,
		Backend:        BackendPebble,
		Ops:            cfg.Ops,
		FlowrunOpsPerS: opsPerSec(cfg.Ops, fr.elapsed),
		PebbleOpsPerS:  opsPerSec(cfg.Ops, pr.elapsed),
		P50us:          fr.p50us,
		P99us:          fr.p99us,
		PeakRSSMB:      rss,

		FlowrunCPUusPerOp: float64(fr.cpu) / float64(time.Microsecond) / float64(cfg.Ops),
		RowCacheHitRate:   fr.rowCacheHitRate,
	}
	if cfg.Rate > 0 {
		r.Rate = cfg.Rate
		r.P90us, r.P999us, r.MaxUs = fr.q.P90, fr.q.P999, fr.q.Max
		r.Diag = fr.diag
	}
	if r.PebbleOpsPerS > 0 {
		r.Ratio = r.FlowrunOpsPerS / r.PebbleOpsPerS
	}
	if cfg.Peer == PeerRedis && RedisTest(name) != "" {
		rps, cpu, err := runRedisWorkload(ctx, cfg, name)
		if err != nil {
			return Result{}, fmt.Errorf("redis peer: %w", err)
		}
		r.RedisTest, r.RedisOpsPerS, r.RedisRatio = RedisTest(name), rps, r.FlowrunOpsPerS/rps
		r.RedisCPUusPerOp = float64(cpu) / float64(time.Microsecond) / float64(cfg.Ops)
	}
	return r, nil
}

// Sides returns how many sides Run measures per workload: 2 (flowrun and
// raw) in closed loop, 1 (flowrun) in open loop.
func (c *Config) Sides() int {
	if c.Rate > 0 {
		return 1
	}
	return 2
}

// progress accumulates completed operations across workloads and sides.
type progress struct {
	fn    func(done, total int)
	done  int
	total int
}

func (p *progress) add(n int) {
	p.done += n
	if p.fn != nil {
		p.fn(p.done, p.total)
	}
}
