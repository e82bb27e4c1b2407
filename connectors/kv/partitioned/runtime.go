// Package partitioned is the partitioned kv connector: the key space of a
// flow's store split into a fixed number of partitions, each a local
// Pebble store made durable by its changelog (connectors/kv/changelog) and
// owned by one instance of the flow at a time (connectors/kv/owner). See
// docs/scaling.md, "Beyond one etcd cluster".
//
// A Connector is two things:
//
//   - The partition runtime. The instances of a flow sharing a group form
//     its membership through a lease stream: each keeps a member lease
//     m.<instance> alive. Every Poll, an instance counts the live members
//     and aims at ceil(partitions / members) partitions: it takes free or
//     lapsed partition leases up to that number (lowest numbers first,
//     from a random start, so that instances starting together contend
//     less), and gives back the ones above it (highest numbers first),
//     after the commands in flight on them are done. Each partition it
//     takes runs owner.Run: lease, wipe of dir/p017, take-over of the
//     changelog (fencing the previous owner) and restore, then serving;
//     once it serves, the partition is marked on the process's
//     partition.Board so that partitioned sources consume its input.
//   - The routing processor. Each event's partition is the XXH64 of its
//     partition key (the command's key by default, see
//     Options.PartitionKey) modulo the count; the events of each served
//     partition are handed, in order, to that partition's kv.Connector.
//     An event of a partition this instance does not serve is given back
//     for redelivery when its source redelivers (pipeline.Abandon), and
//     otherwise waits up to Options.Wait for the partition before failing
//     with kv.ErrPartitionNotReady. A batch whose keys fall into
//     different partitions fails with kv.ErrCrossPartition.
//
// A command whose partition is lost while it is in flight (its append to
// the changelog fenced by the new owner, the store failed) is never
// acknowledged: each partition's connector runs with
// kv.Options.AbandonFailedCommits, so its event is redelivered (or, from
// a source that does not redeliver, fails on err with kv.ErrCommit).
package partitioned

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/changelog"
	"github.com/flowrun/flowrun/connectors/kv/owner"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/lease"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/operators/expr"
)

// Defaults for Options.
const (
	// DefaultLeaseTTL is the lease TTL of docs/scaling.md: failover takes
	// about this long plus a poll.
	DefaultLeaseTTL = lease.DefaultTTL
	// DefaultWait is how long an event that cannot be redelivered waits
	// for its partition: longer than a take-over of a released partition
	// (a poll and a restore), far shorter than a lapse.
	DefaultWait = 5 * time.Second
	// DefaultReplicas is the replica count of the streams Open creates.
	DefaultReplicas = 3
)

// ErrConfigMismatch reports a group whose recorded partition count is not
// the connector's.
var ErrConfigMismatch = errors.New("partitioned group configured differently")

