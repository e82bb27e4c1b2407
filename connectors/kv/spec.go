package kv

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/partition"
)

// This file declares the kv connector for flow files. Its backends are
// declared by the packages implementing them (pebblestore.Backend,
// etcdstore.Backend) and given to Spec, so that a program registering only
// the Pebble backend links no etcd client.

// BackendSpec declares a backend of the kv connector: the value of its
// backend option, the options only it has, and how to open it.
type BackendSpec struct {
	// Name is the value of the backend option selecting it ("pebble").
	Name string
	// Doc says where the store lives, for the backend option's reference:
	// "a directory of this machine".
	Doc string
	// Fields are the backend's own options. Spec makes each apply only
	// with this backend (OnlyWhen), and required only with it.
	Fields []component.Field
	// DeletesExpired says the backend deletes expired records itself
	// (etcd's leases), before a reclaim pass could report them: the
	// expired_events option is refused with it.
	DeletesExpired bool
	// Check checks the backend's options without opening anything (nil:
	// none beyond the fields').
	Check func(c *component.Config) error
	// Open opens, or shares with other connectors of the process through
	// env.Resources, the store c describes, and says where it is for
	// messages ("etcd http://a:2379 prefix \"app/\"").
	Open func(ctx context.Context, env *component.Env, c *component.Config) (b Backend, where string, err error)
	// Partitioned, when set, builds the connector of a config that sets
	// partitions (see docs/scaling.md), with opts the connector options
	// the config gives, for each partition's connector; its Check (above)
	// checks the partition options. Nil: the backend refuses partitions.
	// It is a hook so that this package does not import the partition
	// runtime, which imports it.
	Partitioned func(ctx context.Context, env *component.Env, c *component.Config, opts Options) (component.Component, error)
}

// partitionFields are the options of a partitioned connector, declared
// when some backend supports partitions.
var partitionFields = []string{"partition_key", "changelog", "group", "instance", "lease_ttl", "partition_wait", "input_from", "checkpoint_every"}

// DefaultCheckpointEvery is the default of the checkpoint_every option of
// a partitioned connector, changelog.DefaultCheckpointEvery (this package
// does not import the changelog, which links the NATS client).
const DefaultCheckpointEvery = "64MiB"

// commandsKey holds the Options.OnCommands hook of the kv connectors of a
// build.
var commandsKey = component.NewKey[func(namespace, op string, ok bool, n int)]("kv command observer")

// ObserveCommands makes fn the Options.OnCommands of every kv connector
// built with res (metrics use it).
func ObserveCommands(res *component.Resources, fn func(namespace, op string, ok bool, n int)) {
	commandsKey.Put(res, fn)
}

