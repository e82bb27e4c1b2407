package kvbench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
)

// Backends Config.Backend selects.
const (
	// BackendPebble measures the kv connector on a Pebble store against
	// raw Pebble (the default).
	BackendPebble = "pebble"
	// BackendEtcd measures the kv connector on an etcd cluster
	// (Config.Etcd) against the etcd client used directly.
	BackendEtcd = "etcd"
)

// runEtcdWorkload runs one workload through the kv connector on an etcd
// store and the same operations with the etcd client directly, each side
// under its own fresh key prefix (deleted when the workload ends) and
// preloaded once, untimed. The timed operations are split into
// Config.Rounds rounds that alternate the two sides (each round runs the
// next Ops/Rounds operations of each side's sequence, the side going
// first alternating), so that a machine whose load changes during the run
// slows both sides alike. The throughputs are each side's operations over
// its summed time; the latency percentiles are the median round's p50 and
// the worst round's p99.
func runEtcdWorkload(ctx context.Context, cfg Config, name string, p *progress) (Result, error) {
	base := cfg.Etcd.Prefix + "flowrun-bench/" + randomHex() + "/"
	opts := cfg.Etcd
	opts.EnsureDefaults()
	client, err := clientv3.New(clientv3.Config{Endpoints: opts.Endpoints, DialTimeout: opts.DialTimeout, Logger: zap.NewNop()})
	if err != nil {
		return Result{}, err
	}
	defer client.Close()
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		_, _ = client.Delete(dctx, base, clientv3.WithPrefix())
	}()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sopts := opts
	sopts.Prefix = base + "flowrun/"
	r := &rawEtcd{cfg: cfg, c: client, prefix: base + "raw/", maxOps: opts.MaxTxnOps, vals: newValues(cfg.ValueBytes),
		serializable: opts.Reads == etcdstore.Serializable}
	if err := r.preload(ctx, name); err != nil {
		return Result{}, fmt.Errorf("etcd side: %w", err)
	}
	fGen, rGen := newGen(name, cfg.Keys), newGen(name, cfg.Keys)
	var fTime, eTime time.Duration
	var p50s []float64
	var p99, rss float64
	for round := range cfg.Rounds {
		n := cfg.Ops/cfg.Rounds + btoi(round < cfg.Ops%cfg.Rounds)
		flowrunSide := func() error {
			store, err := etcdstore.Open(ctx, sopts)
			if err != nil {
				return err
			}
			rcfg := cfg
			rcfg.Ops = n
			runtime.GC()
			debug.FreeOSMemory()
			ResetPeakRSS()
			fr, err := runFlowrunPart(ctx, rcfg, name, store, quiet, p, fGen, round == 0, nil)
			if err != nil {
				return fmt.Errorf("flowrun side: %w", err)
			}
			rss = max(rss, PeakRSSMB())
			fTime += fr.elapsed
			p50s = append(p50s, fr.p50us)
			p99 = max(p99, fr.p99us)
			return nil
		}
		rawSide := func() error {
			er, err := r.run(ctx, name, rGen, n, p)
			if err != nil {
				return fmt.Errorf("etcd side: %w", err)
			}
			eTime += er.elapsed
			return nil
		}
		sides := []func() error{flowrunSide, rawSide}
		if round%2 == 1 {
			sides[0], sides[1] = rawSide, flowrunSide
		}
		for _, side := range sides {
			if err := side(); err != nil {
				return Result{}, err
			}
		}
	}
	slices.Sort(p50s)
	res := Result{
		Workload:       name,
		Backend:        BackendEtcd,
		Ops:            cfg.Ops,
		FlowrunOpsPerS: opsPerSec(cfg.Ops, fTime),
		EtcdOpsPerS:    opsPerSec(cfg.Ops, eTime),
		P50us:          p50s[len(p50s)/2],
		P99us:          p99,
		PeakRSSMB:      rss,
		Rounds:         cfg.Rounds,
	}
	if res.EtcdOpsPerS > 0 {
		res.Ratio = res.FlowrunOpsPerS / res.EtcdOpsPerS
	}
	return res, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func randomHex() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// rawEtcd runs a workload with the etcd client directly, batched and