// Options configure a Connector. Partitions, Dir, JetStream and Group are
// required; EnsureDefaults fills the rest and Validate checks them.
type Options struct {
	// Partitions is the partition count, fixed for the life of the
	// state: it is recorded in the group's lease stream by the first
	// instance, and an instance declaring another count is refused.
	Partitions int
	// Dir holds one Pebble store per owned partition, Dir/p017. Each is
	// wiped and restored from the changelog when the partition is taken.
	Dir string
	// JetStream reaches the cluster holding the changelogs and leases.
	JetStream jetstream.JetStream
	// Group names the streams the instances share: FLOWRUN_<Group>_LEASES
	// and FLOWRUN_<Group>_CL_017 (dots become underscores).
	Group string
	// Instance is this process's name in the group: its member lease
	// m.<Instance> and the holder of its partition leases. Default:
	// DefaultInstance().
	Instance string
	// Replicas is the replica count of the streams created: 1, 3 or 5.
	// Default DefaultReplicas.
	Replicas int
	// LeaseTTL is the TTL of member and partition leases. Default
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Poll is how often membership is counted and partitions taken or
	// given back, and how often a wanted lease is tried. Default a third
	// of LeaseTTL.
	Poll time.Duration
	// Wait bounds how long an event that cannot be redelivered waits for
	// a partition this instance does not serve. Default DefaultWait; a
	// negative value does not wait.
	Wait time.Duration
	// PartitionKey, when set, gives an event's partition key (a string).
	// It sees the event with meta.kv.key set to the command's key (scan
	// start, prefix; "" for a null prefix); for a batch it is evaluated
	// once per element, with meta.kv the element and its key. Nil: the
	// command's key (kv.CommandKeys).
	PartitionKey *expr.Expr
	// KV are the options of each partition's kv.Connector;
	// AbandonFailedCommits is set.
	KV kv.Options
	// Store are the options of each partition's Pebble store; Replicator
	// and OnCommit are set per partition.
	Store pebblestore.Options
	// CheckpointEvery is the volume of changelog records (bytes) an owner
	// appends between two checkpoints of its partition (owner.Options).
	// Default changelog.DefaultCheckpointEvery; negative disables
	// checkpoints.
	CheckpointEvery int64
	// OnServe, when set, is called each time this instance starts serving
	// a partition, with what its take-over restored (TakeOver.Input is
	// the highest input position the partition's state holds). It must be
	// quick; metrics and tests use it.
	OnServe func(TakeOver)
	// Board is where served partitions are marked. Default: a board of
	// the connector's own (Board returns it).
	Board *partition.Board
	// Logger receives the runtime's events. Default slog.Default().
	Logger *slog.Logger

	// takeOverHook, when set, is called in each take-over once the lease
	// is acquired, with the run's context and the partition (tests: a
	// take-over that hangs).
	takeOverHook func(ctx context.Context, p int)
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Instance == "" {
		o.Instance = DefaultInstance()
	}
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = DefaultLeaseTTL
	}
	if o.Poll == 0 {
		o.Poll = o.LeaseTTL / 3
	}
	if o.Wait == 0 {
		o.Wait = DefaultWait
	}
	if o.CheckpointEvery == 0 {
		o.CheckpointEvery = changelog.DefaultCheckpointEvery
	}
	if o.Board == nil {
		o.Board = partition.NewBoard()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports the first invalid field, by name.
func (o *Options) Validate() error {
	if err := partition.CheckCount(o.Partitions); err != nil {
		return fmt.Errorf("partitioned: Options.Partitions: %w", err)
	}
	switch {
	case o.Dir == "":
		return errors.New("partitioned: Options.Dir is required")
	case o.JetStream == nil:
		return errors.New("partitioned: Options.JetStream is required")
	case o.Group == "":
		return errors.New("partitioned: Options.Group is required")
	case strings.ContainsAny(o.Group, " \t\r\n*>/\\"):
		return fmt.Errorf("partitioned: Options.Group %q must not contain whitespace, '*', '>', '/' or '\\'", o.Group)
	case strings.ContainsAny(o.Instance, " \t\r\n*>.") || o.Instance == "":
		return fmt.Errorf("partitioned: Options.Instance %q must be one subject token: no whitespace, '.', '*' or '>'", o.Instance)
	case o.Replicas != 1 && o.Replicas != 3 && o.Replicas != 5:
		return fmt.Errorf("partitioned: Options.Replicas is %d, must be 1, 3 or 5", o.Replicas)
	case o.LeaseTTL < 10*time.Millisecond:
		return fmt.Errorf("partitioned: Options.LeaseTTL is %v, must be at least 10ms", o.LeaseTTL)
	case o.Poll <= 0 || o.Poll >= o.LeaseTTL:
		return fmt.Errorf("partitioned: Options.Poll is %v, must be positive and below LeaseTTL %v", o.Poll, o.LeaseTTL)
	}
	return nil
}

// DefaultInstance returns a name for this process start: host name
// (dots replaced), process id and a random part, so that a restarted
// process is a new member and does not count on leases of its previous
// life.
func DefaultInstance() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	host = strings.NewReplacer(".", "_", " ", "_", "*", "_", ">", "_").Replace(host)
	return fmt.Sprintf("%s-%d-%04x", host, os.Getpid(), rand.Uint32()&0xffff)
}

// token makes s usable in stream names and as a subject token.
func token(s string) string {
	return strings.NewReplacer(".", "_", " ", "_").Replace(s)
}

// LeaseStream returns the name of group's lease stream.
func LeaseStream(group string) string { return "FLOWRUN_" + token(group) + "_LEASES" }

