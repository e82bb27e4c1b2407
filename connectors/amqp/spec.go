package amqp

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/operators/expr"
)

// modeKind tells the connector's role from its mode option.
func modeKind(c *component.Config) component.Kind {
	if c.String("mode") == "read" {
		return component.KindSource
	}
	return component.KindSink
}

func modePorts(c *component.Config) []string {
	if modeKind(c) == component.KindSource {
		return bus.Ports()
	}
	return nil
}

var (
	whenRead  = &component.When{Field: "mode", Values: []string{"read"}}
	whenWrite = &component.When{Field: "mode", Values: []string{"write"}}
)

var errNoGraph = errors.New("an amqp source needs the graph it feeds")

// Spec declares the amqp connector: RabbitMQ (AMQP 0-9-1).
func Spec() component.Spec {
	fields := []component.Field{
		{Name: "mode", Type: component.TypeEnum, Required: true, Enum: []string{"read", "write"},
			Doc: "read: a source consuming the queue; write: a sink publishing to the exchange."},
		{Name: "url", Type: component.TypeString, Default: DefaultURL,
			Doc: "The broker's address, `amqp://USER:PASS@HOST:PORT/VHOST` (or `amqps://`); give credentials as `${VAR}`. Never logged with its password."},
		{Name: "queue", Type: component.TypeString, Required: true, RequiredWhen: whenRead,
			Doc: "read: the queue consumed. write: with the default exchange, the queue published to (and declared)."},
		{Name: "exchange", Type: component.TypeString,
			Doc: "write: the exchange published to; read: the exchange the queue is bound to. Default the default exchange (`\"\"`), which routes by queue name."},
		{Name: "exchange_type", Type: component.TypeEnum, Enum: []string{"direct", "fanout", "topic", "headers"}, Default: DefaultExchangeType,
			Doc: "The type `exchange` is declared with."},
		{Name: "routing_key", Type: component.TypeString,
			Doc: "write: the routing key of every message; read: the key binding the queue to `exchange`. Default the queue's name."},
		{Name: "routing_key_expr", Type: component.TypeExpr, OnlyWhen: whenWrite,
			Doc: "write: an expression giving each event's routing key (a string or number), e.g. `\"orders.\" + data.region`; overrides `routing_key`. An event for which it fails goes to `err`."},
		{Name: "declare", Type: component.TypeEnum, Enum: []string{DeclareDurable, DeclarePassive, DeclareNone}, Default: DeclareDurable,
			Doc: "What is declared at each connection: `durable` creates what is missing (durable queue, dead-letter queue, durable exchange, binding); `passive` only checks that the queue and exchange exist; `none` touches nothing."},
		{Name: "queue_type", Type: component.TypeEnum, Enum: []string{QueueClassic, QueueQuorum}, Default: QueueClassic,
			Doc: "The type a declared queue gets (`x-queue-type`). Quorum queues count deliveries (`x-delivery-count`), so `max_deliveries` also holds across crashes of flowrun; on classic queues flowrun counts failures in memory."},
		{Name: "dead_letter_exchange", Type: component.TypeString, OnlyWhen: whenRead,
			Doc: "read: dead-letter through the broker: the queue gets this `x-dead-letter-exchange` (with `declare: durable`, a fanout exchange of that name and the queue `dead_letter` bound to it are declared too) and a message to dead-letter is nacked without requeue (reason in the log and the broker's `x-death` header, not in meta). Default: flowrun publishes dead letters to the queue `dead_letter` with a confirm, then acks."},
		{Name: "message_id_hash", Type: component.TypeBool, Default: "false", OnlyWhen: whenRead,
			Doc: "read: a message without the `message_id` property gets `meta.message_id` = a hash of its exchange, routing key, headers and body (stable across redeliveries; identical messages share it). Default: a random id per delivery, so its redeliveries cannot be deduplicated."},
		{Name: "mandatory", Type: component.TypeBool, Default: "true", OnlyWhen: whenWrite,
			Doc: "write: publish as mandatory: a message no queue receives is returned by the broker and its event goes to `err` instead of vanishing."},
		{Name: "connect_timeout", Type: component.TypeDuration, Default: DefaultConnectTimeout.String(), Min: "1ms",
			Doc: "How long connecting may take."},
		{Name: "tls_ca", Type: component.TypePath,
			Doc: "CA bundle (PEM) verifying the broker's certificate instead of the system's roots; the tls_ options need an `amqps://` url (which uses TLS with the system's roots without them)."},
		{Name: "tls_cert", Type: component.TypePath, Doc: "Client certificate (PEM) for TLS."},
		{Name: "tls_key", Type: component.TypePath, Doc: "Key of tls_cert (PEM)."},
		{Name: "tls_insecure_skip_verify", Type: component.TypeBool, Default: "false",
			Doc: "Do not verify the broker's certificate (tests only)."},
	}
	fields = append(fields, bus.SourceFields()...)
	fields = append(fields, bus.WindowsInFlightField())
	fields = append(fields, bus.ReconnectFields()...)
	return component.Spec{
		Type:   "amqp",
		Kind:   component.KindSink,
		KindOf: modeKind,
		Summary: "RabbitMQ (AMQP 0-9-1): `mode: read` consumes a queue with manual acknowledgement and a prefetch of `window` × `windows_in_flight`, " +
			"acknowledging each message once the flow has handled it, requeueing failed ones and dead-lettering those that keep " +
			"failing (see docs/bus.md); `mode: write` publishes every event it receives as a persistent message and waits for " +
			"the broker's publisher confirm. The queue, exchange and binding are declared when missing.",
		Fields:   fields,
		Ports:    modePorts,
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Check:    check,
		Build:    build,
	}
}

