package httpconn

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"
)

// engine is the HTTP implementation serving a Server's listener; every
// request goes to Server.handle as an exchange.
type engine interface {
	// serve serves ln until shutdown or close.
	serve(ln net.Listener) error
	// shutdown stops accepting, waits until every request being served
	// is answered, and closes the connections.
	shutdown()
	// close closes every connection still open.
	close()
}

// exchange is one request being served and its response, as an engine
// gives it to Server.handle: the engine-specific part is only reading
// the request and writing the response. The strings it returns are
// valid until the handler returns.
type exchange interface {
	path() string
	method() string
	// header returns the first value of the header name, given
	// canonical ("Content-Type"), or "".
	header(name string) string
	// query returns the first value of the URL query parameter name, or "".
	query(name string) string
	// body returns the request body, a slice of its own; a body longer
	// than limit is an error wrapping errBodyTooLarge.
	body(limit int64) ([]byte, error)
	// setHeader sets a response header, given canonical, before write.
	setHeader(name, value string)
	// write answers status with body (copied) of the given content type;
	// a nil body and contentType "" for no body.
	write(status int, contentType string, body []byte)
	// gone is closed when the client went away before its answer (nil
	// when the engine cannot tell).
	gone() <-chan struct{}
}

// errBodyTooLarge is wrapped by exchange.body's error for a body longer
// than its limit.
var errBodyTooLarge = errors.New("body too large")

// netEngine serves with net/http: HTTP/1.1, and HTTP/2 with TLS.
type netEngine struct{ srv *http.Server }

func newNetEngine(s *Server) *netEngine {
	return &netEngine{srv: &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.handle(&netExchange{w: w, r: r})
		}),
		ReadHeaderTimeout: s.opts.Timeout,
		// A request is read within Timeout and answered within Timeout:
		// a slow client holds a connection (and Close) for a bounded
		// time.
		ReadTimeout:  s.opts.Timeout,
		WriteTimeout: 2*s.opts.Timeout + closeGrace,
		IdleTimeout:  idleTimeout,
		ErrorLog:     slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelDebug),
	}}
}

// idleTimeout is how long a keep-alive connection may wait for its next
// request.
const idleTimeout = 2 * time.Minute

func (e *netEngine) serve(ln net.Listener) error { return e.srv.Serve(ln) }
func (e *netEngine) shutdown()                   { _ = e.srv.Shutdown(context.Background()) }
func (e *netEngine) close()                      { _ = e.srv.Close() }

// netExchange is a request served by net/http.
type netExchange struct {
	w http.ResponseWriter
	r *http.Request
}

func (x *netExchange) path() string              { return x.r.URL.Path }
func (x *netExchange) method() string            { return x.r.Method }
func (x *netExchange) header(name string) string { return x.r.Header.Get(name) }
func (x *netExchange) gone() <-chan struct{}     { return x.r.Context().Done() }

func (x *netExchange) query(name string) string {
	if x.r.URL.RawQuery == "" { // parsing an empty query would still allocate
		return ""
	}
	return x.r.URL.Query().Get(name)
}

func (x *netExchange) body(limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(x.w, x.r.Body, limit))
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return nil, errBodyTooLarge
	}
	return b, err
}

func (x *netExchange) setHeader(name, value string) { x.w.Header()[name] = []string{value} }

// Header values set without Header.Set making a slice per response;
// net/http copies them when writing headers.
var (
	jsonContentTypes = []string{jsonContentType}
	textContentTypes = []string{textContentType}
)

// smallBody is the size of a body net/http answers with a Content-Length
// of its own (its bufferBeforeChunkingSize, 2048): the whole answer is
// written before the handler returns.
const smallBody = 2000

func (x *netExchange) write(status int, contentType string, body []byte) {
	h := x.w.Header()
	switch contentType {
	case "":
	case jsonContentType:
		h["Content-Type"] = jsonContentTypes
	case textContentType:
		h["Content-Type"] = textContentTypes
	default:
		h["Content-Type"] = []string{contentType}
	}
	if len(body) > smallBody {
		h["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	x.w.WriteHeader(status)
	if body != nil {
		_, _ = x.w.Write(body) // copied into the connection's buffer
	}
}