// ChangelogStream returns the name of partition p's changelog stream in
// group, and the subject its records are published on, for a group never
// re-partitioned (generation 0).
func ChangelogStream(group string, p int) (stream, subject string) {
	return ChangelogStreamOf(group, 0, p)
}

// ChangelogStreamOf returns the name of partition p's changelog stream in
// group at generation gen, and its subject. Generation 0 is the state a
// group starts with (FLOWRUN_<group>_CL_017); each re-partitioning
// (Repartition) writes the next generation's streams under names of
// their own (FLOWRUN_<group>_CL_017_G1, subject flowrun.<group>.cl.017.g1),
// so that the old ones stay whole until the group's recorded
// configuration names the new ones. A name ending in three digits is of
// generation 0, one ending in _G and digits of a later one: the two never
// meet, whatever the group.
func ChangelogStreamOf(group string, gen, p int) (stream, subject string) {
	stream, subject = "FLOWRUN_"+token(group)+"_CL_"+partition.Token(p), "flowrun."+token(group)+".cl."+partition.Token(p)
	if gen == 0 {
		return stream, subject
	}
	g := strconv.Itoa(gen)
	return stream + "_G" + g, subject + ".g" + g
}

// parseChangelogStream returns the generation and partition of a stream
// named by ChangelogStreamOf for group; ok is false for any other name.
func parseChangelogStream(group, name string) (gen, p int, ok bool) {
	rest, found := strings.CutPrefix(name, "FLOWRUN_"+token(group)+"_CL_")
	if !found || len(rest) < 3 {
		return 0, 0, false
	}
	digits := func(s string) bool {
		for _, r := range s {
			if r < '0' || r > '9' {
				return false
			}
		}
		return s != ""
	}
	if !digits(rest[:3]) {
		return 0, 0, false
	}
	p, _ = strconv.Atoi(rest[:3])
	if len(rest) == 3 {
		return 0, p, true
	}
	g, found := strings.CutPrefix(rest[3:], "_G")
	if !found || !digits(g) || g[0] == '0' {
		return 0, 0, false
	}
	gen, err := strconv.Atoi(g)
	return gen, p, err == nil
}

// configName is the settled value (lease.Table.Settle) holding a group's
// config.
const configName = "config"

// config is what the first instance records of the group: every instance
// must agree on Partitions and Hash. Generation, written by Repartition
// only, names the changelog streams of the state (ChangelogStreamOf).
type config struct {
	Partitions int    `json:"partitions"`
	Hash       string `json:"hash"`
	Generation int    `json:"generation,omitempty"`
}

// hashName is the partition hash recorded in a group's config.
const hashName = "xxh64"

// Partition states, as the routing processor reports them.
const (
	stateUnowned   = iota // no owner.Run of this instance has its lease
	stateAcquiring        // owner.Run is waiting for the lease
	stateRestoring        // leased; the store is restored from the changelog
	stateServing          // commands go to conn
	stateStopping         // serving ended; in-flight commands finish
)

func stateText(s int) string {
	switch s {
	case stateAcquiring:
		return "this instance is waiting for its lease"
	case stateRestoring:
		return "restoring from its changelog on this instance"
	case stateServing:
		return "serving"
	case stateStopping:
		return "being given up by this instance"
	}
	return "not owned by this instance"
}

// TakeOver is what an instance restored when it started serving a
// partition (Options.OnServe, Connector.TakenOver).
type TakeOver struct {
	// Partition is the partition served.
	Partition int
	// Epoch is this instance's lease epoch for it.
	Epoch uint64
	// Input is the highest input position (Options.KV.InputFrom: the
	// partition's input stream sequence) whose commands the partition's
	// state holds, as restored from its store's position, checkpoint and
	// log: the input up to it was applied by earlier owners, and a
	// redelivered message at or below it is answered from its
	// idempotency record. 0 when no group carried one.
	Input uint64
	// Restored is the take-over's restore (records and writes replayed;
	// After is the local store's position when only the records after it
	// were replayed, 0 after a full restore).
	Restored owner.Restored
}

// slot is one partition as this instance sees it.
type slot struct {
	mu    sync.Mutex
	state int
	since time.Time
	conn  *kv.Connector
	taken TakeOver // while serving
	refs  int
	// ready is closed when the partition starts serving, and replaced
	// when it stops.
	ready chan struct{}
	// idle is signalled when refs drops to 0 while stopping.
	idle *sync.Cond
}

