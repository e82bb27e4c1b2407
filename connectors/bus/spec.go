package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/operators/expr"
)

// This file declares the bus connectors for flow files: gochannel and
// nats. A program registering neither does not link NATS.

// localKey holds the in-process bus of the gochannel connectors of a build.
var localKey = component.NewKey[*gochannel.GoChannel]("bus.Local")

// UseLocal makes the gochannel connectors built with res use local: pass
// the same bus to every flow of a process that should exchange messages.
// Without it each build gets a bus of its own.
func UseLocal(res *component.Resources, local *gochannel.GoChannel) { localKey.Put(res, local) }

// ModeKind tells a bus connector's role from its mode option: a source for
// "read", a sink otherwise.
func ModeKind(c *component.Config) component.Kind {
	if c.String("mode") == "read" {
		return component.KindSource
	}
	return component.KindSink
}

// ModePorts are the ports of a bus connector: those of a Source in mode
// read, none otherwise.
func ModePorts(c *component.Config) []string {
	if ModeKind(c) == component.KindSource {
		return Ports()
	}
	return nil
}

// SourceFields are the delivery options shared by the bus sources;
// SourceOptions.EnsureDefaults takes a zero for the default, so each has a
// minimum.
func SourceFields() []component.Field {
	itoa := strconv.Itoa
	return []component.Field{
		{Name: "window", Type: component.TypeInt, Default: itoa(DefaultWindow), Min: "1",
			Doc: "read: most messages emitted together as one batch; also the most held unacknowledged, times `windows_in_flight` where the source has it. " +
				"Each message is acknowledged on its own as soon as everything derived from it is done."},
		{Name: "linger", Type: component.TypeDuration, Default: DefaultLinger.String(), Min: "1µs",
			Doc: "read: how long a window waits for one more message before it is processed."},
		{Name: "max_deliveries", Type: component.TypeInt, Default: itoa(DefaultMaxDeliveries), Min: "1",
			Doc: "read: deliveries after which a message that still fails goes to the dead-letter topic; a message the broker " +
				"delivers more often (the process died handling it) is dead-lettered on arrival, before it is processed again."},
		{Name: "dead_letter", Type: component.TypeString,
			Doc: "read: topic receiving failed messages with metadata `error`; default the topic + `" + DeadLetterSuffix + "`."},
		{Name: "fail_on", Type: component.TypeEnum, Enum: []string{FailOnUnlinkedErr, FailOnErr}, Default: FailOnUnlinkedErr,
			Doc: "read: which events fail the message they derive from: `" + FailOnUnlinkedErr + "`, one on an `err` port with no link " +
				"(a linked `err` port handles the failure); `" + FailOnErr + "`, one on any `err` port. A failed message is redelivered, then dead-lettered."},
		{Name: "fail_sinks", Type: component.TypeStrings,
			Doc: "read: sinks of the flow (a dead-letter file, say) whose receiving an event derived from a message fails the message too."},
	}
}

// WindowsInFlightField is the windows_in_flight option of the bus sources
// whose subscriber has an in-flight limit of its own (SourceOptions
// WindowsInFlight); SourceOptionsFrom reads it.
func WindowsInFlightField() component.Field {
	return component.Field{Name: "windows_in_flight", Type: component.TypeInt, Default: strconv.Itoa(DefaultWindowsInFlight), Min: "1",
		Doc: "read: windows of messages the broker may hand the source unacknowledged (`window` × `windows_in_flight` in all): " +
			"the next windows are read and processed while earlier ones are synced and acknowledged. Each message is still " +
			"acknowledged only once it is done; more in flight is more throughput, and more messages redelivered after a crash."}
}

// SourceOptionsFrom reads the SourceFields of c into SourceOptions named
// after the node (Topic is left to the caller).
func SourceOptionsFrom(env *component.Env, c *component.Config) SourceOptions {
	return SourceOptions{
		Name:            c.Node,
		Window:          c.Int("window"),
		WindowsInFlight: c.Int("windows_in_flight"),
		Linger:          c.Duration("linger"),
		MaxDeliveries:   c.Int("max_deliveries"),
		DeadLetter:      c.String("dead_letter"),
		FailOn:          c.String("fail_on"),
		FailSinks:       c.Strings("fail_sinks"),
		Logger:          env.Logger,
	}
}

