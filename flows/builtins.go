package flows

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// NewRegistry returns a registry holding the built-in components:
// connectors stdin, stdout, file, null and kv, and operators filter, set,
// route and drop. Expressions are checked with the operators' compiler.
func NewRegistry() *Registry {
	r := NewEmptyRegistry()
	r.SetExprChecker(checkExpr)
	for _, s := range builtinSpecs() {
		if err := r.Register(s); err != nil {
			panic(err) // a broken built-in spec is a programming error caught by every test
		}
	}
	return r
}

// checkExpr parses src with the operators' expression parser.
func checkExpr(src string) error {
	_, err := expr.Parse(src)
	return err
}

func codecField() Field {
	return Field{Name: "codec", Type: TypeEnum, Enum: []string{jsonl.CodecEvent, jsonl.CodecJSON}, Default: jsonl.CodecEvent,
		Doc: `"event": each line is {"data": ..., "meta": {...}}; "json": each line is the payload alone (metadata empty on read, dropped on write).`}
}

func maxLineField() Field {
	return Field{Name: "max_line_bytes", Type: TypeByteSize, Default: "16MiB",
		Doc: "Longest accepted input line; longer lines are skipped and reported on err."}
}

func readerOptions(c *Config) jsonl.ReaderOptions {
	return jsonl.ReaderOptions{Name: c.Node, Codec: c.String("codec"), MaxLineBytes: int(min(c.ByteSize("max_line_bytes"), 1<<40))}
}

var readerPorts = StaticPorts(pipeline.PortOut, pipeline.PortErr)

