package kvbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowrun/flowrun/internal/loadgen"
)

// sideResult is what one side of a workload measured.
type sideResult struct {
	elapsed         time.Duration
	cpu             time.Duration // process CPU time over elapsed (flowrun side, closed loop)
	p50us, p99us    float64
	rowCacheHitRate float64           // flowrun side on Pebble only
	q               loadgen.Quantiles // open loop only
	diag            *Diag             // open loop only
}

// quietLogger drops Pebble's informational logging, which would otherwise
// interleave with the benchmark's output.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

// rawSide runs a workload against Pebble directly. It mirrors what the kv
// connector asks of its store and nothing more: blind writes for put, db.Get
// for get, an indexed batch where a batch must read its own writes (mixed,
// increment, cas), and a bounded iterator for scan.
type rawSide struct {
	cfg  Config
	db   *pebble.DB
	wo   *pebble.WriteOptions
	vals values
	key  []byte
	val  []byte
	sink []byte // where reads copy values, as a consumer would
}

func runPebble(ctx context.Context, cfg Config, workload, dir string, p *progress) (sideResult, error) {
	// The same Pebble tuning as the store under test (block cache,
	// memtable size), so that both sides read from memory equally often
	// and flush and compact alike.
	opts := cfg.storeOptions()
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	popts := opts.PebbleOptions(cache)
	popts.Logger = quietLogger{}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		return sideResult{}, err
	}
	r := &rawSide{cfg: cfg, db: db, wo: pebble.NoSync, vals: newValues(cfg.ValueBytes)}
	if cfg.Sync {
		r.wo = pebble.Sync
	}
	res, err := r.run(ctx, workload, p)
	if cerr := db.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return res, err
}

func (r *rawSide) run(ctx context.Context, workload string, p *progress) (sideResult, error) {
	if needsPreload(workload) {
		if err := r.preload(workload); err != nil {
			return sideResult{}, fmt.Errorf("preload: %w", err)
		}
	}
	g := newGen(workload, r.cfg.Keys)
	ops := make([]op, 0, r.cfg.Batch)
	start := time.Now()
	for done := 0; done < r.cfg.Ops; {
		if err := ctx.Err(); err != nil {
			return sideResult{}, err
		}
		n := min(r.cfg.Batch, r.cfg.Ops-done)
		ops = ops[:0]
		for range n {
			ops = append(ops, g.op())
		}
		var err error
		switch workload {
		case Put:
			err = r.puts(ops)
		case Get:
			err = r.gets(ops)
		case Scan:
			err = r.scans(ops)
		default:
			err = r.readModifyWrite(ops)
		}
		if err != nil {
			return sideResult{}, err
		}
		done += n
		p.add(n)
	}
	return sideResult{elapsed: time.Since(start)}, nil
}

// preload stores the initial value at every key, untimed, and syncs it.
func (r *rawSide) preload(workload string) error {
	b := r.db.NewBatch()
	for k := range r.cfg.Keys {
		r.key = appendKey(r.key[:0], k)
		r.val = r.vals.preloadValue(r.val[:0], workload)
		if err := b.Set(r.key, r.val, nil); err != nil {
			return err
		}
		if b.Count() == preloadBatch || k == r.cfg.Keys-1 {
			if err := b.Commit(pebble.Sync); err != nil {
				return err
			}
			b.Reset()
		}
	}
	return b.Close()
}

func (r *rawSide) puts(ops []op) error {
	b := r.db.NewBatch()
	defer b.Close()
	for _, o := range ops {
		r.key = appendKey(r.key[:0], o.key)
		r.val = r.vals.appendValue(r.val[:0], o.version)
		if err := b.Set(r.key, r.val, nil); err != nil {
			return err
		}
	}
	return b.Commit(r.wo)
}

func (r *rawSide) gets(ops []op) error {
	for _, o := range ops {
		r.key = appendKey(r.key[:0], o.key)
		v, closer, err := r.db.Get(r.key)
		if err != nil {
			return fmt.Errorf("get %s: %w", r.key, err)
		}
		r.sink = append(r.sink[:0], v...)
		_ = closer.Close()
	}
	return nil
}

func (r *rawSide) scans(ops []op) error {
	end := appendKey(nil, r.cfg.Keys)
	for _, o := range ops {
		r.key = appendKey(r.key[:0], o.key)
		it, err := r.db.NewIter(&pebble.IterOptions{LowerBound: r.key, UpperBound: end})
		if err != nil {
			return err
		}
		n := 0
		for ok := it.First(); ok && n < ScanLimit; ok = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				_ = it.Close()
				return err
			}
			r.sink = append(r.sink[:0], it.Key()...)
			r.sink = append(r.sink, v...)
			n++
		}
		if err := it.Close(); err != nil {
			return err
		}
		if want := scanRows(r.cfg.Keys, o.key); n != want {
			return fmt.Errorf("scan from %s read %d entries, want %d", r.key, n, want)
		}
	}
	return nil
}

// readModifyWrite runs a batch of mixed, increment or cas operations in one
// indexed batch, so each operation sees the ones before it, and commits it
// once.
func (r *rawSide) readModifyWrite(ops []op) error {
	b := r.db.NewIndexedBatch()
	defer b.Close()
	for _, o := range ops {
		r.key = appendKey(r.key[:0], o.key)
		switch o.kind {
		case opPut:
			r.val = r.vals.appendValue(r.val[:0], o.version)
			if err := b.Set(r.key, r.val, nil); err != nil {
				return err
			}
		case opGet:
			if err := r.batchGet(b); err != nil {
				return err
			}
		case opIncrement:
			if err := r.batchGet(b); err != nil {
				return err
			}
			n, err := strconv.ParseInt(string(r.sink), 10, 64)
			if err != nil {
				return fmt.Errorf("increment %s: stored %q: %w", r.key, r.sink, err)
			}
			r.val = appendInt(r.val[:0], n+incrementBy)
			if err := b.Set(r.key, r.val, nil); err != nil {
				return err
			}
		case opCAS:
			if err := r.batchGet(b); err != nil {
				return err
			}
			r.val = r.vals.appendValue(r.val[:0], o.version)
			if !bytes.Equal(r.sink, r.val) {
				return fmt.Errorf("cas %s: stored %.20s..., expected %.20s...", r.key, r.sink, r.val)
			}
			r.val = r.vals.appendValue(r.val[:0], o.version+1)
			if err := b.Set(r.key, r.val, nil); err != nil {
				return err
			}
		}
	}
	if b.Empty() {
		return nil
	}
	return b.Commit(r.wo)
}

// batchGet reads r.key through b into r.sink.
func (r *rawSide) batchGet(b *pebble.Batch) error {
	v, closer, err := b.Get(r.key)
	if errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("get %s: key was not preloaded", r.key)
	}
	if err != nil {
		return err
	}
	r.sink = append(r.sink[:0], v...)
	return closer.Close()
}

// preloadBatch is the number of writes per batch while preloading.
const preloadBatch = 1000
