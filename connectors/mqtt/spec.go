package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// Spec declares the mqtt connector.
func Spec() component.Spec {
	read := &component.When{Field: "mode", Values: []string{"read"}}
	write := &component.When{Field: "mode", Values: []string{"write"}}
	fields := []component.Field{
		bus.ModeField(),
		{Name: "url", Type: component.TypeString, Default: DefaultURL,
			Doc: "The broker's address: `tcp://`, `ssl://` (TLS), `ws://` or `wss://` (WebSockets with protocol 3.1.1 only)."},
		{Name: "protocol", Type: component.TypeEnum, Enum: []string{Protocol311, Protocol5}, Default: Protocol311,
			Doc: "The MQTT version: `3.1.1` (paho.mqtt.golang) or `5` (paho.golang), with the same guarantees; " +
				"with 5 a source asks for `session_expiry` and a Receive Maximum of `max_inflight`, and codec json carries meta in user properties (see docs/bus.md)."},
		{Name: "session_expiry", Type: component.TypeDuration, Default: "168h", Min: "1s", OnlyWhen: read,
			Doc: "read, protocol 5: how long the broker keeps the source's session (subscription and queued messages) after a disconnect " +
				"(MQTT 5 Session Expiry Interval, whole seconds); a flow stopped for longer loses the messages published meanwhile. " +
				"With 3.1.1 the broker decides (mosquitto `persistent_client_expiration`)."},
		{Name: "topic", Aliases: []string{"subject"}, Type: component.TypeString, Required: true,
			Doc: "read: the topic filter subscribed to (`+` matches one level, `#` the rest); write: the topic published to (no wildcards)."},
		{Name: "qos", Type: component.TypeInt, Default: strconv.Itoa(DefaultQoS), Min: "0", Max: "2",
			Doc: "read: the subscription's QoS, the highest the broker delivers with; write: the publishes' QoS. 1 or 2 for at least once; 0 is at most once (nothing acknowledged)."},
		{Name: "retain", Type: component.TypeBool, Default: "false", OnlyWhen: write,
			Doc: "write: ask the broker to keep the last message for future subscribers."},
		{Name: "codec", Type: component.TypeEnum, Enum: []string{CodecJSON, CodecEvent}, Default: CodecJSON,
			Doc: "`json`: the payload is the event's data (with protocol 3.1.1 meta is not carried, MQTT 3.1.1 has no headers; with 5 it is, in user properties); " +
				"`event`: the payload is `{\"data\": ..., \"meta\": {...}}` with `meta.message_id`, so meta and a stable id cross the broker."},
		{Name: "id_from", Type: component.TypeString, OnlyWhen: read,
			Doc: "read: where `meta.message_id` (kv's `idem_from` key) comes from: unset, the envelope's `meta.message_id` (codec event; none with codec json); " +
				"`hash`, a hash of topic and payload (identical messages share it); else a path in the data whose string or number is the id " +
				"(a message without it is dead-lettered)."},
		{Name: "max_inflight", Type: component.TypeInt, Default: strconv.Itoa(DefaultMaxInflight), Min: "1", OnlyWhen: read,
			Doc: "read: most messages being processed and not yet settled; more wait, unacknowledged. It bounds the messages processed " +
				"again after a crash (at least once); set the broker's own limit (mosquitto `max_inflight_messages`) at least this high. " +
				"With protocol 5 it is also the Receive Maximum the source asks of the broker (at most 65535)."},
		{Name: "client_id", Type: component.TypeString,
			Doc: "The MQTT client id; a source's persistent session (its subscription and queued messages) belongs to it. Default `flowrun-FLOW-NODE`."},
		{Name: "username", Type: component.TypeString, Doc: "User name, when the broker wants one; use `${VAR}`."},
		{Name: "password", Type: component.TypeString, Doc: "Password; use `${VAR}` rather than writing it in the flow."},
		{Name: "tls_ca", Type: component.TypePath, Doc: "PEM file of the CAs trusted for the broker's certificate (default the system's)."},
		{Name: "tls_cert", Type: component.TypePath, Doc: "PEM client certificate, with `tls_key`."},
		{Name: "tls_key", Type: component.TypePath, Doc: "PEM key of `tls_cert`."},
		{Name: "tls_insecure_skip_verify", Type: component.TypeBool, Default: "false",
			Doc: "Do not verify the broker's certificate (tests only)."},
		{Name: "connect_timeout", Type: component.TypeDuration, Default: DefaultConnectTimeout.String(), Min: "1ms",
			Doc: "How long connecting, subscribing and disconnecting may take."},
		{Name: "keepalive", Type: component.TypeDuration, Default: DefaultKeepAlive.String(), Min: "1s",
			Doc: "MQTT keep-alive interval: a broker that stops answering is detected within about this long."},
		{Name: "publish_timeout", Type: component.TypeDuration, Default: DefaultPublishTimeout.String(), Min: "1ms", OnlyWhen: write,
			Doc: "write: how long a publish waits for the broker's acknowledgement before it fails (and is retried); with protocol 5, also how long " +
				"a publish refused with a transient reason code (0x97 Quota exceeded, 0x89 Server busy, ...) is sent again on the connection, " +
				"after the `reconnect_*` backoff, before the sink's own retry takes over. Other refusals (0x87 Not authorized, ...) fail the event at once (see docs/bus.md)."},
	}
	for _, f := range bus.SourceFields() {
		if f.Name == "dead_letter" {
			f.Doc = "read: topic receiving failed messages (codec event, with `meta.error`); default the topic + `" + DeadLetterSuffix +
				"`; required when the topic has wildcards, and must not match it."
		}
		if f.Name == "max_deliveries" {
			f.Doc = "read: deliveries after which a message that still fails goes to the dead-letter topic. MQTT has no delivery count: " +
				"the connector counts the retries it makes, anew after a reconnect or restart, so a message that kills the process is not set aside (see docs/bus.md)."
		}
		if f.Name == "window" {
			f.Doc = "read: most messages emitted together; each is acknowledged as soon as it and the ones received before it are done. " +
				"At most `max_inflight`."
		}
		fields = append(fields, f)
	}
	fields = append(fields, bus.ReconnectFields()...)
	return component.Spec{
		Type:   "mqtt",
		Kind:   component.KindSink,
		KindOf: bus.ModeKind,
		Summary: "MQTT 3.1.1 or 5 (paho): `mode: read` subscribes to a topic filter with a persistent session (messages published while " +
			"flowrun is down are delivered at restart) and acknowledges each message once the flow has handled it, retrying failed " +
			"ones and dead-lettering those that keep failing (see docs/bus.md); `mode: write` publishes every event it receives and " +
			"waits for the broker's acknowledgement.",
		Fields:   fields,
		Ports:    bus.ModePorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Check:    check,
		Build:    build,
	}
}