// check refuses a sink with nowhere to publish.
func check(c *component.Config) error {
	if modeKind(c) == component.KindSink && c.String("queue") == "" && c.String("exchange") == "" {
		return component.OptionErr("queue", fmt.Errorf("mode write needs `queue` (published to through the default exchange) or `exchange`"))
	}
	if c.String("exchange") == "" && c.Has("routing_key") && modeKind(c) == component.KindSource {
		return component.OptionErr("routing_key", fmt.Errorf("in mode read it binds the queue to `exchange`, which is not set"))
	}
	o := Options{URL: c.String("url"), TLSCA: c.String("tls_ca"), TLSCert: c.String("tls_cert"), TLSKey: c.String("tls_key"),
		TLSInsecureSkipVerify: c.Bool("tls_insecure_skip_verify")}
	if _, err := o.tlsConfig(); err != nil {
		return component.OptionErr("tls_ca", err)
	}
	return nil
}

func options(env *component.Env, c *component.Config) Options {
	return Options{
		URL:                   c.String("url"),
		Queue:                 c.String("queue"),
		Exchange:              c.String("exchange"),
		ExchangeType:          c.String("exchange_type"),
		RoutingKey:            c.String("routing_key"),
		Declare:               c.String("declare"),
		QueueType:             c.String("queue_type"),
		DeadLetterExchange:    c.String("dead_letter_exchange"),
		MessageIDHash:         c.Bool("message_id_hash"),
		Mandatory:             c.Bool("mandatory"),
		ConnectTimeout:        c.Duration("connect_timeout"),
		TLSCA:                 c.String("tls_ca"),
		TLSCert:               c.String("tls_cert"),
		TLSKey:                c.String("tls_key"),
		TLSInsecureSkipVerify: c.Bool("tls_insecure_skip_verify"),
		Logger:                env.Logger,
	}
}

func build(ctx context.Context, env *component.Env, c *component.Config) (component.Component, error) {
	o := options(env, c)
	health := component.HealthOf(env.Resources)
	if modeKind(c) == component.KindSink {
		so := SinkOptions{Options: o, Name: c.Node, Reconnect: bus.ReconnectOptions(c), Health: health}
		if src := strings.TrimSpace(c.String("routing_key_expr")); src != "" {
			e, err := expr.Parse(src)
			if err != nil {
				return component.Component{}, component.OptionErr("routing_key_expr", err)
			}
			so.RoutingKeyExpr = e
		}
		s, err := NewSink(ctx, so)
		return component.Component{Processor: s}, err
	}
	if env.Graph == nil {
		return component.Component{}, errNoGraph
	}
	s, err := NewSource(ctx, env.Graph, SourceOptions{
		Options:   o,
		Source:    bus.SourceOptionsFrom(env, c),
		Reconnect: bus.ReconnectOptions(c),
		Health:    health,
	})
	return component.Component{Source: s}, err
}
