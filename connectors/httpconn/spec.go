package httpconn

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// This file declares the HTTP connectors for flow files.

// addrsKey holds the addresses the http_server connectors of a build
// listen on, by node name.
var addrsKey = component.NewKey[*serverAddrs]("httpconn.addrs")

type serverAddrs struct {
	mu sync.Mutex
	m  map[string]net.Addr
}

// ServerAddr returns the address the http_server connector node built
// with res listens on: the port chosen for `address: 127.0.0.1:0`.
func ServerAddr(res *component.Resources, node string) (net.Addr, bool) {
	a, ok := addrsKey.Get(res)
	if !ok {
		return nil, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	addr, ok := a.m[node]
	return addr, ok
}

func serverKind(c *component.Config) component.Kind {
	if c.String("response") == string(ResponseAsync) {
		return component.KindSource
	}
	return component.KindDuplex
}

// ServerSpec declares the http_server connector.
func ServerSpec() component.Spec {
	itoa := strconv.Itoa
	return component.Spec{
		Type:    "http_server",
		Kind:    component.KindDuplex,
		KindOf:  serverKind,
		KindDoc: "source and sink; source only with `response: async`",
		Summary: "An HTTP server: each POST to `path` is an event (a JSON envelope `{\"data\":...,\"meta\":{...}}` or a bare " +
			"JSON value taken as data; an NDJSON body is several events) emitted on `out`. With `response: sync` the " +
			"connector is also a sink: link the flow's results to `NAME/in` and each request is answered with the events " +
			"derived from its own events that arrive there (200, 422 when from an `err` port, 500 when the flow failed, " +
			"504 after `timeout`). `GET /ping` and `GET /ready` serve health checks. See docs/http.md.",
		Fields: []component.Field{
			{Name: "address", Type: component.TypeString, Required: true,
				Doc: "HOST:PORT to listen on, such as `127.0.0.1:8080` (`:8080` listens on every interface; port 0 picks a free port, logged)."},
			{Name: "path", Type: component.TypeString, Default: DefaultServerPath,
				Doc: "URL path events are posted to; `/ping` and `/ready` are reserved."},
			{Name: "response", Type: component.TypeEnum, Enum: []string{string(ResponseSync), string(ResponseAsync)}, Default: string(ResponseSync),
				Doc: "sync: answer with the events that come back to `NAME/in`; async: answer 202 once the events are queued into the flow."},
			{Name: "max_body_bytes", Type: component.TypeByteSize, Default: "4MiB", Min: "1",
				Doc: "Largest request body; a larger one is answered 413."},
			{Name: "max_in_flight", Type: component.TypeInt, Default: itoa(DefaultServerMaxInFlight), Min: "1",
				Doc: "Most requests accepted whose events are not done yet; one more is answered 503 with `Retry-After: " + RetryAfter + "`."},
			{Name: "max_events", Type: component.TypeInt, Default: itoa(DefaultMaxEvents), Min: "1",
				Doc: "Most events in one NDJSON body; more is answered 413."},
			{Name: "timeout", Type: component.TypeDuration, Default: DefaultServerTimeout.String(), Min: "1ms",
				Doc: "How long a sync request waits for its answer before 504; its events still complete in the flow, so their effect may still happen."},
			{Name: "tls_cert", Type: component.TypePath, Doc: "PEM certificate (chain) file: serve HTTPS. Needs tls_key."},
			{Name: "tls_key", Type: component.TypePath, Doc: "PEM private key file of tls_cert."},
			{Name: "token", Type: component.TypeString,
				Doc: "Bearer token requests must carry (`Authorization: Bearer TOKEN`, compared in constant time; else 401). Write it as `${VAR}`."},
		},
		Ports:    component.StaticPorts(pipeline.PortOut),
		PortsDoc: "`out`; input `in` (the responses) with `response: sync`",
		Check: func(c *component.Config) error {
			o := serverOptions(c)
			o.EnsureDefaults()
			err := o.Validate()
			if err == nil {
				err = o.ValidateFiles()
			}
			var oe *optionError
			if errors.As(err, &oe) {
				return component.OptionErr(oe.option, errors.New(oe.msg))
			}
			return err
		},
		Build: func(_ context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			o := serverOptions(c)
			o.Logger = env.Logger
			s, err := NewServer(o)
			if err != nil {
				return component.Component{}, err
			}
			a := addrsKey.Shared(env.Resources, func() *serverAddrs { return &serverAddrs{m: map[string]net.Addr{}} })
			a.mu.Lock()
			a.m[c.Node] = s.Addr()
			a.mu.Unlock()
			comp := component.Component{Source: s}
			if serverKind(c) == component.KindDuplex {
				comp.Processor = s.Sink()
			}
			return comp, nil
		},
	}
}

func serverOptions(c *component.Config) ServerOptions {
	return ServerOptions{
		Name:         c.Node,
		Address:      c.String("address"),
		Path:         c.String("path"),
		Response:     Response(c.String("response")),
		MaxBodyBytes: c.ByteSize("max_body_bytes"),
		MaxInFlight:  c.Int("max_in_flight"),
		MaxEvents:    c.Int("max_events"),
		Timeout:      c.Duration("timeout"),
		TLSCert:      c.String("tls_cert"),
		TLSKey:       c.String("tls_key"),
		Token:        c.String("token"),
	}
}
