package partitioned

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// Connector is a partitioned kv connector: the partition runtime of one
// instance and the routing processor in front of its partitions' kv
// connectors (see the package doc). It implements pipeline.StagedProcessor
// and pipeline.Closer; Process and Start are safe for concurrent use, and
// keep the order of the events of each partition.
type Connector struct {
	rt *runtime
}

var (
	_ pipeline.StagedProcessor = (*Connector)(nil)
	_ pipeline.Closer          = (*Connector)(nil)
)

// New starts the partition runtime of opts.Group for this instance: it
// opens the group's lease stream, checks (or records, first) the
// partition count, and starts taking partitions in the background. Close
// gives them back.
func New(ctx context.Context, opts Options) (*Connector, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	kopts := opts.KV
	kopts.EnsureDefaults()
	if err := kopts.Validate(); err != nil {
		return nil, err
	}
	if kopts.ExpiredEvents {
		return nil, errors.New("partitioned: kv.Options.ExpiredEvents is not available with partitions")
	}
	rt, err := openRuntime(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Connector{rt: rt}, nil
}

// Board returns the board on which served partitions are marked.
func (c *Connector) Board() *partition.Board { return c.rt.opts.Board }

// Instance returns this instance's name in the group.
func (c *Connector) Instance() string { return c.rt.opts.Instance }

// Serving returns the partitions this instance serves now, in order.
func (c *Connector) Serving() []int {
	var out []int
	for p, sl := range c.rt.slots {
		sl.mu.Lock()
		if sl.state == stateServing {
			out = append(out, p)
		}
		sl.mu.Unlock()
	}
	return out
}

// TakenOver returns what this instance restored when it started serving
// partition p (TakeOver.Input: the highest input position the
// partition's state held then), and false when it does not serve p.
func (c *Connector) TakenOver(p int) (TakeOver, bool) {
	if p < 0 || p >= len(c.rt.slots) {
		return TakeOver{}, false
	}
	sl := c.rt.slots[p]
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.taken, sl.state == stateServing
}

// Close gives every partition back once the commands in flight on it are
// done, releasing the leases at once (another instance takes them within
// a poll), and leaves the group.
func (c *Connector) Close(context.Context) error {
	c.rt.close()
	return nil
}

// Reclaim runs a reclaim pass (kv.Connector.Reclaim) on every partition
// served now, and returns the number of expired keys deleted.
func (c *Connector) Reclaim(ctx context.Context) (int, error) {
	total := 0
	for _, sl := range c.rt.slots {
		conn, _, _, _ := sl.acquire()
		if conn == nil {
			continue
		}
		n, err := conn.Reclaim(ctx)
		sl.release()
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// Process routes the slice's events to their partitions (see Start) and
// emits their results.
func (c *Connector) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	finish, err := c.Start(ctx, events)
	if err != nil {
		return err
	}
	return finish(ctx, emit)
}

// group is the events of one partition in one slice.
type group struct {
	p      int
	idx    []int // indexes in the slice, in order
	sl     *slot
	finish pipeline.FinishFunc
}

// routed is a slice being processed.
type routed struct {
	events []pipeline.Event
	groups []*group
	// errs are the events failed by the router itself, by index.
	errs map[int]error
}

// Start computes each event's partition and starts each partition's
// events on its kv.Connector, in input order within the partition. An
// event of a partition another instance owns (or this one is giving up)
// is abandoned when its source redelivers. Otherwise, and for a partition
// this instance is taking (waiting for its lease, restoring it), Start
// waits up to Options.Wait for the partition (holding back the slice:
// later slices of the node are started after it); an event whose
// partition is still not served then is abandoned when its source
// redelivers, and fails with kv.ErrPartitionNotReady otherwise. A command whose partition key cannot be computed, or a
// batch across partitions, fails on err.
func (c *Connector) Start(ctx context.Context, events []pipeline.Event) (pipeline.FinishFunc, error) {
	r := &routed{events: events}
	byPart := map[int]*group{}
	for i, ev := range events {
		p, err := c.partitionOf(ev)
		if err != nil {
			r.fail(i, err)
			continue
		}
		g := byPart[p]
		if g == nil {
			g = &group{p: p, sl: c.rt.slots[p]}
			byPart[p] = g
			r.groups = append(r.groups, g)
		}
		g.idx = append(g.idx, i)
	}
	var deadline time.Time
	for _, g := range r.groups {
		conn, ready, state, coming := g.sl.acquire()
		if conn == nil {
			// A partition this instance is taking will be served here:
			// its events wait, redeliverable or not, rather than
			// bounce through the broker (each delivery counts against
			// the source's max_deliveries).
			if !coming {
				g.idx = r.abandon(g.idx)
				if len(g.idx) == 0 {
					continue
				}
			}
			if c.rt.opts.Wait > 0 {
				if deadline.IsZero() {
					deadline = time.Now().Add(c.rt.opts.Wait)
				}
				if wait := time.Until(deadline); wait > 0 {
					t := time.NewTimer(wait)
					select {
					case <-ready:
					case <-t.C:
					case <-ctx.Done():
					}
					t.Stop()
				}
				conn, _, state, _ = g.sl.acquire()
			}
			if conn == nil {
				if g.idx = r.abandon(g.idx); len(g.idx) == 0 {
					continue
				}
				err := fmt.Errorf("partition %d: %s: %w", g.p, state, kv.ErrPartitionNotReady)
				if c.rt.opts.Wait > 0 {
					err = fmt.Errorf("partition %d: %s, after waiting up to %v (partition_wait): %w", g.p, state, c.rt.opts.Wait, kv.ErrPartitionNotReady)
				}
				for _, i := range g.idx {
					r.fail(i, err)
				}
				g.idx = nil
				continue
			}
		}
		sub := make([]pipeline.Event, len(g.idx))
		for j, i := range g.idx {
			sub[j] = events[i]
		}
		finish, err := conn.Start(ctx, sub)
		if err != nil {
			g.sl.release()
			for _, g2 := range r.groups {
				if g2.finish != nil {
					_ = g2.finish(ctx, discard{})
					g2.sl.release()
				}
			}
			return nil, err
		}
		g.finish = finish
	}
	return r.finishFn(c), nil
}

// abandon gives back the events of idx whose source redelivers, and
// returns the others.
func (r *routed) abandon(idx []int) []int {
	keep := idx[:0]
	for _, i := range idx {
		if r.events[i].Redeliverable() {
			pipeline.Abandon(r.events[i])
			continue
		}
		keep = append(keep, i)
	}
	return keep
}

func (r *routed) fail(i int, err error) {
	if r.errs == nil {
		r.errs = map[int]error{}
	}
	r.errs[i] = err
}

// finishFn returns the FinishFunc of r: each partition's results in
// turn, then the events the router failed, in input order.
func (r *routed) finishFn(c *Connector) pipeline.FinishFunc {
	return func(ctx context.Context, emit pipeline.Emitter) error {
		var first error
		for _, g := range r.groups {
			if g.finish == nil {
				continue
			}
			err := g.finish(ctx, emit)
			g.sl.release()
			if err != nil && first == nil {
				first = err
			}
		}
		for i, ev := range r.events {
			if err, ok := r.errs[i]; ok {
				emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, errMeta(ev, err)))
			}
		}
		return first
	}
}

