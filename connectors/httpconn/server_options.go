package httpconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/flowrun/flowrun/component"
)

// Defaults for ServerOptions.
const (
	// DefaultServerPath is the default of ServerOptions.Path.
	DefaultServerPath = "/"
	// DefaultMaxBodyBytes is the default of ServerOptions.MaxBodyBytes:
	// room for a large value (the kv connector's default value limit is
	// 1 MiB) and its envelope.
	DefaultMaxBodyBytes = 4 << 20
	// DefaultServerMaxInFlight is the default of ServerOptions.MaxInFlight:
	// enough requests to keep a group-committing store busy (each commit
	// takes what is queued), few enough that their events stay small next
	// to the graph's queues.
	DefaultServerMaxInFlight = 1024
	// DefaultMaxEvents is the default of ServerOptions.MaxEvents.
	DefaultMaxEvents = 1000
	// DefaultServerTimeout is the default of ServerOptions.Timeout.
	DefaultServerTimeout = 10 * time.Second
	// RetryAfter is the Retry-After of a 503 answered because
	// MaxInFlight requests are in flight, in seconds.
	RetryAfter = "1"
	// maxFlushEvents bounds the events Run emits before one Flush.
	maxFlushEvents = 4096
	// closeGrace is how long Close waits, beyond Timeout, for responses
	// still being written before closing connections.
	closeGrace = 5 * time.Second
)

// Response says when a request is answered.
type Response string

// Values of ServerOptions.Response.
const (
	// ResponseSync answers once every event of the request is done, with
	// the events derived from them that reached the server's sink side.
	ResponseSync Response = "sync"
	// ResponseAsync answers 202 Accepted once the events are queued into
	// the flow.
	ResponseAsync Response = "async"
)

// Engine names the HTTP implementation of a Server.
type Engine string

// Values of ServerOptions.Engine.
const (
	// EngineNetHTTP serves with the standard library's net/http:
	// HTTP/1.1, and HTTP/2 with TLS.
	EngineNetHTTP Engine = "net/http"
	// EngineFastHTTP serves with github.com/valyala/fasthttp: HTTP/1.1
	// only, request line and headers up to 16 KiB (431 beyond), about
	// two thirds of the server CPU per request of net/http.
	EngineFastHTTP Engine = "fasthttp"
)

// DefaultEngine is the default of ServerOptions.Engine: with 64
// keep-alive clients putting to a kv store on 2 shared cores, fasthttp
// took 31-33 µs of server CPU per request against 48-53 µs for net/http
// (gets 16-18 against 30-33 µs), alternating runs of
// scripts/http-bench.sh.
const DefaultEngine = EngineFastHTTP

// ServerOptions configure a Server.
type ServerOptions struct {
	// Name is the node's name, for logs. Default "http_server".
	Name string
	// Address is the TCP address to listen on, "127.0.0.1:8080"; port 0
	// picks a free port (see Server.Addr). Required: there is no default,
	// so that nothing listens on every interface by accident.
	Address string
	// Path is the URL path events are posted to. Default "/". /ping and
	// /ready are reserved.
	Path string
	// MaxBodyBytes bounds a request body; a larger one is answered 413.
	// Default DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxInFlight bounds the requests accepted and not yet done (their
	// events still in the flow, answered or not); one more is answered
	// 503 with Retry-After. Default DefaultServerMaxInFlight.
	MaxInFlight int
	// MaxEvents bounds the events of one NDJSON body; more is answered
	// 413. Default DefaultMaxEvents.
	MaxEvents int
	// Timeout bounds how long a sync request waits for its events to be
	// done; then it is answered 504 (the events still complete in the
	// flow). Default DefaultServerTimeout.
	Timeout time.Duration
	// TLSCert and TLSKey are PEM files of the certificate (chain) and
	// its key; both or neither. With them the server speaks HTTPS only.
	TLSCert, TLSKey string
	// Token, when set, is the bearer token every request to Path must
	// carry ("Authorization: Bearer TOKEN"); others are answered 401.
	// /ping and /ready need none.
	Token string
	// Response is ResponseSync or ResponseAsync. Default ResponseSync.
	Response Response
	// Engine is the HTTP implementation, EngineNetHTTP or
	// EngineFastHTTP; both answer the same. Default DefaultEngine.
	Engine Engine
	// Logger receives the listening address and failures. Default
	// slog.Default().
	Logger *slog.Logger
	// Health, when set, is the readiness /ready reports besides the
	// server's own: the other components of the process (bus sources and
	// sinks report whether they are connected).
	Health *component.Health
}

