package partitioned

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/changelog"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/lease"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// This file is the offline re-partitioning of a stopped group: its state
// read from the changelogs of its N partitions and written to the
// changelogs of M new ones (docs/scaling.md, "Re-partitioning").
//
// The steps, each leaving a usable state if the tool stops after it:
//
//  1. Read the group's config (count N, generation g) from its lease
//     stream; refuse while any instance holds a live lease; refuse while
//     input waits in the partition subjects (RepartitionOptions.CheckInput).
//  2. Take every partition lease, p.000 up to the larger count, and keep
//     them until the end: no instance can take a partition meanwhile.
//  3. Delete the streams of the group's other generations (left by an
//     earlier run that stopped before its step 6 or 7).
//  4. Restore each old partition from its changelog into a temporary
//     Pebble store, and copy its live records into M temporary stores,
//     one per new partition.
//  5. Write each new store into a new changelog stream of generation g+1
//     (ChangelogStreamOf), as ordinary records, then restore each stream
//     into yet another store and compare: the streams hold exactly the
//     new stores.
//  6. Replace the group's config by {M, g+1}: from then on instances
//     declaring M start on the new streams, and N is refused. Until this
//     one write, the group is at N on the old streams, untouched.
//  7. Delete the old streams, and release the leases.

// Errors of Repartition.
var (
	// ErrGroupRunning reports a group one of whose instances holds a
	// live lease: re-partitioning needs every instance stopped.
	ErrGroupRunning = errors.New("the group has live instances")
	// ErrNoState reports a group with no recorded config: no instance
	// ever started.
	ErrNoState = errors.New("the group has no recorded state")
	// ErrKeyMisplaced reports a key read from a partition's changelog
	// whose partition key puts it in another partition: the partition
	// key depends on more than the key, so the key's new partition
	// cannot be computed.
	ErrKeyMisplaced = errors.New("key found outside its partition")
	// ErrVerify reports a new changelog that does not restore to what
	// was written to it.
	ErrVerify = errors.New("a re-partitioned changelog does not restore to what was written")
)

// RepartitionOptions configure Repartition. JetStream, Group and
// Partitions are required.
type RepartitionOptions struct {
	// JetStream reaches the cluster holding the group's streams.
	JetStream jetstream.JetStream
	// Group is the group to re-partition (a kv connector's group option,
	// or its flow's name).
	Group string
	// Partitions is the new partition count.
	Partitions int
	// PartitionKey is the connector's partition_key expression, nil for
	// the command's key. It must depend on the key only: it is evaluated
	// with meta.kv.key set to each stored key.
	PartitionKey *expr.Expr
	// Replicas is the replica count of the new streams: 1, 3 or 5.
	// Default DefaultReplicas.
	Replicas int
	// WorkDir holds the temporary stores, removed at the end. Default
	// os.TempDir().
	WorkDir string
	// DryRun reads and sorts everything but writes nothing: no lease
	// taken, no stream written, the config unchanged.
	DryRun bool
	// StopWait bounds the wait for leases held by stopped instances to
	// lapse (a killed instance's leases lapse after its lease_ttl).
	// Default 30s.
	StopWait time.Duration
	// CheckInput, when set, is called before anything is written and
	// again just before the config is replaced, with the old count: an
	// error (input still waiting in the old partitions' subjects) stops
	// the re-partitioning.
	CheckInput func(ctx context.Context, partitions int) error
	// Holder names the tool in the leases it takes. Default
	// "repartition-" + DefaultInstance().
	Holder string
	// Logger receives progress. Default slog.Default().
	Logger *slog.Logger

	// fail, when set, is called at each named step ("read", "written",
	// "verified", "switched"); an error stops Repartition there, as a
	// crash would (tests).
	fail func(step string) error
}

