package redisstream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// Spec declares the redis_streams connector.
func Spec() component.Spec {
	read := &component.When{Field: "mode", Values: []string{"read"}}
	write := &component.When{Field: "mode", Values: []string{"write"}}
	return component.Spec{
		Type:   "redis_streams",
		Kind:   component.KindSink,
		KindOf: bus.ModeKind,
		Summary: "Redis Streams: `mode: read` consumes a stream through a consumer group (created when missing) with " +
			"at-least-once delivery, acknowledging each entry (XACK) once the flow has handled it, retrying failed ones, " +
			"taking over those of dead consumers after `claim_idle` and dead-lettering those that keep failing " +
			"(see docs/bus.md); `mode: write` appends every event it receives (XADD) and waits for the reply. " +
			"Entry layout: field `data` is the payload (JSON), every other field a metadata key.",
		Fields: append(append([]component.Field{
			bus.ModeField(),
			{Name: "url", Type: component.TypeString, Default: DefaultURL,
				Doc: "The server, `redis://[user:password@]host:port[/db]` (`rediss://` for TLS); give a password as `${VAR}`."},
			{Name: "stream", Aliases: []string{"topic"}, Type: component.TypeString, Required: true, Doc: "The stream's key."},
			{Name: "group", Type: component.TypeString, OnlyWhen: read,
				Doc: "read: consumer group, created from the stream's first entry when missing; processes in one group share its entries. Default FLOW_NODE."},
			{Name: "consumer", Type: component.TypeString, OnlyWhen: read,
				Doc: "read: this process's consumer name in the group: the same across restarts (a restarted consumer first reads back " +
					"what it had not acknowledged), different for each process of the group. Default the host name."},
			{Name: "claim_idle", Type: component.TypeDuration, Default: DefaultClaimIdle.String(), Min: "10ms", OnlyWhen: read,
				Doc: "read: how long a consumer must be unresponsive before another consumer of the group takes over its unacknowledged entries " +
					"(XAUTOCLAIM, checked every half of it, at most every 5s). A live consumer keeps its entries, however long they take, " +
					"by resetting their idle time every half of it; keep it well above the pauses a loaded machine makes."},
			{Name: "retry_delay", Type: component.TypeDuration, Default: DefaultRetryDelay.String(), Min: "1ms", OnlyWhen: read,
				Doc: "read: how long a failed entry stays pending before its consumer claims it back (XCLAIM) and delivers it again."},
			{Name: "max_len", Type: component.TypeInt, Default: "0", Min: "0", OnlyWhen: write,
				Doc: "write: trim the stream to about this many entries on every append (`XADD MAXLEN ~`); 0 keeps every entry."},
			{Name: "dial_timeout", Type: component.TypeDuration, Default: DefaultDialTimeout.String(), Min: "1ms",
				Doc: "How long connecting, and sending the last acks at shutdown, may take."},
			{Name: "tls_ca", Type: component.TypePath, Doc: "PEM file of the CA that signed the server's certificate; turns TLS on."},
			{Name: "tls_cert", Type: component.TypePath, Doc: "PEM file of the client certificate (with `tls_key`); turns TLS on."},
			{Name: "tls_key", Type: component.TypePath, Doc: "PEM file of the client key (with `tls_cert`)."},
			{Name: "tls_insecure_skip_verify", Type: component.TypeBool, Default: "false",
				Doc: "Accept any server certificate (tests only); turns TLS on."},
		}, append(sourceFields(), bus.WindowsInFlightField())...), bus.ReconnectFields()...),
		Ports:    bus.ModePorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Check:    check,
		Build:    build,
	}
}

// check refuses what the server would: a TLS key without its certificate.
func check(c *component.Config) error {
	if (c.String("tls_cert") == "") != (c.String("tls_key") == "") {
		return component.OptionErr("tls_cert", fmt.Errorf("tls_cert and tls_key go together"))
	}
	if c.Has("linger") {
		return component.OptionErr("linger", ErrLinger)
	}
	if u := c.String("url"); u != "" && !strings.HasPrefix(u, "redis://") && !strings.HasPrefix(u, "rediss://") && !strings.HasPrefix(u, "unix://") {
		return component.OptionErr("url", fmt.Errorf("%q: want redis://host:port, rediss://host:port or unix:///path", (&Options{URL: u}).redacted()))
	}
	return nil
}

// ErrLinger refuses linger, which a redis_streams connector would not
// use.
var ErrLinger = errors.New("a redis_streams source emits the entries of each read together as they arrive and never waits for more: " +
	"bound a batch with window")

// sourceFields are bus.SourceFields as a redis_streams source reads
// them: each read is emitted as it arrives, so linger is refused (check).
func sourceFields() []component.Field {
	fs := bus.SourceFields()
	for i := range fs {
		switch fs[i].Name {
		case "window":
			fs[i].Doc = "read: most entries emitted together (the entries of one read, cut at `window`); also the most held unacknowledged, " +
				"times `windows_in_flight`. Each entry is acknowledged on its own as soon as everything derived from it is done."
		case "linger":
			fs[i].Doc = "refused: a redis_streams source emits the entries of each read together as they arrive and never waits for more."
		}
	}
	return fs
}

func build(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
	o := Options{
		URL:                   c.String("url"),
		Stream:                c.String("stream"),
		Group:                 c.String("group"),
		Consumer:              c.String("consumer"),
		ClaimIdle:             c.Duration("claim_idle"),
		RetryDelay:            c.Duration("retry_delay"),
		MaxLen:                int64(c.Int("max_len")),
		DialTimeout:           c.Duration("dial_timeout"),
		TLSCA:                 c.String("tls_ca"),
		TLSCert:               c.String("tls_cert"),
		TLSKey:                c.String("tls_key"),
		TLSInsecureSkipVerify: c.Bool("tls_insecure_skip_verify"),
		Logger:                env.Logger,
	}
	health := component.HealthOf(env.Resources)
	if bus.ModeKind(c) == component.KindSink {
		s, err := NewSink(ctx, c.Node, o, bus.ReconnectOptions(c), health)
		return component.Component{Processor: s}, err
	}
	if env.Graph == nil {
		return component.Component{}, bus.ErrNoGraph
	}
	if o.Group == "" {
		flow := env.Flow
		if flow == "" {
			flow = "flowrun"
		}
		o.Group = flow + "_" + c.Node
	}
	if o.Consumer == "" {
		o.Consumer = defaultConsumer(os.Hostname)
	}
	s, err := NewSource(ctx, env.Graph, SourceOptions{
		Options:   o,
		Source:    bus.SourceOptionsFrom(env, c),
		Reconnect: bus.ReconnectOptions(c),
		Health:    health,
	})
	return component.Component{Source: s}, err
}