func builtinSpecs() []Spec {
	return []Spec{
		{
			Type: "stdin",
			Kind: KindSource,
			Summary: "Reads events from standard input, one JSON line each, until end of input. " +
				"A malformed line is emitted on `err` with `meta.error` naming the line number, and reading goes on.",
			Fields: []Field{codecField(), maxLineField()},
			Ports:  readerPorts,
			Build: func(_ context.Context, env *BuildEnv, c *Config) (Component, error) {
				return Component{Source: jsonl.NewReader(env.Options.Stdin, readerOptions(c))}, nil
			},
		},
		{
			Type:    "stdout",
			Kind:    KindSink,
			Summary: "Writes every event it receives to standard output as one JSON line.",
			Fields:  []Field{codecField()},
			Build: func(_ context.Context, env *BuildEnv, c *Config) (Component, error) {
				return Component{Processor: jsonl.NewWriter(env.Stdout(), jsonl.WriterOptions{Name: c.Node, Codec: c.String("codec")})}, nil
			},
		},
		{
			Type: "file",
			Kind: KindSink,
			KindOf: func(c *Config) Kind {
				if c.String("mode") == string(jsonl.ModeRead) {
					return KindSource
				}
				return KindSink
			},
			Summary: "Reads events from a JSON-lines file (`mode: read`, a source) or writes them to one " +
				"(`write` or `truncate`: start empty; `append`: keep what is there; a sink). " +
				"A written file and its directory are created when missing; it is synced to disk when the flow stops.",
			Fields: []Field{
				{Name: "path", Type: TypePath, Required: true, Doc: "The file, relative to the flow file unless absolute."},
				{Name: "mode", Type: TypeEnum, Required: true, Enum: []string{"read", "write", "append", "truncate"},
					Doc: "read: source; write/truncate: sink starting from an empty file; append: sink adding to the file."},
				codecField(),
				maxLineField(),
				{Name: "follow_symlinks", Type: TypeBool, Default: "false",
					OnlyWhen: &When{Field: "mode", Values: []string{string(jsonl.ModeWrite), string(jsonl.ModeAppend), string(jsonl.ModeTruncate)}},
					Doc: "write/append/truncate: write through a path that is a symbolic link (to the file it points to); " +
						"by default such a path is refused, so a planted link cannot redirect the output. Links among parent directories are followed."},
			},
			Ports: func(c *Config) []string {
				if c.String("mode") == string(jsonl.ModeRead) {
					return []string{pipeline.PortOut, pipeline.PortErr}
				}
				return nil
			},
			PortsDoc: "`out`, `err` in mode read; none otherwise",
			Build: func(_ context.Context, env *BuildEnv, c *Config) (Component, error) {
				mode := jsonl.Mode(c.String("mode"))
				if mode == jsonl.ModeRead {
					s, err := jsonl.OpenFileSource(c.String("path"), readerOptions(c))
					return Component{Source: s}, err
				}
				p, err := jsonl.OpenFileSink(c.String("path"), mode,
					jsonl.WriterOptions{Name: c.Node, Codec: c.String("codec"), FollowSymlinks: c.Bool("follow_symlinks")})
				return Component{Processor: p}, err
			},
		},
		{
			Type:    "null",
			Kind:    KindSink,
			Summary: "Discards every event it receives.",
			Build: func(context.Context, *BuildEnv, *Config) (Component, error) {
				return Component{Processor: jsonl.NewNull()}, nil
			},
		},
		kvSpec(),
		luaSpec(),
		gochannelSpec(),
		natsSpec(),
		{
			Type:      "filter",
			Kind:      KindOperator,
			Summary:   "Keeps the events for which the condition is true and drops the others.",
			Shorthand: "if",
			Fields:    []Field{{Name: "if", Type: TypeExpr, Required: true, Doc: "Condition an event must meet to be kept."}},
			Build: func(_ context.Context, _ *BuildEnv, c *Config) (Component, error) {
				op, err := operators.NewFilter(operators.FilterOptions{If: c.String("if")})
				return Component{Operator: op}, err
			},
		},
		{
			Type: "set",
			Kind: KindOperator,
			Summary: "Sets payload (`data.…`) or metadata (`meta.…`) fields to the values of expressions, " +
				"in the order written. Each expression sees the event as changed by the assignments before it.",
			Extra: &Field{Name: "TARGET", Type: TypeExpr, Required: true,
				Doc: "Each key is a target path (`data.count`, `meta.kv`) and its value the expression to store there."},
			Build: func(_ context.Context, _ *BuildEnv, c *Config) (Component, error) {
				if len(c.Extra) == 0 {
					return Component{}, errors.New("set needs at least one assignment such as `data.x: 'data.y + 1'`")
				}
				var opts operators.SetOptions
				for _, e := range c.Extra {
					opts.Fields = append(opts.Fields, operators.Assignment{Target: e.Key, Expr: e.Value})
				}
				op, err := operators.NewSet(opts)
				return Component{Operator: op}, err
			},
		},
		{
			Type: "route",
			Kind: KindOperator,
			Summary: "Sends each event to the port of the first route whose condition is true, " +
				"or to the default port. Every port named here becomes an output port of the pipeline.",
			Fields: []Field{{Name: "default", Type: TypeString,
				Doc: "Port for events matching no route (by default they continue on out)."}},
			Extra: &Field{Name: "PORT", Type: TypeExpr,
				Doc: "Each other key is a port name and its value the condition for sending an event there."},
			Ports: func(c *Config) []string {
				var ports []string
				for _, e := range c.Extra {
					ports = append(ports, e.Key)
				}
				if d := c.String("default"); d != "" {
					ports = append(ports, d)
				}
				return ports
			},
			PortsDoc: "one per route, plus the default",
			Build: func(_ context.Context, _ *BuildEnv, c *Config) (Component, error) {
				if len(c.Extra) == 0 {
					return Component{}, errors.New("route needs at least one route such as `bans: 'data.count >= 3'`")
				}
				opts := operators.RouteOptions{Default: c.String("default")}
				for _, e := range c.Extra {
					opts.Routes = append(opts.Routes, operators.Route{Port: e.Key, If: e.Value})
				}
				op, err := operators.NewRoute(opts)
				return Component{Operator: op}, err
			},
		},
		{
			Type:      "drop",
			Kind:      KindOperator,
			Summary:   "Drops every event (`drop: {}`), or those for which the condition is true (`drop: EXPR`).",
			Shorthand: "if",
			Fields:    []Field{{Name: "if", Type: TypeExpr, Doc: "Condition for dropping; every event when unset."}},
			Build: func(_ context.Context, _ *BuildEnv, c *Config) (Component, error) {
				op, err := operators.NewDrop(operators.DropOptions{If: c.String("if")})
				return Component{Operator: op}, err
			},
		},
	}
}