func newSlot() *slot {
	s := &slot{ready: make(chan struct{}), since: time.Now()}
	s.idle = sync.NewCond(&s.mu)
	return s
}

// setState records a state other than serving and stopping.
func (s *slot) setState(st int) {
	s.mu.Lock()
	s.state, s.since = st, time.Now()
	s.mu.Unlock()
}

// serve makes conn the partition's connector.
func (s *slot) serve(conn *kv.Connector, taken TakeOver) {
	s.mu.Lock()
	s.state, s.since, s.conn, s.taken = stateServing, time.Now(), conn, taken
	close(s.ready)
	s.mu.Unlock()
}

// stop ends serving and waits until no command holds the connector.
func (s *slot) stop() {
	s.mu.Lock()
	s.state, s.since, s.conn = stateStopping, time.Now(), nil
	s.ready = make(chan struct{})
	for s.refs > 0 {
		s.idle.Wait()
	}
	s.mu.Unlock()
}

// acquire returns the connector while serving, holding it until release;
// otherwise nil, a channel closed when serving starts, the state in
// words, and whether the partition is coming here (this instance is
// taking it: waiting for its lease or restoring it).
func (s *slot) acquire() (conn *kv.Connector, ready <-chan struct{}, state string, coming bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stateServing {
		s.refs++
		return s.conn, nil, "", false
	}
	st := stateText(s.state)
	if s.state != stateUnowned {
		st += fmt.Sprintf(" (for %v)", time.Since(s.since).Round(time.Millisecond))
	}
	return nil, s.ready, st, s.state == stateAcquiring || s.state == stateRestoring
}

func (s *slot) release() {
	s.mu.Lock()
	s.refs--
	if s.refs == 0 {
		s.idle.Broadcast()
	}
	s.mu.Unlock()
}

// run is one owner.Run of this instance.
type run struct {
	p        int
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	acquired bool
	serving  bool        // the take-over is done: the lease is renewed
	overdue  *time.Timer // ends a take-over that outlives its lease
}

func (r *run) isAcquired() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.acquired
}

// runtime owns the partitions of one Connector.
type runtime struct {
	opts   Options
	leases *lease.Table
	slots  []*slot
	start  int // first partition tried, random
	// gen is the generation of the group's changelog streams, config
	// the group's config as recorded when the runtime started and want
	// the config this runtime would record: every round of balancing
	// checks the recorded config is still the same (see rebalance).
	gen          int
	config, want []byte

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	logs map[int]*changelog.Log
	runs map[int]*run
	// ending holds the runs given back and not yet finished: the next
	// run of the same partition starts once it has.
	ending map[int]*run
}