// pipelined as the store does it: each batch of operations is cut into
// chunks of at most maxOps operations. Reads of a chunk go in one
// transaction; a chunk that also writes (mixed, increment, cas) then
// commits its writes in a second transaction guarded by the mod revisions
// of the keys it read, the least any read-modify-write over etcd needs.
// The next chunk's read is sent as soon as a chunk's read is answered,
// while that chunk commits, and takes the commit's writes when it was
// answered first, as the store's read-ahead does; reads go one at a
// time, and so do commits. A read-only batch of parallelReads
// operations or more is read in two concurrent halves, as the kv
// connector reads it.
type rawEtcd struct {
	cfg    Config
	c      *clientv3.Client
	prefix string
	maxOps int
	vals   values
	// serializable makes the reads serializable, as the store's are with
	// etcdstore.Serializable; a read answered from before lastRev, the
	// revision of the last commit, is asked again linearizably.
	serializable bool
	lastRev      atomic.Int64
}

func (r *rawEtcd) key(k int) string { return r.prefix + string(appendKey(nil, k)) }

// preload writes every key the workload reads, as the flowrun side's
// preload does (untimed).
func (r *rawEtcd) preload(ctx context.Context, workload string) error {
	if !needsPreload(workload) {
		return nil
	}
	for k := 0; k < r.cfg.Keys; k += r.maxOps {
		var ops []clientv3.Op
		for i := k; i < min(k+r.maxOps, r.cfg.Keys); i++ {
			ops = append(ops, clientv3.OpPut(r.key(i), string(r.vals.preloadValue(nil, workload))))
		}
		if _, err := r.c.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
	}
	return nil
}

// run performs the next n operations of g, in batches of Config.Batch,
// timed.
func (r *rawEtcd) run(ctx context.Context, workload string, g *gen, n int, p *progress) (sideResult, error) {
	start := time.Now()
	for done := 0; done < n; {
		if err := ctx.Err(); err != nil {
			return sideResult{}, err
		}
		b := min(r.cfg.Batch, n-done)
		ops := make([]op, b)
		for i := range ops {
			ops[i] = g.op()
		}
		if err := r.batch(ctx, workload, ops); err != nil {
			return sideResult{}, err
		}
		done += b
		p.add(b)
	}
	return sideResult{elapsed: time.Since(start)}, nil
}

// parallelReads is the smallest read-only batch the kv connector reads
// in two concurrent halves (with two CPUs or more); the raw side does
// the same, so both keep as many requests in flight.
const parallelReads = 256

// batch runs one batch in chunks of maxOps operations, in order.
func (r *rawEtcd) batch(ctx context.Context, workload string, ops []op) error {
	var chunks [][]op
	for i := 0; i < len(ops); i += r.maxOps {
		chunks = append(chunks, ops[i:min(i+r.maxOps, len(ops))])
	}
	switch {
	case workload == Put:
		for _, ch := range chunks {
			if err := r.putChunk(ctx, ch); err != nil {
				return err
			}
		}
		return nil
	case workload != Get && workload != Scan:
		return r.pipelined(ctx, chunks)
	case len(ops) < parallelReads || runtime.GOMAXPROCS(0) < 2:
		return r.readChunks(ctx, ops)
	}
	h := len(ops) / 2
	errc := make(chan error, 1)
	go func() { errc <- r.readChunks(ctx, ops[h:]) }()
	err := r.readChunks(ctx, ops[:h])
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}

// readChunks reads ops, a read-only workload's, chunk after chunk.
func (r *rawEtcd) readChunks(ctx context.Context, ops []op) error {
	for i := 0; i < len(ops); i += r.maxOps {
		if _, err := r.c.Txn(ctx).Then(r.reads(ops[i:min(i+r.maxOps, len(ops))])...).Commit(); err != nil {
			return err
		}
	}
	return nil
}

// putChunk writes a chunk of puts in one transaction.
func (r *rawEtcd) putChunk(ctx context.Context, ops []op) error {
	// etcd refuses two puts of one key in a transaction: the last
	// wins, as in the store's overlay.
	last := map[string]string{}
	for _, o := range ops {
		last[r.key(o.key)] = string(r.vals.appendValue(nil, o.version))
	}
	then := make([]clientv3.Op, 0, len(last))
	for k, v := range last {
		then = append(then, clientv3.OpPut(k, v))
	}
	_, err := r.c.Txn(ctx).Then(then...).Commit()
	return err
}