// EnsureDefaults fills unset fields with their defaults.
func (o *RepartitionOptions) EnsureDefaults() {
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.WorkDir == "" {
		o.WorkDir = os.TempDir()
	}
	if o.StopWait == 0 {
		o.StopWait = 30 * time.Second
	}
	if o.Holder == "" {
		o.Holder = "repartition-" + DefaultInstance()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports the first invalid field, by name.
func (o *RepartitionOptions) Validate() error {
	if err := partition.CheckCount(o.Partitions); err != nil {
		return fmt.Errorf("repartition: Partitions: %w", err)
	}
	switch {
	case o.JetStream == nil:
		return errors.New("repartition: JetStream is required")
	case o.Group == "":
		return errors.New("repartition: Group is required")
	case o.Replicas != 1 && o.Replicas != 3 && o.Replicas != 5:
		return fmt.Errorf("repartition: Replicas is %d, must be 1, 3 or 5", o.Replicas)
	case o.StopWait < 0:
		return fmt.Errorf("repartition: StopWait is %v, must not be negative", o.StopWait)
	case strings.ContainsAny(o.Holder, " \t\r\n*>."):
		return fmt.Errorf("repartition: Holder %q must be one subject token", o.Holder)
	}
	return nil
}

// Repartitioned reports what Repartition did (or, with DryRun, would do).
type Repartitioned struct {
	Group string `json:"group"`
	// From and To are the old and new partition counts, FromGeneration
	// and ToGeneration the generations of their changelog streams.
	From           int `json:"from"`
	To             int `json:"to"`
	FromGeneration int `json:"from_generation"`
	ToGeneration   int `json:"to_generation"`
	// Keys counts the live keys moved, KeysTo the keys of each new
	// partition.
	Keys   int   `json:"keys"`
	KeysTo []int `json:"keys_to"`
	// Expired counts records left out because they had expired (keys and
	// idempotency records, with their expiry entries).
	Expired int `json:"expired"`
	// Idempotency counts the idempotency records read, IdempotencyCopies
	// those written: each is copied to every new partition a command of
	// its old partition can fall into. IdempotencyConflicts counts
	// idempotency keys recorded in two old partitions that meet in one
	// new partition: the record read first is kept.
	Idempotency          int `json:"idempotency"`
	IdempotencyCopies    int `json:"idempotency_copies"`
	IdempotencyConflicts int `json:"idempotency_conflicts"`
	// Streams are the new changelog streams, Removed the streams deleted.
	Streams []string `json:"streams,omitempty"`
	Removed []string `json:"removed,omitempty"`
	DryRun  bool     `json:"dry_run"`
}

// Repartition moves a stopped group's state from its recorded partition
// count to opts.Partitions (see the steps at the top of this file). It
// refuses, with nothing changed, a group with a live instance
// (ErrGroupRunning), a group never started (ErrNoState), a count equal to
// the recorded one, and a key its partition key does not place in the
// partition it was read from (ErrKeyMisplaced). If it stops before the
// config is replaced, the group is as it was; after, it is at the new
// count, and old streams left behind are deleted by the next run.
//
// Each key keeps its value and expiry. Idempotency records are keyed by
// their idempotency key, not by the key of the command that wrote them,
// so their new partition cannot be computed; but that command's partition
// key hashed to h with h mod N the old partition p, so its new partition
// q = h mod M satisfies q ≡ p (mod gcd(N, M)): each record is copied to
// every such q (M/gcd(N, M) copies), where a redelivered command finds
// it. Input positions are not carried: they are sequences of the old
// partitions' subjects.
func Repartition(ctx context.Context, opts RepartitionOptions) (Repartitioned, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return Repartitioned{}, err
	}
	res := Repartitioned{Group: opts.Group, To: opts.Partitions, DryRun: opts.DryRun}
	js, log := opts.JetStream, opts.Logger
	if _, err := js.Stream(ctx, LeaseStream(opts.Group)); errors.Is(err, jetstream.ErrStreamNotFound) {
		return res, fmt.Errorf("repartition: group %q: %w (no stream %s)", opts.Group, ErrNoState, LeaseStream(opts.Group))
	} else if err != nil {
		return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
	}
	leases, err := lease.Open(ctx, js, LeaseStream(opts.Group), opts.Holder, lease.Options{TTL: DefaultLeaseTTL, Replicas: opts.Replicas})
	if err != nil {
		return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
	}
	raw, err := leases.Value(ctx, configName)
	if err != nil {
		return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
	}
	if raw == nil {
		return res, fmt.Errorf("repartition: group %q: %w (no config recorded)", opts.Group, ErrNoState)
	}
	var cfg config
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg.Hash != hashName || partition.CheckCount(cfg.Partitions) != nil {
		return res, fmt.Errorf("repartition: group %q: recorded config %s is not one this version knows", opts.Group, raw)
	}
	res.From, res.FromGeneration, res.ToGeneration = cfg.Partitions, cfg.Generation, cfg.Generation+1
	if cfg.Partitions == opts.Partitions {
		return res, fmt.Errorf("repartition: group %q already has %d partitions", opts.Group, opts.Partitions)
	}
	if err := waitStopped(ctx, leases, opts); err != nil {
		return res, err
	}
	if opts.CheckInput != nil {
		if err := opts.CheckInput(ctx, cfg.Partitions); err != nil {
			return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
		}
	}

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !opts.DryRun {
		release, err := holdPartitions(wctx, leases, max(cfg.Partitions, opts.Partitions), cancel)
		if err != nil {
			return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
		}
		defer release()
		removed, err := removeGenerations(wctx, js, opts.Group, cfg.Generation)
		res.Removed = append(res.Removed, removed...)
		if err != nil {
			return res, fmt.Errorf("repartition: group %q: remove streams of an earlier run: %w", opts.Group, err)
		}
	}

	work, err := os.MkdirTemp(opts.WorkDir, "flowrun-repartition-")
	if err != nil {
		return res, fmt.Errorf("repartition: %w", err)
	}
	defer os.RemoveAll(work)
	news := make([]*newPartition, opts.Partitions)
	defer func() {
		for _, np := range news {
			if np != nil && np.store != nil {
				_ = np.store.Close()
			}
		}
	}()
	for q := range news {
		s, err := openTemp(filepath.Join(work, "new", "p"+partition.Token(q)))
		if err != nil {
			return res, err
		}
		news[q] = &newPartition{store: s}
	}
	now := time.Now().UnixMilli()
	for p := range cfg.Partitions {
		if err := readPartition(wctx, opts, cfg, p, work, now, news, &res); err != nil {
			return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
		}
	}
	res.KeysTo = make([]int, opts.Partitions)
	for q, np := range news {
		res.KeysTo[q] = np.keys
	}
	log.Info("repartition: read the old partitions", "group", opts.Group, "from", cfg.Partitions, "to", opts.Partitions,
		"keys", res.Keys, "idempotency_records", res.Idempotency, "expired", res.Expired)
	if err := step(opts, "read"); err != nil || opts.DryRun {
		return res, err
	}

	for q, np := range news {
		stream, err := writePartition(wctx, opts, cfg.Generation+1, q, np.store)
		if err != nil {
			return res, fmt.Errorf("repartition: group %q: new partition %d: %w", opts.Group, q, err)
		}
		res.Streams = append(res.Streams, stream)
	}
	if err := step(opts, "written"); err != nil {
		return res, err
	}
	for q, np := range news {
		if err := verifyPartition(wctx, opts, cfg.Generation+1, q, np.store, filepath.Join(work, "verify", "p"+partition.Token(q))); err != nil {
			return res, fmt.Errorf("repartition: group %q: new partition %d: %w", opts.Group, q, err)
		}
	}
	log.Info("repartition: wrote and checked the new changelogs", "group", opts.Group, "streams", len(res.Streams))
	if err := step(opts, "verified"); err != nil {
		return res, err
	}
	if opts.CheckInput != nil {
		if err := opts.CheckInput(wctx, cfg.Partitions); err != nil {
			return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
		}
	}
	if err := context.Cause(wctx); err != nil {
		return res, fmt.Errorf("repartition: group %q: %w", opts.Group, err)
	}
	next, _ := json.Marshal(config{Partitions: opts.Partitions, Hash: hashName, Generation: cfg.Generation + 1})
	if err := leases.Replace(wctx, configName, raw, next); err != nil {
		return res, fmt.Errorf("repartition: group %q: record the new count: %w", opts.Group, err)
	}
	log.Info("repartition: the group now has the new count", "group", opts.Group, "partitions", opts.Partitions,
		"generation", cfg.Generation+1)
	if err := step(opts, "switched"); err != nil {
		return res, err
	}
	removed, err := removeGenerations(wctx, js, opts.Group, cfg.Generation+1)
	res.Removed = append(res.Removed, removed...)
	if err != nil {
		return res, fmt.Errorf("repartition: group %q: the new count is recorded, but removing the old streams failed (the next run removes them): %w", opts.Group, err)
	}
	return res, nil
}

func step(opts RepartitionOptions, name string) error {
	if opts.fail == nil {
		return nil
	}
	return opts.fail(name)
}

// waitStopped returns once no lease of the group is held by a live
// holder: every held lease was released or has lapsed (not renewed for
// its holder's TTL). A lease renewed while it waits, or still held after
// StopWait, is ErrGroupRunning.
func waitStopped(ctx context.Context, leases *lease.Table, opts RepartitionOptions) error {
	deadline := time.Now().Add(opts.StopWait)
	first := map[string]uint64{}
	for {
		var held []lease.State
		for _, prefix := range []string{"m.", "p."} {
			sts, err := leases.Survey(ctx, prefix)
			if err != nil {
				return fmt.Errorf("repartition: group %q: %w", opts.Group, err)
			}
			for _, st := range sts {
				if st.Holder != "" && !st.Lapsed {
					held = append(held, st)
				}
			}
		}
		if len(held) == 0 {
			return nil
		}
		for _, st := range held {
			rev, seen := first[st.Name]
			switch {
			case seen && rev != st.Revision:
				return fmt.Errorf("repartition: group %q: %w: lease %s is held by %q, which renews it; stop every instance of the flow first",
					opts.Group, ErrGroupRunning, st.Name, st.Holder)
			case !seen:
				first[st.Name] = st.Revision
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("repartition: group %q: %w: lease %s is held by %q and did not lapse within %v; stop every instance of the flow first",
				opts.Group, ErrGroupRunning, held[0].Name, held[0].Holder, opts.StopWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// holdPartitions acquires the leases p.000 to p.<n-1> and renews them
// until release is called; cancel is called with the reason if one is
// lost meanwhile.
func holdPartitions(ctx context.Context, leases *lease.Table, n int, cancel context.CancelCauseFunc) (release func(), err error) {
	held := make([]*lease.Lease, 0, n)
	releaseAll := func() {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		for _, l := range held {
			_ = l.Release(rctx)
		}
	}
	for p := range n {
		l, err := leases.Acquire(ctx, "p."+partition.Token(p))
		if err != nil {
			releaseAll()
			return nil, err
		}
		held = append(held, l)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(leases.RenewInterval())
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			for _, l := range held {
				rctx, rcancel := context.WithTimeout(ctx, leases.RenewInterval())
				err := l.Renew(rctx)
				rcancel()
				if lerr := l.Err(); lerr != nil {
					cancel(fmt.Errorf("the tool's lease %s: %w", l.Name(), lerr))
					return
				} else if errors.Is(err, lease.ErrLost) {
					cancel(err)
					return
				}
			}
		}
	}()
	return func() {
		close(stop)
		wg.Wait()
		releaseAll()
	}, nil
}

// removeGenerations deletes the group's changelog streams of every
// generation but keep, and returns their names.
func removeGenerations(ctx context.Context, js jetstream.JetStream, group string, keep int) ([]string, error) {
	lister := js.StreamNames(ctx)
	var names []string
	for name := range lister.Name() {
		if gen, _, ok := parseChangelogStream(group, name); ok && gen != keep {
			names = append(names, name)
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	sort.Strings(names)
	var removed []string
	for _, name := range names {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return removed, fmt.Errorf("delete stream %s: %w", name, err)
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// openTemp opens a temporary Pebble store: nothing of it needs to survive
// a crash.
func openTemp(dir string) (*pebblestore.Store, error) {
	s, err := pebblestore.Open(dir, pebblestore.Options{NoSync: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("repartition: temporary store: %w", err)
	}
	return s, nil
}

// newPartition is one new partition's temporary store and what is
// waiting to be written to it.
type newPartition struct {
	store   *pebblestore.Store
	pending []kv.Write
	keys    int
	// idem marks, in pending, the idempotency records (whose key may
	// already be in the store: a conflict).
	idem []bool
}

// flushAt is how many writes are gathered before they go to a new
// partition's store.
const flushAt = 1000

func (np *newPartition) add(ctx context.Context, w kv.Write, idem bool, res *Repartitioned) error {
	np.pending = append(np.pending, w)
	np.idem = append(np.idem, idem)
	if len(np.pending) < flushAt {
		return nil
	}
	return np.flush(ctx, res)
}

func (np *newPartition) flush(ctx context.Context, res *Repartitioned) error {
	if len(np.pending) == 0 {
		return nil
	}
	conflicts := 0
	errs := make([]error, 1)
	err := np.store.Update(ctx, []kv.TxnFunc{func(tx kv.Txn) error {
		conflicts = 0
		for i, w := range np.pending {
			if np.idem[i] {
				// The same idempotency key from another old partition:
				// keep the first.
				// keep the first (a copy of the same record, read from
				// another old partition, is no conflict).
				if v, _, found, err := tx.Get(w.Key); err != nil {
					return err
				} else if found {
					if !bytes.Equal(v, w.Value) {
						conflicts++
					}
					continue
				}
			}
			if err := tx.Set(w.Key, w.Value, w.ExpireAt); err != nil {
				return err
			}
		}
		return nil
	}}, errs)
	if err == nil {
		err = errs[0]
	}
	if err != nil {
		return fmt.Errorf("temporary store: %w", err)
	}
	res.IdempotencyConflicts += conflicts
	np.pending, np.idem = np.pending[:0], np.idem[:0]
	return nil
}

// readPartition restores old partition p into a temporary store and
// copies its live records to the new partitions.
func readPartition(ctx context.Context, opts RepartitionOptions, cfg config, p int, work string, now int64,
	news []*newPartition, res *Repartitioned) error {
	stream, subject := ChangelogStreamOf(opts.Group, cfg.Generation, p)
	if _, err := opts.JetStream.Stream(ctx, stream); errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // never served: empty
	} else if err != nil {
		return fmt.Errorf("partition %d: %w", p, err)
	}
	cl, err := changelog.Open(ctx, opts.JetStream, changelog.Options{Stream: stream, Subject: subject, Replicas: opts.Replicas})
	if err != nil {
		return fmt.Errorf("partition %d: %w", p, err)
	}
	dir := filepath.Join(work, "old", "p"+partition.Token(p))
	old, err := openTemp(dir)
	if err != nil {
		return err
	}
	defer func() {
		if old != nil {
			_ = old.Close()
		}
		_ = os.RemoveAll(dir)
	}()
	if _, err := cl.Restore(ctx, old, 0); err != nil {
		return fmt.Errorf("partition %d: restore from %s: %w", p, stream, err)
	}
	oldN, newM := cfg.Partitions, opts.Partitions
	g := gcd(oldN, newM)
	snap := old.Snapshot()
	defer snap.Close()
	err = snap.Scan(nil, nil, func(key, value []byte, expireAt int64) (bool, error) {
		if expireAt != 0 && expireAt <= now {
			res.Expired++
			return true, nil
		}
		sk, err := kv.ParseStoreKey(key)
		if err != nil {
			return false, fmt.Errorf("partition %d: %w", p, err)
		}
		w := kv.Write{Op: kv.WriteSet, Key: append([]byte(nil), key...), Value: append([]byte(nil), value...), ExpireAt: expireAt}
		switch sk.Kind {
		case kv.StoreKeyData, kv.StoreKeyExpiry:
			h, err := partitionHash(opts.PartitionKey, sk.Key)
			if err != nil {
				return false, fmt.Errorf("partition %d: key %q: %w", p, sk.Key, err)
			}
			if was := int(h % uint64(oldN)); was != p {
				return false, fmt.Errorf("partition %d: key %q (namespace %q): %w: its partition key puts it in partition %d of %d; partition_key must depend on the key only",
					p, sk.Key, sk.Namespace, ErrKeyMisplaced, was, oldN)
			}
			q := int(h % uint64(newM))
			if sk.Kind == kv.StoreKeyData {
				res.Keys++
				news[q].keys++
			}
			return true, news[q].add(ctx, w, false, res)
		default:
			// An idempotency record or its expiry entry: to every new
			// partition q with q ≡ p (mod gcd).
			if sk.Kind == kv.StoreKeyIdem {
				res.Idempotency++
			}
			for q := p % g; q < newM; q += g {
				if sk.Kind == kv.StoreKeyIdem {
					res.IdempotencyCopies++
				}
				if err := news[q].add(ctx, w, sk.Kind == kv.StoreKeyIdem, res); err != nil {
					return false, err
				}
			}
			return true, nil
		}
	})
	if err != nil {
		return err
	}
	for _, np := range news {
		if err := np.flush(ctx, res); err != nil {
			return err
		}
	}
	return nil
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// partitionHash returns the XXH64 of key's partition key: key itself, or
// the value of x with meta.kv.key set to key.
func partitionHash(x *expr.Expr, key []byte) (uint64, error) {
	if x == nil {
		return xxhash.Sum64(key), nil
	}
	meta, err := json.Marshal(map[string]any{"kv": map[string]any{"key": string(key)}})
	if err != nil {
		return 0, err
	}
	k, err := evalPartitionKey(x, pipeline.Event{Meta: meta})
	if err != nil {
		return 0, err
	}
	return xxhash.Sum64String(k), nil
}

// recordWrites bounds the writes, recordBytes the bytes, of one record
// written to a new changelog.
const (
	recordWrites = 1000
	recordBytes  = 256 << 10
)

// writePartition writes store, new partition q's state, into a new
// changelog stream of generation gen as ordinary records (epoch 0, below
// every lease epoch, so an owner's fence always supersedes them), and
// returns the stream's name. The stream must be empty: removeGenerations
// deleted any of an earlier run.
func writePartition(ctx context.Context, opts RepartitionOptions, gen, q int, store *pebblestore.Store) (string, error) {
	stream, subject := ChangelogStreamOf(opts.Group, gen, q)
	cl, err := changelog.Open(ctx, opts.JetStream, changelog.Options{Stream: stream, Subject: subject, Replicas: opts.Replicas})
	if err != nil {
		return stream, err
	}
	last, err := cl.Last(ctx)
	if err != nil {
		return stream, err
	}
	if last != 0 {
		return stream, fmt.Errorf("stream %s already holds %d messages", stream, last)
	}
	w := cl.NewWriter(0, 0)
	var rec changelog.Record
	size := 0
	flush := func() error {
		if len(rec.Writes) == 0 {
			return nil
		}
		_, err := w.Append(ctx, &rec)
		rec.Writes, size = rec.Writes[:0], 0
		return err
	}
	snap := store.Snapshot()
	defer snap.Close()
	err = snap.Scan(nil, nil, func(key, value []byte, expireAt int64) (bool, error) {
		rec.Set(append([]byte(nil), key...), append([]byte(nil), value...), expireAt)
		size += len(key) + len(value) + 16
		if len(rec.Writes) >= recordWrites || size >= recordBytes {
			return true, flush()
		}
		return true, nil
	})
	if err == nil {
		err = flush()
	}
	return stream, err
}

// verifyPartition restores new partition q's stream into a fresh store
// in dir and compares it with store, record by record.
func verifyPartition(ctx context.Context, opts RepartitionOptions, gen, q int, store *pebblestore.Store, dir string) error {
	stream, subject := ChangelogStreamOf(opts.Group, gen, q)
	cl, err := changelog.Open(ctx, opts.JetStream, changelog.Options{Stream: stream, Subject: subject, Replicas: opts.Replicas})
	if err != nil {
		return err
	}
	v, err := openTemp(dir)
	if err != nil {
		return err
	}
	defer func() {
		_ = v.Close()
		_ = os.RemoveAll(dir)
	}()
	if _, err := cl.Restore(ctx, v, 0); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrVerify, stream, err)
	}
	want, wn, err := digest(store)
	if err != nil {
		return err
	}
	got, gn, err := digest(v)
	if err != nil {
		return err
	}
	if want != got || wn != gn {
		return fmt.Errorf("%w: %s restores %d records, %d were written (or their contents differ)", ErrVerify, stream, gn, wn)
	}
	return nil
}

// digest hashes every record of s in key order.
func digest(s *pebblestore.Store) (uint64, int, error) {
	h := xxhash.New()
	n := 0
	snap := s.Snapshot()
	defer snap.Close()
	var lens [24]byte
	err := snap.Scan(nil, nil, func(key, value []byte, expireAt int64) (bool, error) {
		binary.BigEndian.PutUint64(lens[0:], uint64(len(key)))
		binary.BigEndian.PutUint64(lens[8:], uint64(len(value)))
		binary.BigEndian.PutUint64(lens[16:], uint64(expireAt))
		_, _ = h.Write(lens[:])
		_, _ = h.Write(key)
		_, _ = h.Write(value)
		n++
		return true, nil
	})
	return h.Sum64(), n, err
}