// The kv connector's backends.
const (
	backendPebble = "pebble"
	backendEtcd   = "etcd"
)

var (
	onPebble = &When{Field: "backend", Values: []string{backendPebble}}
	onEtcd   = &When{Field: "backend", Values: []string{backendEtcd}}
)

func kvSpec() Spec {
	itoa := strconv.Itoa
	return Spec{
		Type: "kv",
		Kind: KindProcessor,
		Summary: "The persistent key-value store. Applies the command in each event's `meta.kv` to a Pebble store " +
			"(`backend: pebble`, the default) or an etcd cluster several flowrun processes share (`backend: etcd`, see docs/scaling.md) " +
			"and emits the result on `out`, or the event with `meta.error` on `err`; `meta.correlation` is copied unchanged. " +
			"Several kv connectors of one process may share a directory, or etcd endpoints and prefix (one store), each in its own namespace.",
		Fields: []Field{
			{Name: "backend", Type: TypeEnum, Enum: []string{backendPebble, backendEtcd}, Default: backendPebble,
				Doc: "Where the store lives: pebble, a directory of this machine; etcd, an etcd cluster."},
			{Name: "dir", Aliases: []string{"path"}, Type: TypePath, Required: true, RequiredWhen: onPebble, OnlyWhen: onPebble,
				Doc: "Store directory, relative to the flow file unless absolute; created private (0700) when missing. Connectors whose dir reaches the same directory by any path (a symlink, x/../state) share one store."},
			{Name: "namespace", Type: TypeString, Doc: "Key namespace; defaults to the flow's name."},
			{Name: "sync", Type: TypeBool, Default: "true", OnlyWhen: onPebble,
				Doc: "Release results only once their writes are synced to disk. false is faster but a crash of the process (not only of the machine) loses the most recent acknowledged writes."},
			{Name: "max_batch", Type: TypeInt, Default: itoa(pebblestore.DefaultMaxBatch), OnlyWhen: onPebble,
				Doc: "Most commands committed together as one group (one disk sync)."},
			{Name: "max_delay", Type: TypeDuration, Default: "0s", OnlyWhen: onPebble,
				Doc: "How long a commit group may wait to fill up; 0 commits what is queued at once."},
			{Name: "row_cache", Type: TypeByteSize, Default: fmt.Sprintf("%dMiB", pebblestore.DefaultRowCacheBytes>>20), OnlyWhen: onPebble,
				Doc: "Memory for recently read and written records kept in front of the store, so reads of hot keys skip the disk structures; reads are exactly as fresh without it. 0 disables it. Connectors sharing a directory share the first one's cache."},
			{Name: "endpoints", Type: TypeStrings, Required: true, RequiredWhen: onEtcd, OnlyWhen: onEtcd, Env: true,
				Doc: "Client URLs of the etcd cluster: a list, or one comma-separated string."},
			{Name: "prefix", Type: TypeString, Default: "flowrun/", OnlyWhen: onEtcd, Env: true,
				Doc: "Prepended to every etcd key of the store; stores with different prefixes are independent."},
			{Name: "dial_timeout", Type: TypeDuration, Default: "5s", OnlyWhen: onEtcd,
				Doc: "How long connecting to the cluster may take when the flow starts."},
			{Name: "request_timeout", Type: TypeDuration, Default: "10s", OnlyWhen: onEtcd,
				Doc: "Longest wait for one etcd request; a commit timing out fails its commands with the outcome unknown."},
			{Name: "tls_cert", Type: TypePath, OnlyWhen: onEtcd, Env: true,
				Doc: "Client certificate (PEM) for TLS; TLS is used when any tls_ option is set."},
			{Name: "tls_key", Type: TypePath, OnlyWhen: onEtcd, Env: true, Doc: "Key of tls_cert (PEM)."},
			{Name: "tls_ca", Type: TypePath, OnlyWhen: onEtcd, Env: true, Doc: "CA bundle (PEM) verifying the cluster's certificates."},
			{Name: "max_txn_ops", Type: TypeInt, Default: "128", OnlyWhen: onEtcd,
				Doc: "The cluster's --max-txn-ops: a command needing more writes in one transaction fails on err."},
			{Name: "max_request_bytes", Type: TypeByteSize, Default: "1536KiB", OnlyWhen: onEtcd,
				Doc: "The cluster's --max-request-bytes: a command whose writes are larger fails on err."},
			{Name: "max_key_length", Type: TypeInt, Default: itoa(kv.DefaultMaxKeyLength), Doc: "Longest key, in characters."},
			{Name: "max_value_bytes", Type: TypeByteSize, Default: "4MiB", Doc: "Largest value, measured as canonical JSON."},
			{Name: "max_get_all", Type: TypeInt, Default: itoa(kv.DefaultMaxGetAll), Doc: "Most entries one get_all may return."},
			{Name: "max_scan", Type: TypeInt, Default: itoa(kv.DefaultMaxScan), Doc: "Default and highest limit of scan and keys."},
			{Name: "max_result_bytes", Type: TypeByteSize, Default: fmt.Sprintf("%dMiB", kv.DefaultMaxResultBytes>>20), Positive: true,
				Doc: "Budget of one event in bytes read from the store (values and keys returned, summed over a batch or a script run); an event needing more fails on err with budget exceeded and changes nothing."},
			{Name: "max_keys_visited", Type: TypeInt, Default: itoa(kv.DefaultMaxKeysVisited), Positive: true,
				Doc: "Budget of one event in keys visited (point reads and every record a scan, count, keys, get_all or clear steps over, summed over a batch or a script run); bounds how long one event holds the store. An event needing more fails on err with budget exceeded and changes nothing."},
			{Name: "reclaim_interval", Type: TypeDuration, Default: kv.DefaultReclaimInterval.String(),
				Doc: "How often expired keys are deleted in the background."},
			{Name: "idem_retention", Type: TypeDuration, Default: kv.DefaultIdemRetention.String(),
				Doc: "How long the idempotency key (`idem`) of a write command is remembered; must outlast the source's longest redelivery delay."},
			{Name: "idem_from", Type: TypeString,
				Doc: "Path in the event's meta (e.g. `message_id`, set by bus sources) giving every write command without `idem` its idempotency key; a write lacking it is refused."},
			{Name: "optimistic_scripts", Type: TypeBool, Default: "false",
				Doc: "Lua nodes naming this connector run their scripts first outside the store's writer, which then only checks what they read and applies what they wrote (a script whose reads changed runs again in the writer). Helps when several flows share a busy store; a single flow is faster without it (see docs/lua.md)."},
		},
		Ports: StaticPorts(kv.Ports()...),
		Build: func(ctx context.Context, env *BuildEnv, c *Config) (Component, error) {
			conn, err := openKV(ctx, env, c)
			if err != nil {
				return Component{}, err
			}
			return Component{Processor: conn}, nil
		},
	}
}