// reads returns the read operations of a chunk.
func (r *rawEtcd) reads(ops []op) []clientv3.Op { return r.readsWith(ops, r.serializable) }

// readsWith returns the read operations of a chunk, serializable or not.
func (r *rawEtcd) readsWith(ops []op, serializable bool) []clientv3.Op {
	var reads []clientv3.Op
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	for _, o := range ops {
		if o.kind == opScan {
			reads = append(reads, clientv3.OpGet(r.key(o.key), append(slices.Clip(opts), clientv3.WithRange(r.key(r.cfg.Keys)), clientv3.WithLimit(ScanLimit))...))
		} else if o.kind != opPut {
			reads = append(reads, clientv3.OpGet(r.key(o.key), opts...))
		}
	}
	return reads
}

// pipelined runs chunks that read and write: each chunk's read is sent
// as soon as the read before it is answered, while that chunk is applied
// and commits.
func (r *rawEtcd) pipelined(ctx context.Context, chunks [][]op) error {
	type answer struct {
		resp *clientv3.TxnResponse
		err  error
	}
	read := func(ops []op) chan answer {
		c := make(chan answer, 1)
		go func() {
			resp, err := r.c.Txn(ctx).Then(r.reads(ops)...).Commit()
			if err == nil && r.serializable && resp.Header.Revision < r.lastRev.Load() {
				// A member behind the last commit answered: ask the
				// leader, as the store does.
				resp, err = r.c.Txn(ctx).Then(r.readsWith(ops, false)...).Commit()
			}
			c <- answer{resp, err}
		}()
		return c
	}
	next := read(chunks[0])
	var prev map[string][]byte // the writes of the last commit
	var prevRev int64          // and its revision
	for j, ops := range chunks {
		a := <-next
		if a.err != nil {
			return a.err
		}
		if j+1 < len(chunks) {
			next = read(chunks[j+1])
		}
		cur := map[string][]byte{}
		revs := map[string]int64{}
		for _, rr := range a.resp.Responses {
			for _, kv := range rr.GetResponseRange().Kvs {
				cur[string(kv.Key)] = kv.Value
				revs[string(kv.Key)] = kv.ModRevision
			}
		}
		if a.resp.Header.Revision < prevRev {
			// Answered before the last commit: take its writes.
			for k, v := range prev {
				if _, ok := revs[k]; ok {
					cur[k], revs[k] = v, prevRev
				}
			}
		}
		writes, err := r.apply(ops, cur)
		if err != nil {
			if j+1 < len(chunks) {
				<-next
			}
			return err
		}
		if len(writes) == 0 {
			prev, prevRev = nil, 0
			continue
		}
		var cmps []clientv3.Cmp
		for k, rev := range revs {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
		}
		var then []clientv3.Op
		for k, v := range writes {
			then = append(then, clientv3.OpPut(k, string(v)))
		}
		wr, err := r.c.Txn(ctx).If(cmps...).Then(then...).Commit()
		if err == nil && !wr.Succeeded {
			err = fmt.Errorf("a key of the chunk changed under the benchmark")
		}
		if err != nil {
			if j+1 < len(chunks) {
				<-next
			}
			return err
		}
		prev, prevRev = writes, wr.Header.Revision
		r.lastRev.Store(prevRev)
	}
	return nil
}

// apply runs a chunk's operations in order over cur, the records read,
// and returns the records to write.
func (r *rawEtcd) apply(ops []op, cur map[string][]byte) (map[string][]byte, error) {
	writes := map[string][]byte{}
	for _, o := range ops {
		k := r.key(o.key)
		switch o.kind {
		case opPut:
			writes[k] = r.vals.appendValue(nil, o.version)
			cur[k] = writes[k]
		case opIncrement:
			n, err := strconv.ParseInt(string(cur[k]), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("increment %s: stored %q: %w", k, cur[k], err)
			}
			writes[k] = appendInt(nil, n+incrementBy)
			cur[k] = writes[k]
		case opCAS:
			if !bytes.Equal(cur[k], r.vals.appendValue(nil, o.version)) {
				return nil, fmt.Errorf("cas %s: stored %.20s..., expected version %d", k, cur[k], o.version)
			}
			writes[k] = r.vals.appendValue(nil, o.version+1)
			cur[k] = writes[k]
		}
	}
	return writes, nil
}
