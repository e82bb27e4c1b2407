package kafka

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// Spec declares the kafka connector: a consumer-group source (mode read)
// or an idempotent producer sink (mode write) on franz-go.
func Spec() component.Spec {
	return component.Spec{
		Type:   "kafka",
		Kind:   component.KindSink,
		KindOf: bus.ModeKind,
		Summary: "Apache Kafka through franz-go: `mode: read` consumes a topic in a consumer group with at-least-once delivery, " +
			"committing each partition's offset only below records the flow has finished, retrying failed records in place and " +
			"dead-lettering those that keep failing (see docs/bus.md); `mode: write` produces every event it receives with " +
			"acks=all and the idempotent producer, waiting until the brokers store it. `meta.message_id` is `TOPIC/PARTITION/OFFSET`.",
		Fields: append([]component.Field{
			bus.ModeField(),
			{Name: "brokers", Type: component.TypeStrings, Default: DefaultBroker, Doc: "Seed brokers, `host:port`."},
			{Name: "topic", Type: component.TypeString, Required: true, Doc: "The topic."},
			{Name: "group", Type: component.TypeString,
				Doc: "read: consumer group; processes sharing it share the topic's partitions. Default FLOW_NODE."},
			{Name: "start", Type: component.TypeEnum, Enum: []string{StartEarliest, StartLatest}, Default: StartEarliest,
				Doc: "read: where a group with no committed offset starts in each partition."},
			{Name: "attempts_dir", Type: component.TypePath, OnlyWhen: &component.When{Field: "mode", Values: []string{"read"}},
				Doc: "read: directory of the source's durable attempt record (one small file per group and topic, written before each fetch is handed to the flow " +
					"when a partition's lowest unfinished offset or its count changes): a record whose handling began `max_deliveries` times " +
					"without finishing (the process died handling it) is dead-lettered without being processed at the next start. Unset: " +
					"such a record is read again on every restart (see docs/bus.md)."},
			{Name: "commit_interval", Type: component.TypeDuration, Default: DefaultCommitInterval.String(), Min: "1ms",
				Doc: "read: how often finished offsets are committed (also on revoke and at shutdown); after a crash, records finished since the last commit are read again."},
			{Name: "revoke_wait", Type: component.TypeDuration, Default: DefaultRevokeWait.String(), Min: "1ms",
				Doc: "read: how long a rebalance waits for the in-flight records of revoked partitions before committing and abandoning the rest to the next owner."},
			{Name: "session_timeout", Type: component.TypeDuration, Default: DefaultSessionTimeout.String(), Min: "1ms",
				Doc: "read: how long the group waits for a silent member (a killed process) before its partitions go to others; the broker bounds it."},
			{Name: "max_in_flight", Type: component.TypeInt, Default: strconv.Itoa(DefaultMaxInFlight), Min: "1",
				Doc: "read: most records handed to the flow and not yet finished, across partitions (`window` is how many are emitted together)."},
			{Name: "key", Type: component.TypeExpr,
				Doc: "write: expression giving the record key (string, number or boolean; null or missing: no key), e.g. `data.user_id`."},
			{Name: "connect_timeout", Type: component.TypeDuration, Default: DefaultConnectTimeout.String(), Min: "1ms",
				Doc: "How long the first contact with the brokers, and a commit, may take."},
			{Name: "publish_timeout", Type: component.TypeDuration, Default: DefaultPublishTimeout.String(), Min: "1ms",
				Doc: "How long producing one record (a result, a dead letter) may take, retries included."},
			{Name: "sasl_mechanism", Type: component.TypeEnum, Enum: []string{SASLPlain, SASLScramSHA256, SASLScramSHA512},
				Doc: "SASL authentication, with sasl_user and sasl_password; none when unset. Use PLAIN only over TLS."},
			{Name: "sasl_user", Type: component.TypeString, Doc: "SASL user name."},
			{Name: "sasl_password", Type: component.TypeString, Doc: "SASL password: give it as `${VAR}` so it stays out of the flow file; it is never logged."},
			{Name: "tls_ca", Type: component.TypePath, Doc: "PEM file of the CAs to trust; setting any tls_ option connects with TLS."},
			{Name: "tls_cert", Type: component.TypePath, Doc: "PEM client certificate (with tls_key)."},
			{Name: "tls_key", Type: component.TypePath, Doc: "PEM client key (with tls_cert)."},
			{Name: "tls_insecure_skip_verify", Type: component.TypeBool, Default: "false", Doc: "Do not verify the brokers' certificates (tests only)."},
		}, append(sourceFields(), bus.ReconnectFields()...)...),
		Ports:    bus.ModePorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Check:    check,
		Build:    build,
	}
}