// openKV opens the kv connector described by the kv fields of c (backend,
// dir or etcd options, namespace, sync and limits), sharing the store with
// the other connectors of the process through env.Options.Stores (one per
// directory) or env.Options.EtcdStores (one per endpoints and prefix).
func openKV(ctx context.Context, env *BuildEnv, c *Config) (*kv.Connector, error) {
	ns := c.String("namespace")
	if ns == "" && env.Flow != nil {
		ns = env.Flow.Name
	}
	backend, where, err := openBackend(ctx, env, c)
	if err != nil {
		return nil, err
	}
	conn, err := kv.New(backend, kv.Options{
		Namespace:       ns,
		MaxKeyLength:    c.Int("max_key_length"),
		MaxValueBytes:   int(min(c.ByteSize("max_value_bytes"), 1<<40)),
		MaxGetAll:       c.Int("max_get_all"),
		MaxScan:         c.Int("max_scan"),
		MaxResultBytes:  int(min(c.ByteSize("max_result_bytes"), 1<<40)),
		MaxKeysVisited:  c.Int("max_keys_visited"),
		ReclaimInterval: c.Duration("reclaim_interval"),
		IdemRetention:   c.Duration("idem_retention"),
		IdemFrom:        c.String("idem_from"),
		Optimistic:      c.Bool("optimistic_scripts"),
		Logger:          env.Options.Logger,
		OnCommands:      env.Options.KVCommands,
	})
	if err != nil {
		_ = backend.Close()
		return nil, fmt.Errorf("store %s: %w", where, err)
	}
	return conn, nil
}