// discard is an Emitter dropping events.
type discard struct{}

func (discard) Emit(string, pipeline.Event) {}

// errMeta is the meta of an event the router failed: the error and the
// input's correlation.
func errMeta(ev pipeline.Event, err error) []byte {
	meta, _ := sjson.SetBytes([]byte(`{}`), "error", err.Error())
	if kvObj := gjson.GetBytes(ev.Meta, "kv"); kvObj.Exists() {
		meta, _ = sjson.SetRawBytes(meta, "kv", []byte(kvObj.Raw))
	}
	if corr := gjson.GetBytes(ev.Meta, "correlation"); corr.Exists() {
		meta, _ = sjson.SetRawBytes(meta, "correlation", []byte(corr.Raw))
	}
	return meta
}

// partitionOf returns the partition of ev's command: of its partition
// key, or of its command's key (see Options.PartitionKey). A batch's
// elements must all fall into one partition. The partition key
// expression sees meta.kv.key set to the command's key; for a batch it
// is evaluated once per element, with meta.kv the element (and its key). An event whose command
// cannot be read goes to the partition of the empty key, whose connector
// reports what is wrong with it.
func (c *Connector) partitionOf(ev pipeline.Event) (int, error) {
	n := c.rt.opts.Partitions
	var key func(pipeline.Event) (string, error)
	if c.rt.opts.PartitionKey != nil {
		key = c.evalKey
	}
	keys, err := kv.PartitionKeys(ev, key)
	if errors.Is(err, kv.ErrNoCommandKey) {
		keys, err = nil, nil
	}
	if err != nil {
		return 0, err
	}
	if len(keys) == 0 {
		return partition.OfString("", n), nil
	}
	p := partition.OfString(keys[0], n)
	for j, k := range keys[1:] {
		if q := partition.OfString(k, n); q != p {
			return 0, fmt.Errorf("batch: element 0 (partition key %q) is in partition %d, element %d (partition key %q) in partition %d; a batch must stay in one partition (give keys that change together a common partition_key): %w",
				keys[0], p, j+1, k, q, kv.ErrCrossPartition)
		}
	}
	return p, nil
}

// evalKey evaluates the partition key expression on ev.
func (c *Connector) evalKey(ev pipeline.Event) (string, error) {
	return evalPartitionKey(c.rt.opts.PartitionKey, ev)
}

// evalPartitionKey evaluates the partition key expression x on ev.
func evalPartitionKey(x *expr.Expr, ev pipeline.Event) (string, error) {
	v, err := x.Eval(ev)
	if err != nil {
		return "", fmt.Errorf("partition_key %s: %w", x, err)
	}
	switch v.Kind() {
	case expr.String:
		k, _ := v.Str()
		return k, nil
	case expr.Number, expr.Bool:
		// As the partitioned nats sink reads it: the same partition.
		return v.String(), nil
	}
	return "", fmt.Errorf("partition_key %s gave %s, want a string, number or boolean: %w", x, v, kv.ErrInvalidKey)
}