// check refuses options the brokers would refuse later.
func check(c *component.Config) error {
	for _, b := range c.Strings("brokers") {
		if !strings.Contains(b, ":") {
			return component.OptionErr("brokers", errors.New("want host:port, got "+b))
		}
	}
	_, err := bus.TLSOptions(c).Config()
	if err != nil {
		return component.OptionErr("tls", err)
	}
	if _, err := SASLMechanism(c.String("sasl_mechanism"), c.String("sasl_user"), c.String("sasl_password")); err != nil {
		return component.OptionErr("sasl_mechanism", err)
	}
	if c.Has("linger") && bus.ModeKind(c) != component.KindSink {
		return component.OptionErr("linger", ErrLingerOnRead)
	}
	return nil
}

// ErrLingerOnRead refuses linger on a kafka source, where it would have
// no effect.
var ErrLingerOnRead = errors.New("a kafka source emits each fetch as it arrives and never waits for more: " +
	"linger is the producer's (mode: write); bound a batch with window")

func build(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
	tlsConf, err := bus.TLSOptions(c).Config()
	if err != nil {
		return component.Component{}, err
	}
	mech, err := SASLMechanism(c.String("sasl_mechanism"), c.String("sasl_user"), c.String("sasl_password"))
	if err != nil {
		return component.Component{}, err
	}
	o := Options{
		Name:           c.Node,
		SASL:           mech,
		Brokers:        c.Strings("brokers"),
		Topic:          c.String("topic"),
		Group:          c.String("group"),
		Start:          c.String("start"),
		CommitInterval: c.Duration("commit_interval"),
		RevokeWait:     c.Duration("revoke_wait"),
		MaxInFlight:    c.Int("max_in_flight"),
		SessionTimeout: c.Duration("session_timeout"),
		ConnectTimeout: c.Duration("connect_timeout"),
		PublishTimeout: c.Duration("publish_timeout"),
		TLS:            tlsConf,
		Logger:         env.Logger,
	}
	r := bus.ReconnectOptions(c)
	health := component.HealthOf(env.Resources)
	if bus.ModeKind(c) == component.KindSink {
		linger := c.Duration("linger")
		so := SinkOptions{Options: o, Key: c.String("key"), Reconnect: &r, Health: health, Linger: &linger}
		so.Expr.Now = component.Clock(env.Resources)
		s, err := NewSink(so)
		if err != nil {
			return component.Component{}, err
		}
		return component.Component{Processor: s}, nil
	}
	if env.Graph == nil {
		return component.Component{}, errors.New("a kafka source needs the graph it feeds")
	}
	if o.Group == "" {
		flow := env.Flow
		if flow == "" {
			flow = "flowrun"
		}
		o.Group = flow + "_" + c.Node
	}
	s, err := NewSource(ctx, env.Graph, SourceOptions{Options: o, Source: bus.SourceOptionsFrom(env, c), Reconnect: r, Health: health,
		AttemptsDir: c.String("attempts_dir")})
	if err != nil {
		return component.Component{}, err
	}
	return component.Component{Source: s}, nil
}

// sourceFields are bus.SourceFields as a kafka source reads them: each
// fetch is emitted as it arrives, and deliveries are counted in the
// process. linger is the sink's producer linger; a source refuses it
// (check), as it would have no effect.
func sourceFields() []component.Field {
	fs := bus.SourceFields()
	for i := range fs {
		switch fs[i].Name {
		case "window":
			fs[i].Doc = "read: most records emitted together (one fetch of the client, cut at `window`); each record is settled on its own as soon as everything derived from it is done."
		case "max_deliveries":
			fs[i].Doc = "read: deliveries after which a record that still fails goes to the dead-letter topic; counted in the process (Kafka keeps no count), so a record that kills the process is read again on every restart, unless `attempts_dir` is set."
		case "linger":
			fs[i].Default, fs[i].Min, fs[i].Max = DefaultLinger.String(), "0s", MaxLinger.String()
			fs[i].Doc = "write: how long the producer lets a partition's records wait for more before it sends them " +
				"(franz-go's ProducerLinger, Kafka's `linger.ms`; at most 1m). The sink produces each slice of events together and waits for it, " +
				"so the slice is already the batch (size it with the upstream `window`): a linger only delays each slice, and a graceful stop, by up to its length. " +
				"read: refused, a kafka source emits each fetch as it arrives and never waits for more."
		}
	}
	return fs
}