// EnsureDefaults fills unset fields with their defaults.
func (o *ServerOptions) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "http_server"
	}
	if o.Path == "" {
		o.Path = DefaultServerPath
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultServerMaxInFlight
	}
	if o.MaxEvents == 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultServerTimeout
	}
	if o.Response == "" {
		o.Response = ResponseSync
	}
	if o.Engine == "" {
		o.Engine = DefaultEngine
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports options that cannot work, naming the field and the
// flow option; the error wraps ErrInvalidOption.
func (o *ServerOptions) Validate() error {
	bad := func(field, option, format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		return &optionError{option: option, msg: msg,
			err: fmt.Errorf("http_server: %s (%s): %w: %s", field, option, ErrInvalidOption, msg)}
	}
	if o.Address == "" {
		return bad("Address", "address", "an address such as 127.0.0.1:8080 is required")
	}
	_, port, err := net.SplitHostPort(o.Address)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			err = errors.New(ae.Err)
		}
		return bad("Address", "address", "%q is not HOST:PORT: %v", o.Address, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return bad("Address", "address", "port %q of %q is not a number from 0 to 65535", port, o.Address)
	}
	if !strings.HasPrefix(o.Path, "/") {
		return bad("Path", "path", "%q must start with /", o.Path)
	}
	if o.Path == "/ping" || o.Path == "/ready" {
		return bad("Path", "path", "%s is reserved for health checks", o.Path)
	}
	if o.MaxBodyBytes < 1 {
		return bad("MaxBodyBytes", "max_body_bytes", "must be at least 1, got %d", o.MaxBodyBytes)
	}
	if o.MaxInFlight < 1 {
		return bad("MaxInFlight", "max_in_flight", "must be at least 1, got %d", o.MaxInFlight)
	}
	if o.MaxEvents < 1 {
		return bad("MaxEvents", "max_events", "must be at least 1, got %d", o.MaxEvents)
	}
	if o.Timeout < time.Millisecond {
		return bad("Timeout", "timeout", "must be at least 1ms, got %v", o.Timeout)
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		opt := "tls_cert"
		if o.TLSCert == "" {
			opt = "tls_key"
		}
		return bad("TLSCert", opt, "tls_cert and tls_key go together: set both or neither")
	}
	switch o.Response {
	case ResponseSync, ResponseAsync:
	default:
		return bad("Response", "response", "%q is not one of sync, async", o.Response)
	}
	switch o.Engine {
	case EngineNetHTTP, EngineFastHTTP:
	default:
		return bad("Engine", "engine", "%q is not one of %s, %s", o.Engine, EngineNetHTTP, EngineFastHTTP)
	}
	return nil
}

// optionError is an error of Validate about one flow option.
type optionError struct {
	option string
	msg    string // what is wrong, in the flow file's words
	err    error
}

func (e *optionError) Error() string { return e.err.Error() }
func (e *optionError) Unwrap() error { return e.err }

// ValidateFiles reports TLS files that cannot be loaded, naming the flow
// option; NewServer loads them again.
func (o *ServerOptions) ValidateFiles() error {
	if o.TLSCert == "" {
		return nil
	}
	if _, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey); err != nil {
		err = fmt.Errorf("tls_cert %s with tls_key %s: %w", o.TLSCert, o.TLSKey, err)
		return &optionError{option: "tls_cert", msg: err.Error(), err: err}
	}
	return nil
}