// Spec declares the kv connector with the given backends; the first is
// the default. It panics when none is given or two share a name, a
// programming error.
func Spec(backends ...BackendSpec) component.Spec {
	if len(backends) == 0 {
		panic("kv.Spec: no backend")
	}
	names := make([]string, len(backends))
	var where []string
	byName := map[string]*BackendSpec{}
	for i := range backends {
		b := &backends[i]
		if byName[b.Name] != nil {
			panic(fmt.Sprintf("kv.Spec: backend %q given twice", b.Name))
		}
		byName[b.Name] = b
		names[i] = b.Name
		where = append(where, b.Name+", "+b.Doc)
	}
	itoa := strconv.Itoa
	var partitionable []string
	for _, b := range backends {
		if b.Partitioned != nil {
			partitionable = append(partitionable, b.Name)
		}
	}
	fields := []component.Field{
		{Name: "backend", Type: component.TypeEnum, Enum: names, Default: names[0],
			Doc: "Where the store lives: " + strings.Join(where, "; ") + "."},
	}
	for _, b := range backends {
		on := &component.When{Field: "backend", Values: []string{b.Name}}
		for _, f := range b.Fields {
			f.OnlyWhen = on
			if f.Required {
				f.RequiredWhen = on
			}
			fields = append(fields, f)
		}
	}
	fields = append(fields, []component.Field{
		{Name: "namespace", Type: component.TypeString, Doc: "Key namespace; defaults to the flow's name."},
		{Name: "max_key_length", Type: component.TypeInt, Default: itoa(DefaultMaxKeyLength), Min: "1", Doc: "Longest key, in characters."},
		{Name: "max_value_bytes", Type: component.TypeByteSize, Default: "4MiB", Min: "1", Max: "1GiB",
			Doc: "Largest value, measured as canonical JSON."},
		{Name: "max_get_all", Type: component.TypeInt, Default: itoa(DefaultMaxGetAll), Min: "1", Doc: "Most entries one get_all may return."},
		{Name: "max_scan", Type: component.TypeInt, Default: itoa(DefaultMaxScan), Min: "1", Doc: "Default and highest limit of scan and keys."},
		{Name: "max_result_bytes", Type: component.TypeByteSize, Default: fmt.Sprintf("%dMiB", DefaultMaxResultBytes>>20), Min: "1", Max: "1GiB",
			Doc: "Budget of one event in bytes read from the store (values and keys returned, summed over a batch or a script run); an event needing more fails on err with budget exceeded and changes nothing."},
		{Name: "max_keys_visited", Type: component.TypeInt, Default: itoa(DefaultMaxKeysVisited), Min: "1",
			Doc: "Budget of one event in keys visited (point reads and every record a scan, count, keys, get_all or clear steps over, summed over a batch or a script run); bounds how long one event holds the store. An event needing more fails on err with budget exceeded and changes nothing."},
		{Name: "reclaim_interval", Type: component.TypeDuration, Default: DefaultReclaimInterval.String(), Min: "1s",
			Doc: "How often expired keys are deleted in the background."},
		{Name: "idem_retention", Type: component.TypeDuration, Default: DefaultIdemRetention.String(), Min: "1s",
			Doc: "How long the idempotency key (`idem`) of a write command is remembered; must outlast the source's longest redelivery delay."},
		{Name: "idem_from", Type: component.TypeString,
			Doc: "Path in the event's meta (e.g. `message_id`, set by bus sources) giving every write command without `idem` its idempotency key; a write lacking it is refused."},
		{Name: "result", Type: component.TypeString,
			Doc: "Enrich instead of replace: a path below `data` or `meta` (e.g. `data.player`, `meta.lookup`) where each result object (`{op, key, found, value}`, plus `next` or `replayed` as in `meta.kv`; a scan's rows as one array) is written into the event, which keeps its data, meta and correlation; `meta.kv`, `meta.error` and `meta.correlation` are refused. Failures go to `err` as without it (see docs/kv.md)."},
		{Name: "expired_events", Type: component.TypeBool, Default: "false",
			Doc: "Adds the output port `expired`: one event `{namespace, key, value, expired_at}` per key whose expiry ran out, emitted by the background reclaiming (which then runs at start, every `reclaim_interval` and once the input has ended) before the key is deleted, at least once; up to `reclaim_interval` plus a commit late (see docs/kv.md). Not with a backend that deletes expired keys itself (etcd)."},
		{Name: "optimistic_scripts", Type: component.TypeBool, Default: "false",
			Doc: "Lua nodes naming this connector run their scripts first outside the store's writer, which then only checks what they read and applies what they wrote (a script whose reads changed runs again in the writer). Helps when several flows share a busy store; a single flow is faster without it (see docs/lua.md)."},
	}...)
	if len(partitionable) > 0 {
		fields = append(fields, []component.Field{
			{Name: "partitions", Type: component.TypeInt, Min: "1", Max: itoa(partition.MaxCount),
				Doc: "Splits the store into this many partitions, each a Pebble store of its own (`dir/p017/`) made durable by a changelog on a NATS JetStream cluster, owned by one instance of the flow at a time and moved to another when it stops (see docs/scaling.md). Fixed for the life of the state: an instance declaring another count than the recorded one is refused; change it with `flowrun repartition`, the flow stopped. Backend " + strings.Join(partitionable, ", ") + " only."},
			{Name: "partition_key", Type: component.TypeExpr,
				Doc: "With `partitions`: the expression giving an event's partition key, a string; it sees `meta.kv.key` set to the command's key (e.g. `substr(meta.kv.key, 0, 8)` keeps `player/7/score` and `player/7/rank` together), and for a `batch` it is evaluated once per element, with `meta.kv` the element. Default: the command's key (scan start, prefix; each batch element's)."},
			{Name: "changelog", Type: component.TypeMap,
				Doc: "With `partitions`, required: the JetStream cluster holding the changelogs and leases, `{urls: \"${FLOWRUN_NATS_CLUSTER_URLS}\", replicas: 3}`; `urls` comma-separated, `replicas` 1, 3 (default) or 5. When no server answers at start the connector waits for one, not ready meanwhile; `fail_fast: true` fails the start instead."},
			{Name: "group", Type: component.TypeString,
				Doc: "With `partitions`: the name the flow's instances share their partitions under (it names the JetStream streams `FLOWRUN_<group>_LEASES` and `FLOWRUN_<group>_CL_<partition>`, `..._CL_<partition>_G<n>` after re-partitioning). Default: the flow's name."},
			{Name: "instance", Type: component.TypeString,
				Doc: "With `partitions`: this process's name in the group (lease holder and member key). Default: host name, process id and a random part, new at every start."},
			{Name: "lease_ttl", Type: component.TypeDuration, Default: "5s", Min: "1s", Max: "10m",
				Doc: "With `partitions`: how long a partition's lease lives without renewal (renewed every third of it): an instance that stops without releasing its partitions has them taken over after about this long."},
			{Name: "partition_wait", Type: component.TypeDuration, Default: "5s", Max: "10m",
				Doc: "With `partitions`: how long an event of a partition this instance does not serve yet (it is taking it, or the source cannot redeliver) waits for it before failing on `err` with partition not ready (or, from a source that redelivers, being given back); events of a source that redelivers (nats and the other bus sources) whose partition another instance owns are given back at once. 0 does not wait."},
			{Name: "input_from", Type: component.TypeString,
				Doc: "With `partitions`: path in the event's meta giving its input position, a non-negative integer (`nats.sequence`, the stream sequence a `partitions_of` nats source sets). Each commit group's changelog record carries the highest position of its commands, and an instance taking a partition over logs the highest one its state holds (see docs/scaling.md). A non-integer value fails the event on `err`; a missing one is 0, unknown."},
			{Name: "checkpoint_every", Type: component.TypeByteSize, Default: DefaultCheckpointEvery, Min: "64KiB", Max: "64GiB",
				Doc: "With `partitions`: volume of changelog records an owner appends between two checkpoints of its partition (a copy of its live keys in the changelog, after which the log below it is purged). Smaller bounds a take-over's restore and the stream's size, at the cost of rewriting every live key more often."},
		}...)
	}
	backendOf := func(c *component.Config) *BackendSpec {
		if b := byName[c.String("backend")]; b != nil {
			return b
		}
		return &backends[0]
	}
	return component.Spec{
		Type: "kv",
		Kind: component.KindProcessor,
		Summary: "The persistent key-value store. Applies the command in each event's `meta.kv` to the store of its backend " +
			"(`" + strings.Join(names, "`, `") + "`; see docs/kv.md, and docs/scaling.md for a store several flowrun processes share) " +
			"and emits the result on `out`, or the event with `meta.error` on `err`; `meta.correlation` is copied unchanged. " +
			"Several kv connectors of one process may share a store (the same directory, or etcd endpoints and prefix), each in its own namespace.",
		Fields: fields,
		Ports: func(c *component.Config) []string {
			if c.Bool("expired_events") {
				return append(Ports(), PortExpired)
			}
			return Ports()
		},
		PortsDoc: "`out`, `err`, and `expired` with `expired_events: true`.",
		Check: func(c *component.Config) error {
			if err := checkPartitioned(c, backendOf(c), partitionable); err != nil {
				return err
			}
			if b := backendOf(c); b.DeletesExpired && c.Bool("expired_events") {
				return fmt.Errorf("expired_events is not available with backend %s, which deletes expired keys itself before they can be reported", b.Name)
			}
			if b := backendOf(c); b.Check != nil {
				if err := b.Check(c); err != nil {
					return err
				}
			}
			o := connectorOptions(nil, c)
			return o.Validate()
		},
		Build: func(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			if c.Int("partitions") > 0 {
				b := backendOf(c)
				if b.Partitioned == nil {
					return component.Component{}, fmt.Errorf("partitions: backend %s has no partitions", b.Name)
				}
				return b.Partitioned(ctx, env, c, connectorOptions(env, c))
			}
			backend, where, err := backendOf(c).Open(ctx, env, c)
			if err != nil {
				return component.Component{}, err
			}
			conn, err := New(backend, connectorOptions(env, c))
			if err != nil {
				_ = backend.Close()
				return component.Component{}, fmt.Errorf("store %s: %w", where, err)
			}
			if src := conn.ExpirySource(); src != nil {
				return component.Component{Processor: conn, Side: src, SidePorts: []string{PortExpired}}, nil
			}
			return component.Component{Processor: conn}, nil
		},
	}
}