// ReconnectFields are the options of Reconnect, for the spec of every bus
// connector.
func ReconnectFields() []component.Field {
	return []component.Field{
		{Name: "reconnect_initial", Type: component.TypeDuration, Default: DefaultReconnectInitial.String(), Min: "1ms",
			Doc: "Longest first wait before connecting again when the broker is unreachable (at start or later); each further wait doubles, with full jitter."},
		{Name: "reconnect_max", Type: component.TypeDuration, Default: DefaultReconnectMax.String(), Min: "1ms",
			Doc: "Longest wait between connection attempts. While disconnected the flow pauses and `/ready` answers 503."},
		{Name: "fail_fast", Type: component.TypeBool, Default: "false",
			Doc: "Fail instead of retrying: the flow does not start when the broker is unreachable, and fails when it goes away."},
	}
}

// ReconnectOptions reads the ReconnectFields of c.
func ReconnectOptions(c *component.Config) Reconnect {
	return Reconnect{
		Initial:  c.Duration("reconnect_initial"),
		Max:      c.Duration("reconnect_max"),
		FailFast: c.Bool("fail_fast"),
	}
}

// ModeField is the mode option of a bus connector: read or write.
func ModeField() component.Field {
	return component.Field{Name: "mode", Type: component.TypeEnum, Required: true, Enum: []string{"read", "write"},
		Doc: "read: a source consuming the topic; write: a sink publishing to it."}
}

// ErrNoGraph reports a bus source built without the graph it feeds.
var ErrNoGraph = errors.New("a bus source needs the graph it feeds")

// GoChannelSpec declares the gochannel connector: the in-process bus of
// Env.Resources (see UseLocal).
func GoChannelSpec() component.Spec {
	return component.Spec{
		Type:   "gochannel",
		Kind:   component.KindSink,
		KindOf: ModeKind,
		Summary: "The in-process message bus (watermill gochannel) shared by the flows of one process: `mode: read` " +
			"consumes a topic with at-least-once delivery (see docs/bus.md), `mode: write` publishes every event it receives. " +
			"Nothing is persisted: messages published while no flow reads the topic are dropped.",
		Fields: append([]component.Field{
			ModeField(),
			{Name: "topic", Aliases: []string{"subject"}, Type: component.TypeString, Required: true, Doc: "The topic."},
		}, SourceFields()...),
		Ports:    ModePorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Build: func(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			local := localKey.Shared(env.Resources, func() *gochannel.GoChannel { return NewLocal(env.Logger) })
			if ModeKind(c) == component.KindSink {
				s, err := NewSink(local, SinkOptions{Name: c.Node, Topic: c.String("topic")})
				return component.Component{Processor: s}, err
			}
			if env.Graph == nil {
				return component.Component{}, ErrNoGraph
			}
			o := SourceOptionsFrom(env, c)
			o.Topic = c.String("topic")
			s, err := NewSource(ctx, local, local, env.Graph, o)
			return component.Component{Source: s}, err
		},
	}
}