// openBackend opens (or shares) the store c names and says where it is.
func openBackend(ctx context.Context, env *BuildEnv, c *Config) (kv.Backend, string, error) {
	if c.String("backend") == backendEtcd {
		o := etcdstore.Options{
			Endpoints:       c.Strings("endpoints"),
			Prefix:          c.String("prefix"),
			DialTimeout:     c.Duration("dial_timeout"),
			RequestTimeout:  c.Duration("request_timeout"),
			CertFile:        c.String("tls_cert"),
			KeyFile:         c.String("tls_key"),
			CAFile:          c.String("tls_ca"),
			MaxTxnOps:       c.Int("max_txn_ops"),
			MaxRequestBytes: int(min(c.ByteSize("max_request_bytes"), 1<<40)),
		}
		b, err := env.Options.EtcdStores.Open(ctx, o)
		return b, fmt.Sprintf("etcd %s prefix %q", strings.Join(o.Endpoints, ","), o.Prefix), err
	}
	dir := c.String("dir")
	b, err := env.Options.Stores.Open(dir, pebblestore.Options{
		NoSync:   !c.Bool("sync"),
		MaxBatch: c.Int("max_batch"),
		MaxDelay: c.Duration("max_delay"),
		Logger:   env.Options.Logger,

		RowCacheBytes: rowCacheBytes(c.ByteSize("row_cache")),
	})
	return b, strconv.Quote(dir), err
}