// checkPartitioned refuses partition options with a backend without
// partitions, or without partitions, and the options partitioned
// connectors do not have.
func checkPartitioned(c *component.Config, b *BackendSpec, partitionable []string) error {
	if !c.Has("partitions") {
		for _, f := range partitionFields {
			if c.Has(f) {
				return component.OptionErr(f, errors.New("applies only to a partitioned connector: set partitions too"))
			}
		}
		return nil
	}
	if b.Partitioned == nil {
		return component.OptionErr("partitions", fmt.Errorf("not available with backend %s: a partitioned connector keeps each partition in a local store made durable by its changelog, which backend %s provides (backend %s is shared by every process already; see docs/scaling.md)",
			b.Name, strings.Join(partitionable, ", "), b.Name))
	}
	switch {
	case c.Bool("expired_events"):
		return component.OptionErr("expired_events", errors.New("not available with partitions yet: expired keys are reclaimed by each partition's background pass"))
	case c.Bool("optimistic_scripts"):
		return component.OptionErr("optimistic_scripts", errors.New("not available with partitions: Lua nodes cannot use a partitioned connector (see docs/scaling.md)"))
	}
	return nil
}

// connectorOptions returns the connector options c sets; env (nil while
// checking) gives the default namespace, the logger and the command hook.
func connectorOptions(env *component.Env, c *component.Config) Options {
	o := Options{
		Namespace:       c.String("namespace"),
		MaxKeyLength:    c.Int("max_key_length"),
		MaxValueBytes:   int(c.ByteSize("max_value_bytes")),
		MaxGetAll:       c.Int("max_get_all"),
		MaxScan:         c.Int("max_scan"),
		MaxResultBytes:  int(c.ByteSize("max_result_bytes")),
		MaxKeysVisited:  c.Int("max_keys_visited"),
		ReclaimInterval: c.Duration("reclaim_interval"),
		IdemRetention:   c.Duration("idem_retention"),
		IdemFrom:        c.String("idem_from"),
		InputFrom:       c.String("input_from"),
		Optimistic:      c.Bool("optimistic_scripts"),
		Result:          c.String("result"),
		ExpiredEvents:   c.Bool("expired_events"),
	}
	if env != nil {
		if o.Namespace == "" {
			o.Namespace = env.Flow
		}
		o.Logger = env.Logger
		o.OnCommands, _ = commandsKey.Get(env.Resources)
		o.Now = component.Clock(env.Resources)
	}
	return o
}