// NATSSpec declares the nats connector: NATS JetStream.
func NATSSpec() component.Spec {
	return component.Spec{
		Type:   "nats",
		Kind:   component.KindSink,
		KindOf: ModeKind,
		Summary: "NATS JetStream through watermill: `mode: read` consumes a subject through a durable consumer with " +
			"at-least-once delivery, acknowledging messages once the flow has handled them, redelivering failed ones and " +
			"dead-lettering those that keep failing (see docs/bus.md); `mode: write` publishes every event it receives and " +
			"waits for the broker to store it. Streams and the consumer are created when missing. `partitions_of` (read) and " +
			"`partitions` (write) serve a partitioned flow: a subject per partition (see docs/bus.md, \"Partitioned flows\").",
		Fields: append([]component.Field{
			ModeField(),
			{Name: "url", Type: component.TypeString, Default: DefaultNATSURL, Doc: "The broker's address."},
			{Name: "subject", Aliases: []string{"topic"}, Type: component.TypeString, Required: true, Doc: "The subject."},
			{Name: "stream", Type: component.TypeString,
				Doc: "JetStream stream of the subject; default the stream capturing it, else one named after it (`.` → `_`) is created."},
			{Name: "durable", Aliases: []string{"queue"}, Type: component.TypeString,
				Doc: "read: durable consumer and queue group; processes sharing it share the messages. Default FLOW_NODE."},
			{Name: "ack_wait", Type: component.TypeDuration, Default: DefaultAckWait.String(), Min: "1ms",
				Doc: "read: how long the broker waits for an ack before redelivering (after a crash, too)."},
			{Name: "connect_timeout", Type: component.TypeDuration, Default: DefaultConnectTimeout.String(), Min: "1ms",
				Doc: "How long connecting, and draining at shutdown, may take."},
			{Name: "partitions_of", Type: component.TypeNode, NodeType: "kv", OnlyWhen: &component.When{Field: "mode", Values: []string{"read"}},
				Doc: "read: the partitioned kv connector of this flow whose partitions this source feeds: instead of `subject` it consumes " +
					"`SUBJECT.p.NNN` for each partition NNN the connector serves, through the durable consumer `DURABLE_pNNN`, in stream order, " +
					"while it serves it (see docs/bus.md)."},
			{Name: "partitions", Type: component.TypeInt, Min: "1", Max: strconv.Itoa(partition.MaxCount),
				OnlyWhen: &component.When{Field: "mode", Values: []string{"write"}},
				Doc: "write: publish each event to the subject of its partition, `SUBJECT.p.NNN`, NNN = xxh64(`partition_key`) mod `partitions`, " +
					"with a `Nats-Msg-Id` derived from the input message's id; must equal the kv connector's `partitions`."},
			{Name: "partition_key", Type: component.TypeExpr, OnlyWhen: &component.When{Field: "mode", Values: []string{"write"}},
				Doc: "write, with `partitions`: expression giving an event's partition key, the key its kv command will have (a string, number or boolean); " +
					"default the key of the event's kv command in `meta.kv` (a batch's first element's)."},
		}, append(ReconnectFields(), SourceFields()...)...),
		Ports:    ModePorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Check:    checkNATSNames,
		Build: func(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			no := NATSOptions{
				URL:            c.String("url"),
				Subject:        c.String("subject"),
				Stream:         c.String("stream"),
				Durable:        c.String("durable"),
				AckWait:        c.Duration("ack_wait"),
				ConnectTimeout: c.Duration("connect_timeout"),
				Logger:         env.Logger,
				Reconnect:      ReconnectOptions(c),
				Health:         component.HealthOf(env.Resources),
			}
			if ModeKind(c) == component.KindSink {
				if c.Has("partitions") {
					s, err := NewNATSPartitionedSink(ctx, c.Node, no, PartitionSinkOptions{Count: c.Int("partitions"),
						Key: c.String("partition_key"), Expr: expr.Options{Now: component.Clock(env.Resources)}})
					return component.Component{Processor: s}, err
				}
				s, err := NewNATSSink(ctx, c.Node, no)
				return component.Component{Processor: s}, err
			}
			if env.Graph == nil {
				return component.Component{}, ErrNoGraph
			}
			var board *partition.Board
			if of := c.String("partitions_of"); of != "" {
				// The kv connector named is built before this source (a
				// node option), and a partitioned one declares its count
				// when it is built.
				board = partition.BoardOf(env.Resources, of)
				if board.Count() == 0 {
					return component.Component{}, component.OptionErr("partitions_of",
						fmt.Errorf("%w: kv connector %q declares no partitions (set `partitions` on it, or consume `subject` without partitions_of)", ErrNotPartitioned, of))
				}
			}
			if no.Durable == "" {
				flow := env.Flow
				if flow == "" {
					flow = "flowrun"
				}
				no.Durable = StreamName(flow + "_" + c.Node)
			}
			s, err := NewNATSSource(ctx, env.Graph, NATSSourceOptions{NATSOptions: no, Source: SourceOptionsFrom(env, c), Partitions: board})
			return component.Component{Source: s}, err
		},
	}
}

// natsNameChars are the characters JetStream refuses in stream and
// consumer names (whitespace, '.', the wildcards, path separators): the
// ones StreamName replaces.
const natsNameChars = ". \t\r\n*>/\\"

// checkNATSNames refuses a stream or durable name the broker would refuse
// once connected, and partition_key without partitions.
func checkNATSNames(c *component.Config) error {
	if c.Has("partition_key") && !c.Has("partitions") && ModeKind(c) == component.KindSink {
		return component.OptionErr("partition_key", errors.New("has no effect without `partitions`: set the partition count too"))
	}
	for _, opt := range []string{"stream", "durable"} {
		if v := c.String(opt); strings.ContainsAny(v, natsNameChars) {
			return component.OptionErr(opt, fmt.Errorf("%q is not a valid JetStream name: no whitespace, '.', '*', '>', '/' or '\\' (e.g. %q)", v, StreamName(v)))
		}
	}
	return nil
}