// rowCacheBytes maps the row_cache option, where 0 disables the cache, to
// pebblestore.Options.RowCacheBytes, where 0 means the default.
func rowCacheBytes(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

// busMode tells a bus connector's role from its mode option.
func busMode(c *Config) Kind {
	if c.String("mode") == "read" {
		return KindSource
	}
	return KindSink
}

func busPorts(c *Config) []string {
	if busMode(c) == KindSource {
		return bus.Ports()
	}
	return nil
}

// busSourceFields are the delivery options shared by the bus sources.
func busSourceFields() []Field {
	itoa := strconv.Itoa
	return []Field{
		{Name: "window", Type: TypeInt, Default: itoa(bus.DefaultWindow),
			Doc: "read: most messages emitted, then acknowledged, together once the flow has handled them."},
		{Name: "linger", Type: TypeDuration, Default: bus.DefaultLinger.String(),
			Doc: "read: how long a window waits for one more message before it is processed."},
		{Name: "max_deliveries", Type: TypeInt, Default: itoa(bus.DefaultMaxDeliveries),
			Doc: "read: deliveries after which a message that still fails goes to the dead-letter topic; a message the broker " +
				"delivers more often (the process died handling it) is dead-lettered on arrival, before it is processed again."},
		{Name: "dead_letter", Type: TypeString,
			Doc: "read: topic receiving failed messages with metadata `error`; default the topic + `" + bus.DeadLetterSuffix + "`."},
	}
}

func busSourceOptions(env *BuildEnv, c *Config) bus.SourceOptions {
	return bus.SourceOptions{
		Name:          c.Node,
		Window:        c.Int("window"),
		Linger:        c.Duration("linger"),
		MaxDeliveries: c.Int("max_deliveries"),
		DeadLetter:    c.String("dead_letter"),
		Logger:        env.Options.Logger,
	}
}

func busModeField() Field {
	return Field{Name: "mode", Type: TypeEnum, Required: true, Enum: []string{"read", "write"},
		Doc: "read: a source consuming the topic; write: a sink publishing to it."}
}

func gochannelSpec() Spec {
	return Spec{
		Type:   "gochannel",
		Kind:   KindSink,
		KindOf: busMode,
		Summary: "The in-process message bus (watermill gochannel) shared by the flows of one process: `mode: read` " +
			"consumes a topic with at-least-once delivery (see docs/bus.md), `mode: write` publishes every event it receives. " +
			"Nothing is persisted: messages published while no flow reads the topic are dropped.",
		Fields: append([]Field{
			busModeField(),
			{Name: "topic", Aliases: []string{"subject"}, Type: TypeString, Required: true, Doc: "The topic."},
		}, busSourceFields()...),
		Ports:    busPorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Build: func(ctx context.Context, env *BuildEnv, c *Config) (Component, error) {
			local := env.Options.Local
			if busMode(c) == KindSink {
				s, err := bus.NewSink(local, bus.SinkOptions{Name: c.Node, Topic: c.String("topic")})
				return Component{Processor: s}, err
			}
			if env.Graph == nil {
				return Component{}, errors.New("a bus source needs the graph it feeds")
			}
			o := busSourceOptions(env, c)
			o.Topic = c.String("topic")
			s, err := bus.NewSource(ctx, local, local, env.Graph, o)
			return Component{Source: s}, err
		},
	}
}

func natsSpec() Spec {
	return Spec{
		Type:   "nats",
		Kind:   KindSink,
		KindOf: busMode,
		Summary: "NATS JetStream through watermill: `mode: read` consumes a subject through a durable consumer with " +
			"at-least-once delivery, acknowledging messages once the flow has handled them, redelivering failed ones and " +
			"dead-lettering those that keep failing (see docs/bus.md); `mode: write` publishes every event it receives and " +
			"waits for the broker to store it. Streams and the consumer are created when missing.",
		Fields: append([]Field{
			busModeField(),
			{Name: "url", Type: TypeString, Default: bus.DefaultNATSURL, Env: true, Doc: "The broker's address."},
			{Name: "subject", Aliases: []string{"topic"}, Type: TypeString, Required: true, Doc: "The subject."},
			{Name: "stream", Type: TypeString,
				Doc: "JetStream stream of the subject; default the stream capturing it, else one named after it (`.` → `_`) is created."},
			{Name: "durable", Aliases: []string{"queue"}, Type: TypeString,
				Doc: "read: durable consumer and queue group; processes sharing it share the messages. Default FLOW_NODE."},
			{Name: "ack_wait", Type: TypeDuration, Default: bus.DefaultAckWait.String(),
				Doc: "read: how long the broker waits for an ack before redelivering (after a crash, too)."},
			{Name: "connect_timeout", Type: TypeDuration, Default: bus.DefaultConnectTimeout.String(),
				Doc: "How long connecting, and draining at shutdown, may take."},
		}, busSourceFields()...),
		Ports:    busPorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Build: func(ctx context.Context, env *BuildEnv, c *Config) (Component, error) {
			no := bus.NATSOptions{
				URL:            c.String("url"),
				Subject:        c.String("subject"),
				Stream:         c.String("stream"),
				Durable:        c.String("durable"),
				AckWait:        c.Duration("ack_wait"),
				ConnectTimeout: c.Duration("connect_timeout"),
				Logger:         env.Options.Logger,
			}
			if busMode(c) == KindSink {
				s, err := bus.NewNATSSink(ctx, c.Node, no)
				return Component{Processor: s}, err
			}
			if env.Graph == nil {
				return Component{}, errors.New("a bus source needs the graph it feeds")
			}
			if no.Durable == "" {
				flow := "flowrun"
				if env.Flow != nil {
					flow = env.Flow.Name
				}
				no.Durable = bus.StreamName(flow + "_" + c.Node)
			}
			s, err := bus.NewNATSSource(ctx, env.Graph, bus.NATSSourceOptions{NATSOptions: no, Source: busSourceOptions(env, c)})
			return Component{Source: s}, err
		},
	}
}