// check refuses topics the broker would refuse, or that would loop.
func check(c *component.Config) error {
	topic := c.String("topic")
	if c.String("protocol") == Protocol5 {
		if _, _, err := address5(c.String("url")); err != nil {
			return component.OptionErr("url", err)
		}
		if m := c.Int("max_inflight"); m > math.MaxUint16 && bus.ModeKind(c) != component.KindSink {
			return component.OptionErr("max_inflight", fmt.Errorf("%d is more than %d, MQTT 5's largest Receive Maximum", m, math.MaxUint16))
		}
	}
	if bus.ModeKind(c) == component.KindSink {
		if err := CheckTopicName(topic); err != nil {
			return component.OptionErr("topic", err)
		}
		return nil
	}
	if err := CheckFilter(topic); err != nil {
		return component.OptionErr("topic", err)
	}
	dead := c.String("dead_letter")
	if dead == "" {
		dead = DefaultDeadLetter(topic)
	}
	if err := checkDeadLetter(topic, dead); err != nil {
		return component.OptionErr("dead_letter", err)
	}
	if w, m := c.Int("window"), c.Int("max_inflight"); w > m {
		return component.OptionErr("window", fmt.Errorf("%d is more than max_inflight %d: a window could never fill", w, m))
	}
	if (c.String("tls_cert") == "") != (c.String("tls_key") == "") {
		return component.OptionErr("tls_key", errors.New("tls_cert and tls_key go together"))
	}
	return nil
}

func options(env *component.Env, c *component.Config) (Options, error) {
	o := Options{
		URL:            c.String("url"),
		ClientID:       c.String("client_id"),
		Username:       c.String("username"),
		Password:       c.String("password"),
		ConnectTimeout: c.Duration("connect_timeout"),
		KeepAlive:      c.Duration("keepalive"),
		Logger:         env.Logger,
		Protocol:       c.String("protocol"),
		SessionExpiry:  c.Duration("session_expiry"),
	}
	if o.ClientID == "" {
		flow := env.Flow
		if flow == "" {
			flow = "flowrun"
		}
		o.ClientID = "flowrun-" + flow + "-" + c.Node
	}
	secure := false
	for _, s := range []string{"ssl://", "tls://", "mqtts://", "wss://", "tcps://"} {
		secure = secure || strings.HasPrefix(o.URL, s)
	}
	cfg, err := bus.TLSOptions(c).Config()
	if err != nil {
		return o, err
	}
	if cfg == nil && secure {
		cfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	o.TLS = cfg
	return o, nil
}

func build(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
	o, err := options(env, c)
	if err != nil {
		return component.Component{}, err
	}
	r := bus.ReconnectOptions(c)
	health := component.HealthOf(env.Resources)
	if bus.ModeKind(c) == component.KindSink {
		s, err := NewSink(ctx, SinkOptions{Options: o, Name: c.Node, Topic: c.String("topic"), QoS: byte(c.Int("qos")),
			Retain: c.Bool("retain"), Codec: c.String("codec"), PublishTimeout: c.Duration("publish_timeout"),
			Reconnect: &r, Health: health})
		return component.Component{Processor: s}, err
	}
	if env.Graph == nil {
		return component.Component{}, bus.ErrNoGraph
	}
	s, err := NewSource(ctx, env.Graph, SourceOptions{Options: o, Topic: c.String("topic"), QoS: byte(c.Int("qos")),
		Codec: c.String("codec"), IDFrom: c.String("id_from"), MaxInflight: c.Int("max_inflight"), Source: bus.SourceOptionsFrom(env, c),
		Reconnect: r, Health: health})
	return component.Component{Source: s}, err
}
