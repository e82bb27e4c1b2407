package httpconn

import (
	"context"
	"errors"
	"fmt"
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
			{Name: "engine", Type: component.TypeEnum, Enum: []string{string(EngineFastHTTP), string(EngineNetHTTP)}, Default: string(DefaultEngine),
				Doc: "HTTP implementation; both answer the same. fasthttp: HTTP/1.1 only, request line and headers up to 16 KiB (431 beyond), " +
					"about two thirds of the server CPU per request of net/http. net/http: the standard library's, HTTP/2 with TLS."},
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
			o.Health = component.HealthOf(env.Resources)
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
		Engine:       Engine(c.String("engine")),
	}
}

// ClientSpec declares the http_client processor.
func ClientSpec() component.Spec {
	itoa := strconv.Itoa
	return component.Spec{
		Type: "http_client",
		Kind: component.KindProcessor,
		Summary: "Calls an HTTP endpoint once per event, with the URL and header values rendered from the event " +
			"(`{data.player}`), retrying connection errors, timeouts, 5xx and 429 with backoff; the response body " +
			"becomes the event's data on `out` (meta.http has the status), a failed call sends the event to `err` with " +
			"meta.error. Requests of a slice of events run concurrently, results keep the input order. See docs/http.md.",
		Fields: []component.Field{
			{Name: "url", Type: component.TypeString, Required: true,
				Doc: "http or https URL; `{EXPR}` placeholders (escaped) only after the host."},
			{Name: "method", Type: component.TypeEnum, Enum: []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}, Default: DefaultMethod,
				Doc: "HTTP method."},
			{Name: "headers", Type: component.TypeMap,
				Doc: "Headers sent with every request, `{Name: value}`; values may hold `{EXPR}` placeholders."},
			{Name: "body", Type: component.TypeEnum, Enum: []string{string(BodyData), string(BodyEvent), string(BodyNone)},
				Doc: "What is sent: data (the event's data as JSON), event (`{\"data\":...,\"meta\":...}`) or none. Default data, none for GET and HEAD."},
			{Name: "bearer_token", Type: component.TypeString, Doc: "Sent as `Authorization: Bearer TOKEN`; write it as `${VAR}`."},
			{Name: "basic_auth_user", Type: component.TypeString, Doc: "User of HTTP basic authentication."},
			{Name: "basic_auth_password", Type: component.TypeString, Doc: "Password of HTTP basic authentication; write it as `${VAR}`."},
			{Name: "timeout", Type: component.TypeDuration, Default: DefaultTimeout.String(), Min: "1ms",
				Doc: "Bound of one attempt: connecting, sending and reading the whole response."},
			{Name: "max_retries", Type: component.TypeInt, Default: itoa(DefaultMaxRetries), Min: "0", Max: "100",
				Doc: "Retries after a connection error, a timeout, a 5xx or a 429; 0 tries each request once."},
			{Name: "backoff_initial", Type: component.TypeDuration, Default: DefaultBackoffInitial.String(), Min: "0s",
				Doc: "Cap of the first retry's random wait, doubling per retry (full jitter)."},
			{Name: "backoff_max", Type: component.TypeDuration, Default: DefaultBackoffMax.String(),
				Doc: "Largest wait before a retry (a Retry-After header included); at least backoff_initial."},
			{Name: "max_in_flight", Type: component.TypeInt, Default: itoa(DefaultMaxInFlight), Min: "1",
				Doc: "Most requests in flight at once."},
			{Name: "rate_limit", Type: component.TypeInt, Default: "0", Min: "0",
				Doc: "Most requests started per second, every attempt counting; 0 is unlimited."},
			{Name: "rate_burst", Type: component.TypeInt, Default: "1", Min: "1",
				Doc: "Most requests started at once under rate_limit."},
			{Name: "max_response_bytes", Type: component.TypeByteSize, Default: "16MiB", Min: "1",
				Doc: "Largest response body read; a larger one sends the event to err."},
		},
		Ports: component.StaticPorts(ClientPorts()...),
		Check: func(c *component.Config) error {
			o := clientOptions(c)
			if o.BackoffMax < o.BackoffInitial {
				if !c.Has("backoff_max") {
					return component.OptionErr("backoff_initial", fmt.Errorf("backoff_initial %v is above backoff_max %v (the default): raise backoff_max too", o.BackoffInitial, o.BackoffMax))
				}
				return component.OptionErr("backoff_max", fmt.Errorf("backoff_max %v is below backoff_initial %v", o.BackoffMax, o.BackoffInitial))
			}
			if c.Has("basic_auth_password") && !c.Has("basic_auth_user") {
				return component.OptionErr("basic_auth_password", errors.New("basic_auth_password needs basic_auth_user"))
			}
			cl, err := NewClient(o)
			if err != nil {
				var oe *optionError
				if errors.As(err, &oe) {
					return component.OptionErr(oe.option, errors.New(oe.msg))
				}
				return err
			}
			return cl.Close(context.Background())
		},
		Build: func(_ context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			o := clientOptions(c)
			o.Expr.Now = component.Clock(env.Resources) // nil: time.Now
			cl, err := NewClient(o)
			if err != nil {
				return component.Component{}, err
			}
			return component.Component{Processor: cl}, nil
		},
	}
}

func clientOptions(c *component.Config) ClientOptions {
	o := ClientOptions{
		URL:              c.String("url"),
		Method:           c.String("method"),
		Headers:          c.Map("headers"),
		Body:             Body(c.String("body")),
		BearerToken:      c.String("bearer_token"),
		Timeout:          c.Duration("timeout"),
		MaxRetries:       c.Int("max_retries"),
		NoRetry:          c.Int("max_retries") == 0 && c.Has("max_retries"),
		BackoffInitial:   c.Duration("backoff_initial"),
		BackoffMax:       c.Duration("backoff_max"),
		MaxInFlight:      c.Int("max_in_flight"),
		RateLimit:        float64(c.Int("rate_limit")),
		RateBurst:        c.Int("rate_burst"),
		MaxResponseBytes: c.ByteSize("max_response_bytes"),
	}
	if u := c.String("basic_auth_user"); u != "" {
		o.BasicAuth = &BasicAuth{User: u, Password: c.String("basic_auth_password")}
	}
	return o
}
