package httpconn

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"unsafe"

	"github.com/valyala/fasthttp"
)

// fastEngine serves with github.com/valyala/fasthttp: HTTP/1.1 only, no
// goroutine started per request nor background read of the connection,
// request and response objects reused.
type fastEngine struct {
	srv *fasthttp.Server
	ln  net.Listener

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open, for close
}

// maxHeaderBytes bounds a request's line and headers with the fasthttp
// engine (its read buffer); larger ones are answered 431.
const maxHeaderBytes = 16 << 10

func newFastEngine(s *Server) *fastEngine {
	e := &fastEngine{ln: s.ln, conns: map[net.Conn]struct{}{}}
	e.srv = &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) { s.handle((*fastExchange)(ctx)) },
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			x := (*fastExchange)(ctx)
			var small *fasthttp.ErrSmallBuffer
			var nerr net.Error
			switch {
			case errors.Is(err, fasthttp.ErrBodyTooLarge):
				httpError(x, http.StatusRequestEntityTooLarge, s.tooLargeError().Error())
			case errors.As(err, &small):
				httpError(x, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("request line and headers larger than %d bytes", maxHeaderBytes))
			case errors.As(err, &nerr) && nerr.Timeout():
				httpError(x, http.StatusRequestTimeout, fmt.Sprintf("request not read within %v (timeout)", s.opts.Timeout))
			default:
				httpError(x, http.StatusBadRequest, "malformed request: "+err.Error())
			}
		},
		// Enforced while reading: a longer body is never read whole.
		MaxRequestBodySize: int(s.opts.MaxBodyBytes),
		ReadBufferSize:     maxHeaderBytes,
		// As with net/http: a request is read within Timeout and
		// answered within Timeout.
		ReadTimeout:                  s.opts.Timeout,
		WriteTimeout:                 2*s.opts.Timeout + closeGrace,
		IdleTimeout:                  idleTimeout,
		CloseOnShutdown:              true,
		NoDefaultServerHeader:        true,
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true,
		Logger:                       fastLogger{s},
		ConnState: func(c net.Conn, st fasthttp.ConnState) {
			e.mu.Lock()
			defer e.mu.Unlock()
			switch st {
			case fasthttp.StateNew:
				e.conns[c] = struct{}{}
			case fasthttp.StateClosed, fasthttp.StateHijacked:
				delete(e.conns, c)
			}
		},
	}
	return e
}

func (e *fastEngine) serve(ln net.Listener) error { return e.srv.Serve(ln) }

func (e *fastEngine) shutdown() {
	_ = e.srv.Shutdown()
	// Shutdown closes the listener only once Serve took it: closed here
	// too, Serve started late stops at once.
	_ = e.ln.Close()
}

func (e *fastEngine) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for c := range e.conns {
		_ = c.Close()
	}
}

// fastLogger passes fasthttp's messages to the server's logger.
type fastLogger struct{ s *Server }

func (l fastLogger) Printf(format string, args ...any) {
	l.s.opts.Logger.Debug(fmt.Sprintf(format, args...), "node", l.s.opts.Name)
}

// fastExchange is a request served by fasthttp: a RequestCtx, reused
// once the handler returns.
type fastExchange fasthttp.RequestCtx

func (x *fastExchange) ctx() *fasthttp.RequestCtx { return (*fasthttp.RequestCtx)(x) }

// str views b as a string without copying: valid while the handler runs,
// which is as long as an exchange's strings are used.
func str(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func (x *fastExchange) path() string   { return str(x.ctx().Path()) }
func (x *fastExchange) method() string { return str(x.ctx().Method()) }
func (x *fastExchange) header(name string) string {
	return str(x.ctx().Request.Header.Peek(name))
}
func (x *fastExchange) query(name string) string {
	if len(x.ctx().URI().QueryString()) == 0 {
		return ""
	}
	return str(x.ctx().QueryArgs().Peek(name))
}
func (x *fastExchange) gone() <-chan struct{} { return nil }

// body copies the body: fasthttp reuses its buffer once the handler
// returns, while the events built on it stay in the flow. The limit is
// fasthttp's MaxRequestBodySize, checked while reading.
func (x *fastExchange) body(int64) ([]byte, error) {
	return bytes.Clone(x.ctx().PostBody()), nil
}

func (x *fastExchange) setHeader(name, value string) { x.ctx().Response.Header.Set(name, value) }

func (x *fastExchange) write(status int, contentType string, body []byte) {
	c := x.ctx()
	c.SetStatusCode(status)
	if contentType != "" {
		c.SetContentType(contentType)
	}
	if body != nil {
		c.SetBody(body)
	}
}