// openRuntime opens the lease stream, checks the group's recorded
// configuration and starts membership and balancing.
func openRuntime(ctx context.Context, opts Options) (*runtime, error) {
	// Instances starting together create the lease stream together, and a
	// new replicated stream answers only once it has elected a leader:
	// its first reads may time out. Try again for a while before giving
	// up on the group.
	var (
		leases *lease.Table
		got    []byte
	)
	want, _ := json.Marshal(config{Partitions: opts.Partitions, Hash: hashName})
	err := untilSettled(ctx, opts, func() error {
		// One try is bounded: a read sent while the stream has no leader
		// is never answered.
		tctx, cancel := context.WithTimeout(ctx, startTry)
		defer cancel()
		l, err := lease.Open(tctx, opts.JetStream, LeaseStream(opts.Group), opts.Instance,
			lease.Options{TTL: opts.LeaseTTL, Replicas: opts.Replicas})
		if err != nil {
			return err
		}
		if got, err = l.Settle(tctx, configName, want); err != nil {
			return err
		}
		leases = l
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("partitioned: group %q: %w", opts.Group, err)
	}
	var rec config
	if err := json.Unmarshal(got, &rec); err != nil || rec.Partitions != opts.Partitions || rec.Hash != hashName || rec.Generation < 0 {
		return nil, fmt.Errorf("partitioned: group %q: %w: its state has %s, this connector declares %d partitions (xxh64); the count is fixed for the life of the state",
			opts.Group, ErrConfigMismatch, got, opts.Partitions)
	}
	if err := opts.Board.Declare(opts.Partitions); err != nil {
		return nil, fmt.Errorf("partitioned: group %q: %w", opts.Group, err)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("partitioned: %w", err)
	}
	rt := &runtime{opts: opts, leases: leases, start: rand.IntN(opts.Partitions), gen: rec.Generation, config: got, want: want,
		logs: map[int]*changelog.Log{}, runs: map[int]*run{}, ending: map[int]*run{}}
	for range opts.Partitions {
		rt.slots = append(rt.slots, newSlot())
	}
	rt.ctx, rt.cancel = context.WithCancel(context.Background())
	// A first round now, so that the partitions this instance is going
	// to take are known as coming here when the first events arrive.
	if err := rt.rebalance(ctx); err != nil {
		opts.Logger.Warn("partitioned: balancing failed, trying again", "group", opts.Group,
			"instance", opts.Instance, "error", err)
	}
	rt.wg.Add(2)
	go func() {
		defer rt.wg.Done()
		rt.member()
	}()
	go func() {
		defer rt.wg.Done()
		rt.balance()
	}()
	return rt, nil
}

// close stops balancing, gives every partition back (after the commands
// in flight) and releases the member lease.
func (rt *runtime) close() {
	rt.cancel()
	rt.wg.Wait()
}

// member keeps this instance's member lease alive until the runtime
// stops, acquiring it again if it was lost (the process was paused).
func (rt *runtime) member() {
	name := "m." + rt.opts.Instance
	var l *lease.Lease
	defer func() {
		if l != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = l.Release(ctx)
		}
	}()
	t := time.NewTicker(rt.leases.RenewInterval())
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(rt.ctx, rt.leases.RenewInterval())
		switch {
		case l == nil || !l.Valid():
			if nl, err := rt.leases.Acquire(ctx, name); err == nil {
				l = nl
			}
		default:
			_ = l.Renew(ctx) // a lost lease is acquired again next time
		}
		cancel()
		select {
		case <-rt.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// balance adjusts the partitions this instance owns every Poll until the
// runtime stops, then stops every owner.Run.
func (rt *runtime) balance() {
	defer rt.stopAll()
	t := time.NewTicker(rt.opts.Poll)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(rt.ctx, rt.opts.LeaseTTL)
		if err := rt.rebalance(ctx); err != nil && rt.ctx.Err() == nil {
			rt.opts.Logger.Warn("partitioned: balancing failed, trying again", "group", rt.opts.Group,
				"instance", rt.opts.Instance, "error", err)
		}
		cancel()
		select {
		case <-rt.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// target returns how many partitions each of members instances aims at.
func target(partitions, members int) int {
	return (partitions + members - 1) / members
}

// rebalance is one round of balancing (see the package doc).
func (rt *runtime) rebalance(ctx context.Context) error {
	// A group re-partitioned while this instance ran (flowrun
	// repartition refuses live instances, but one may start meanwhile)
	// has its state in other streams: serve nothing of the old ones.
	got, err := rt.leases.Settle(ctx, configName, rt.want)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, rt.config) {
		rt.mu.Lock()
		for _, r := range rt.runs {
			rt.giveBack(r)
		}
		rt.mu.Unlock()
		return fmt.Errorf("%w: the group's configuration changed to %s since this instance started with %s (re-partitioned?): it serves no partition; restart it",
			ErrConfigMismatch, got, rt.config)
	}
	members, err := rt.leases.Survey(ctx, "m.")
	if err != nil {
		return err
	}
	live, self := 0, false
	for _, m := range members {
		if m.Holder != "" && !m.Lapsed {
			live++
			self = self || m.Name == "m."+rt.opts.Instance
		}
	}
	if !self {
		live++
	}
	aim := target(rt.opts.Partitions, live)
	leases, err := rt.leases.Survey(ctx, "p.")
	if err != nil {
		return err
	}
	byPart := make(map[int]lease.State, len(leases))
	for _, st := range leases {
		var p int
		if _, err := fmt.Sscanf(st.Name, "p.%d", &p); err == nil {
			byPart[p] = st
		}
	}

	rt.mu.Lock()
	defer rt.mu.Unlock()
	// Stop waiting for leases another live instance holds.
	var acquired []int
	for p, r := range rt.runs {
		if r.isAcquired() {
			acquired = append(acquired, p)
			continue
		}
		if st, ok := byPart[p]; ok && !st.Free() && st.Holder != rt.opts.Instance {
			rt.giveBack(r)
		}
	}
	// Take free or lapsed partitions up to the aim.
	for i := 0; i < rt.opts.Partitions && len(rt.runs) < aim; i++ {
		p := (rt.start + i) % rt.opts.Partitions
		if _, mine := rt.runs[p]; mine {
			continue
		}
		if st, ok := byPart[p]; ok && !st.Free() {
			continue
		}
		rt.startRun(p)
	}
	// Give back what is above the aim: leases not yet acquired first,
	// then the highest partitions.
	if extra := len(rt.runs) - aim; extra > 0 {
		for _, r := range rt.runs {
			if extra > 0 && !r.isAcquired() {
				rt.giveBack(r)
				extra--
			}
		}
		// acquired holds the acquired runs still in rt.runs.
		sortDesc(acquired)
		for _, p := range acquired {
			if extra == 0 {
				break
			}
			if r, ok := rt.runs[p]; ok {
				rt.opts.Logger.Info("partitioned: giving a partition back", "group", rt.opts.Group,
					"instance", rt.opts.Instance, "partition", p, "members", live, "aim", aim)
				rt.giveBack(r)
				extra--
			}
		}
	}
	return nil
}

// giveBack stops r; rt.mu is held.
func (rt *runtime) giveBack(r *run) {
	r.cancel()
	delete(rt.runs, r.p)
	rt.ending[r.p] = r
}

func sortDesc(ps []int) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j] > ps[j-1]; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// stopAll stops every owner.Run and waits for them.
func (rt *runtime) stopAll() {
	rt.mu.Lock()
	var runs []*run
	for p, r := range rt.runs {
		r.cancel()
		runs = append(runs, r)
		delete(rt.runs, p)
	}
	for _, r := range rt.ending {
		runs = append(runs, r)
	}
	rt.mu.Unlock()
	for _, r := range runs {
		<-r.done
	}
}

// log returns partition p's changelog, opening (creating) it once.
func (rt *runtime) log(ctx context.Context, p int) (*changelog.Log, error) {
	rt.mu.Lock()
	l := rt.logs[p]
	rt.mu.Unlock()
	if l != nil {
		return l, nil
	}
	stream, subject := ChangelogStreamOf(rt.opts.Group, rt.gen, p)
	l, err := changelog.Open(ctx, rt.opts.JetStream, changelog.Options{Stream: stream, Subject: subject, Replicas: rt.opts.Replicas})
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	rt.logs[p] = l
	rt.mu.Unlock()
	return l, nil
}

// startRun starts owning partition p; rt.mu is held. A run that was
// given back finishes (its in-flight commands, its lease released)
// before the next run of the same partition starts.
func (rt *runtime) startRun(p int) {
	prev := rt.ending[p]
	delete(rt.ending, p)
	ctx, cancel := context.WithCancel(rt.ctx)
	r := &run{p: p, cancel: cancel, done: make(chan struct{})}
	rt.runs[p] = r
	sl := rt.slots[p]
	if prev == nil {
		sl.setState(stateAcquiring)
	}
	go func() {
		defer close(r.done)
		defer cancel()
		if prev != nil {
			<-prev.done
		}
		sl.setState(stateAcquiring)
		err := rt.own(ctx, r)
		sl.setState(stateUnowned)
		rt.mu.Lock()
		if rt.runs[p] == r {
			delete(rt.runs, p)
		}
		if rt.ending[p] == r {
			delete(rt.ending, p)
		}
		rt.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			rt.opts.Logger.Warn("partitioned: partition stopped", "group", rt.opts.Group,
				"instance", rt.opts.Instance, "partition", p, "error", err)
		}
	}()
}

// own runs owner.Run for r's partition until ctx ends, the lease is
// lost or the store fails.
func (rt *runtime) own(ctx context.Context, r *run) error {
	p, sl := r.p, rt.slots[r.p]
	log, err := rt.log(ctx, p)
	if err != nil {
		return err
	}
	failed := make(chan error, 1)
	sopts := rt.opts.Store
	onCommit := sopts.OnCommit
	sopts.OnCommit = func(ci pebblestore.CommitInfo) {
		if onCommit != nil {
			onCommit(ci)
		}
		if ci.Err != nil {
			select {
			case failed <- ci.Err:
			default:
			}
		}
	}
	var epoch uint64
	return owner.Run(ctx, owner.Options{
		Dir:             filepath.Join(rt.opts.Dir, "p"+partition.Token(p)),
		Log:             log,
		Leases:          rt.leases,
		Lease:           "p." + partition.Token(p),
		Store:           sopts,
		Poll:            rt.opts.Poll,
		CheckpointEvery: rt.opts.CheckpointEvery,
		OnCheckpoint: func(c changelog.Checkpointed, err error) {
			if err != nil {
				rt.opts.Logger.Warn("partitioned: checkpoint failed", "group", rt.opts.Group, "instance", rt.opts.Instance,
					"partition", p, "error", err)
				return
			}
			rt.opts.Logger.Debug("partitioned: checkpoint written", "group", rt.opts.Group, "instance", rt.opts.Instance,
				"partition", p, "manifest", c.Seq, "keys", c.Keys, "bytes", c.Bytes, "input_position", c.Covers.Input, "purged_below", c.PurgedBelow)
		},
		Acquired: func(e uint64) {
			epoch = e
			r.mu.Lock()
			r.acquired = true
			// The take-over (fence and restore) does not renew the
			// lease: one that outlives it fails at its end anyway
			// (owner.Run), and one waiting for an answer that never
			// comes, or fencing over and over, would keep the
			// partition here, counted in this instance's aim, while no
			// instance at its aim takes the lapsed lease: the
			// partition would stop for good. Once the lease's TTL has
			// passed, the run ends, and the next round of balancing
			// starts the partition afresh.
			r.overdue = time.AfterFunc(rt.opts.LeaseTTL, func() {
				r.mu.Lock()
				defer r.mu.Unlock()
				if r.serving || ctx.Err() != nil {
					return
				}
				rt.opts.Logger.Warn("partitioned: the take-over of a partition outlived its lease, starting it again", "group", rt.opts.Group,
					"instance", rt.opts.Instance, "partition", p, "epoch", e, "lease_ttl", rt.opts.LeaseTTL)
				r.cancel()
			})
			r.mu.Unlock()
			sl.setState(stateRestoring)
			if rt.opts.takeOverHook != nil {
				rt.opts.takeOverHook(ctx, p)
			}
		},
	}, func(sctx context.Context, b kv.Backend, res owner.Restored) error {
		kopts := rt.opts.KV
		kopts.AbandonFailedCommits = true
		conn, err := kv.New(b, kopts)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.serving = true
		r.overdue.Stop()
		r.mu.Unlock()
		taken := TakeOver{Partition: p, Epoch: epoch, Input: res.Input, Restored: res}
		rt.opts.Logger.Info("partitioned: serving a partition", "group", rt.opts.Group, "instance", rt.opts.Instance,
			"partition", p, "epoch", epoch, "restored_records", res.Records, "restored_writes", res.Writes,
			"resumed_after", res.After, "input_position", res.Input)
		if rt.opts.OnServe != nil {
			rt.opts.OnServe(taken)
		}
		serving, stop := context.WithCancelCause(sctx)
		defer stop(nil)
		sl.serve(conn, taken)
		rt.opts.Board.Serve(serving, p)
		select {
		case <-serving.Done():
		case err = <-failed:
			err = fmt.Errorf("partition %d: the store failed: %w", p, err)
		}
		stop(err)
		sl.stop()
		_ = conn.Close(context.WithoutCancel(sctx))
		return err
	})
}

// startTries bounds how long an instance tries to reach its group's lease
// stream at start before it fails.
const startTries = 30 * time.Second

// startTry bounds one try to reach the lease stream at start.
const startTry = 5 * time.Second

// untilSettled calls try until it succeeds, ctx is done or startTries
// passed, waiting longer after each failure (200 ms doubling to 2 s); it
// returns try's last error.
func untilSettled(ctx context.Context, opts Options, try func() error) error {
	deadline := time.Now().Add(startTries)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	wait := 200 * time.Millisecond
	for {
		err := try()
		if err == nil || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		opts.Logger.Warn("partitioned: cannot reach the group's lease stream yet, trying again",
			"group", opts.Group, "instance", opts.Instance, "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}
