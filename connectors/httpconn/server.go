package httpconn

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrListen reports a server that could not listen on its address or load
// its TLS certificate.
var ErrListen = errors.New("cannot listen")

// Server is an HTTP server feeding a flow: each POST to its path is one
// event (or several, for an NDJSON body) emitted on "out", and with
// ResponseSync the request is answered with the events derived from them
// that reach the server's sink side (Sink), matched by origin through a
// pipeline.Tracker made for the request, never by content.
//
// The server listens from NewServer on and serves from Run on. Run is the
// only user of the flow's emitter: handlers queue their requests (at most
// MaxInFlight, the queue is never larger) and Run emits everything queued
// and flushes it together, so that many concurrent requests reach the
// store in one batch (and one group commit).
//
// When Run's context is cancelled the server stops accepting (new
// requests are answered 503, listeners close), emits what was queued and
// returns; Close then waits until every accepted request is answered.
type Server struct {
	opts ServerOptions
	ln   net.Listener
	eng  engine        // serves ln
	sem  chan struct{} // one token per request in flight
	wake chan struct{} // cap 1: requests were queued

	mu       sync.Mutex
	queue    []*request // handed to Run, not yet emitted
	spare    []*request // Run's emptied queue, reused by the next swap
	stopping bool       // Run stopped emitting: refuse requests
	running  bool       // Run was called

	reqMu   sync.Mutex
	pending map[*pipeline.Tracker]*request // sync requests not done

	accepted atomic.Int64 // requests queued and not done
	timers   sync.Pool    // *time.Timer, stopped: sync requests' timeouts
	bufs     sync.Pool    // *[]byte: response bodies being built
	checks   sync.Pool    // *ijson.Checker: bodies being read
	ready    atomic.Bool
	served   chan struct{} // closed once Shutdown returned
	serveErr chan error
	closed   sync.Once
}

// request is one HTTP request's events on their way through the flow.
type request struct {
	tr     *pipeline.Tracker
	events []pipeline.Event // tracked, to emit
	ndjson bool
	done   chan struct{} // closed when every event is done

	mu       sync.Mutex
	outcomes []pipeline.Outcome
	got      []answer // derived events that reached the sink side

	// Room for the usual request of one event with one answer, so that
	// it costs no allocation of its own.
	oneEvent   [1]pipeline.Event
	oneOutcome [1]pipeline.Outcome
	oneAnswer  [1]answer
}

// answer is an event that reached the sink side and the index of the
// request's event it derives from.
type answer struct {
	i  int
	ev pipeline.Event
}

// NewServer checks opts, listens on opts.Address (with TLS when
// configured) and returns the server; it serves once Run is called.
func NewServer(opts ServerOptions) (*Server, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Address)
	if err != nil {
		return nil, fmt.Errorf("http_server %s: %w on %s: %w", opts.Name, ErrListen, opts.Address, err)
	}
	if opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
		if err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("http_server %s: %w: tls_cert %s, tls_key %s: %w", opts.Name, ErrListen, opts.TLSCert, opts.TLSKey, err)
		}
		protos := []string{"h2", "http/1.1"}
		if opts.Engine == EngineFastHTTP {
			protos = protos[1:] // HTTP/1.1 only
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: protos})
	}
	s := &Server{
		opts:     opts,
		ln:       ln,
		sem:      make(chan struct{}, opts.MaxInFlight),
		wake:     make(chan struct{}, 1),
		pending:  map[*pipeline.Tracker]*request{},
		served:   make(chan struct{}),
		serveErr: make(chan error, 1),
	}
	if opts.Engine == EngineFastHTTP {
		s.eng = newFastEngine(s)
	} else {
		s.eng = newNetEngine(s)
	}
	opts.Logger.Info("http_server listening", "node", opts.Name, "address", ln.Addr().String(), "tls", opts.TLSCert != "", "engine", string(opts.Engine))
	return s, nil
}

// Addr returns the address the server listens on (the port chosen when
// Address had port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// InFlight returns the number of requests accepted (queued for the flow)
// whose events are not all done yet, answered or not; at most
// MaxInFlight.
func (s *Server) InFlight() int { return int(s.accepted.Load()) }

// Sink returns the server's sink side: the processor whose input is
// matched to requests. Every event it receives that derives from a sync
// request of this server becomes part of that request's response; others
// are discarded.
func (s *Server) Sink() pipeline.Processor { return serverSink{s} }

type serverSink struct{ s *Server }

// Process records each event with the request it derives from.
func (k serverSink) Process(_ context.Context, batch []pipeline.Event, _ pipeline.Emitter) error {
	s := k.s
	for _, ev := range batch {
		o := ev.Origin()
		if o.Tracker() == nil {
			continue
		}
		s.reqMu.Lock()
		req := s.pending[o.Tracker()]
		s.reqMu.Unlock()
		if req == nil {
			continue
		}
		req.mu.Lock()
		req.got = append(req.got, answer{i: o.Index(), ev: ev})
		req.mu.Unlock()
	}
	return nil
}

// Run serves requests and emits their events on "out" until ctx is
// cancelled; see Server.
func (s *Server) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	go func() { s.serveErr <- s.eng.serve(s.ln) }()
	s.ready.Store(true)
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-s.serveErr:
			runErr = fmt.Errorf("http_server %s: %w", s.opts.Name, err)
			break loop
		case <-s.wake:
			s.mu.Lock()
			reqs := s.queue
			s.queue = s.spare[:0]
			s.spare = nil
			s.mu.Unlock()
			n := 0
			for _, req := range reqs {
				for _, ev := range req.events {
					emit.Emit(pipeline.PortOut, ev)
				}
				if n += len(req.events); n >= maxFlushEvents {
					if err := emit.Flush(ctx); err != nil {
						runErr = err
						break loop
					}
					n = 0
				}
			}
			if err := emit.Flush(ctx); err != nil {
				runErr = err
				break loop
			}
			clear(reqs) // the requests are the graph's and the handlers' now
			s.mu.Lock()
			if s.spare == nil {
				s.spare = reqs[:0]
			}
			s.mu.Unlock()
		}
	}
	if ctx.Err() != nil && errors.Is(runErr, ctx.Err()) {
		runErr = nil // cancelled within Flush: the graph flushes the rest
	}
	// Stop accepting: what was queued is emitted here and flushed by the
	// graph after Run returns; later requests are refused.
	s.ready.Store(false)
	s.mu.Lock()
	s.stopping = true
	reqs := s.queue
	s.queue = nil
	s.mu.Unlock()
	for _, req := range reqs {
		for _, ev := range req.events {
			emit.Emit(pipeline.PortOut, ev)
		}
	}
	go func() {
		s.eng.shutdown()
		close(s.served)
	}()
	return runErr
}

// Close waits until every accepted request is answered (at most Timeout
// plus a few seconds for responses still being written), then closes
// the server.
func (s *Server) Close(context.Context) error {
	s.mu.Lock()
	running := s.running
	s.stopping = true
	s.mu.Unlock()
	var err error
	s.closed.Do(func() {
		if !running {
			err = s.ln.Close()
			return
		}
		t := time.NewTimer(s.opts.Timeout + closeGrace)
		defer t.Stop()
		// Not cut short by ctx: when the graph fails, ctx is cancelled
		// while handlers are writing their 500s, which must still go out.
		select {
		case <-s.served:
		case <-t.C:
			s.opts.Logger.Warn("http_server: closing connections still open after shutdown", "node", s.opts.Name)
		}
		s.eng.close()
	})
	return err
}

// handle answers one request: the health checks, or events posted to
// Path. It is the whole of the server's HTTP behaviour, the same for
// every engine.
func (s *Server) handle(x exchange) {
	switch x.path() {
	case "/ping":
		x.write(http.StatusOK, textContentType, []byte("pong\n"))
	case "/ready":
		s.readyz(x)
	default:
		s.serveEvents(x)
	}
}

// readyz answers 200 while Run serves and every component of the process
// reporting to opts.Health is ready, and 503 with the reasons otherwise
// (starting, draining, a bus source not connected).
func (s *Server) readyz(x exchange) {
	if !s.ready.Load() {
		x.write(http.StatusServiceUnavailable, textContentType, []byte("not ready: http_server "+s.opts.Name+" is not serving\n"))
		return
	}
	if s.opts.Health != nil {
		if err := s.opts.Health.Err(); err != nil {
			x.write(http.StatusServiceUnavailable, textContentType, []byte(strings.ReplaceAll(err.Error(), "\n", "; ")+"\n"))
			return
		}
	}
	x.write(http.StatusOK, textContentType, []byte("ready\n"))
}

// httpError answers status with {"error": msg}.
func httpError(x exchange, status int, msg string) {
	b, _ := json.Marshal(map[string]string{"error": msg})
	x.setHeader("X-Content-Type-Options", "nosniff")
	x.write(status, jsonContentType, append(b, '\n'))
}

// tooLargeError is the error answered (413) for a body larger than
// MaxBodyBytes.
func (s *Server) tooLargeError() error {
	return fmt.Errorf("body larger than %d bytes (max_body_bytes)", s.opts.MaxBodyBytes)
}

func (s *Server) authorized(x exchange) bool {
	if s.opts.Token == "" {
		return true
	}
	got := []byte(x.header("Authorization"))
	want := []byte("Bearer " + s.opts.Token)
	return subtle.ConstantTimeCompare(got, want) == 1
}

func (s *Server) serveEvents(x exchange) {
	if path := x.path(); path != s.opts.Path {
		httpError(x, http.StatusNotFound, fmt.Sprintf("no such path %q: events are posted to %s", path, s.opts.Path))
		return
	}
	if x.method() != http.MethodPost {
		x.setHeader("Allow", http.MethodPost)
		httpError(x, http.StatusMethodNotAllowed, "events are sent with POST")
		return
	}
	if !s.authorized(x) {
		x.setHeader("WWW-Authenticate", `Bearer realm="flowrun"`)
		httpError(x, http.StatusUnauthorized, "missing or wrong bearer token")
		return
	}
	select {
	case s.sem <- struct{}{}:
	default:
		x.setHeader("Retry-After", RetryAfter)
		httpError(x, http.StatusServiceUnavailable, fmt.Sprintf("%d requests in flight (max_in_flight): retry later", s.opts.MaxInFlight))
		return
	}
	handed := false
	defer func() {
		if !handed {
			<-s.sem
		}
	}()
	req := &request{done: make(chan struct{})}
	if status, err := s.readEvents(x, req); err != nil {
		httpError(x, status, err.Error())
		return
	}
	isSync := s.opts.Response == ResponseSync
	n := len(req.events)
	if n == 1 {
		req.outcomes = req.oneOutcome[:]
		req.got = req.oneAnswer[:0]
	} else {
		req.outcomes = make([]pipeline.Outcome, n)
	}
	req.tr = pipeline.NewTracker(n, req.onEvent, func() { s.finish(req, isSync) })
	for i, ev := range req.events {
		req.events[i] = req.tr.Track(i, ev)
	}
	if isSync {
		s.reqMu.Lock()
		s.pending[req.tr] = req
		s.reqMu.Unlock()
	}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		s.reqMu.Lock()
		delete(s.pending, req.tr)
		s.reqMu.Unlock()
		x.setHeader("Connection", "close")
		x.setHeader("Retry-After", RetryAfter)
		httpError(x, http.StatusServiceUnavailable, "shutting down")
		return
	}
	s.queue = append(s.queue, req)
	s.accepted.Add(1)
	s.mu.Unlock()
	handed = true // the in-flight token is released when the events are done
	select {
	case s.wake <- struct{}{}:
	default:
	}
	if !isSync {
		var b [32]byte
		body := append(strconv.AppendInt(append(b[:0], `{"accepted":`...), int64(len(req.events)), 10), "}\n"...)
		x.write(http.StatusAccepted, jsonContentType, body)
		return
	}
	t := s.timer()
	defer s.timers.Put(t)
	defer t.Stop()
	select {
	case <-req.done:
		s.respond(x, req)
	case <-t.C:
		httpError(x, http.StatusGatewayTimeout, fmt.Sprintf("no answer within %v (timeout); the request's events are still being handled and may take effect", s.opts.Timeout))
	case <-x.gone():
	}
}

// timer returns a timer running for Timeout, from the pool when it has
// one; it goes back to the pool stopped. Since Go 1.23 a stopped or reset
// timer never delivers a stale tick, so a pooled timer is as good as new.
func (s *Server) timer() *time.Timer {
	if t, ok := s.timers.Get().(*time.Timer); ok {
		t.Reset(s.opts.Timeout)
		return t
	}
	return time.NewTimer(s.opts.Timeout)
}

func (req *request) onEvent(i int, o pipeline.Outcome) {
	req.mu.Lock()
	req.outcomes[i] = o
	req.mu.Unlock()
}

// finish runs when every event of req is done: it releases the request's
// in-flight token and wakes its handler.
func (s *Server) finish(req *request, sync bool) {
	if sync {
		s.reqMu.Lock()
		delete(s.pending, req.tr)
		s.reqMu.Unlock()
	}
	s.accepted.Add(-1)
	<-s.sem
	close(req.done)
}

// respond writes the answer to a request whose events are all done.
func (s *Server) respond(x exchange, req *request) {
	req.mu.Lock()
	got := req.got
	outcomes := req.outcomes
	req.mu.Unlock()
	var failed, errored bool
	var errMeta []byte
	for _, o := range outcomes {
		failed = failed || o.Failed()
		if o.Errored() {
			if !errored {
				_, errMeta = o.ErrEvent()
			}
			errored = true
		}
	}
	if failed {
		httpError(x, http.StatusInternalServerError, "the flow failed before the request was handled (see the flow's log); its events may or may not have taken effect")
		return
	}
	status := http.StatusOK
	if errored {
		status = http.StatusUnprocessableEntity
		if len(got) == 0 {
			got = []answer{{ev: pipeline.Event{Meta: errMeta}}}
		}
	}
	if len(got) > 1 {
		slices.SortStableFunc(got, func(a, b answer) int { return a.i - b.i })
	}
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	defer func() {
		if cap(*bp) <= maxPooledBody {
			s.bufs.Put(bp)
		}
	}()
	body := (*bp)[:0]
	switch {
	case req.ndjson || len(got) > 1:
		body = append(body, '[')
		for i, a := range got {
			if i > 0 {
				body = append(body, ',')
			}
			body = a.ev.AppendJSON(body)
		}
		body = append(body, ']')
	case len(got) == 1:
		body = got[0].ev.AppendJSON(body)
	default:
		x.write(http.StatusNoContent, "", nil)
		return
	}
	body = append(body, '\n')
	*bp = body
	x.write(status, jsonContentType, body) // copied by the engine
}

// Content types of answers.
const (
	jsonContentType = "application/json"
	textContentType = "text/plain; charset=utf-8"
)

// maxPooledBody bounds the response buffers kept for reuse.
const maxPooledBody = 64 << 10

// ndjsonTypes are the media types of bodies holding one event per line.
var ndjsonTypes = []string{"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}

// readEvents reads the request's events into req.events and sets
// req.ndjson; on error, status is the code to answer.
func (s *Server) readEvents(x exchange, req *request) (status int, err error) {
	body, err := x.body(s.opts.MaxBodyBytes)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			return http.StatusRequestEntityTooLarge, s.tooLargeError()
		}
		return http.StatusBadRequest, fmt.Errorf("reading body: %w", err)
	}
	check, _ := s.checks.Get().(*ijson.Checker)
	if check == nil {
		check = new(ijson.Checker)
	}
	defer s.checks.Put(check)
	base, err := baseMeta(check, x)
	if err != nil {
		return http.StatusBadRequest, err
	}
	req.ndjson = isNDJSON(x.header("Content-Type"))
	if !req.ndjson {
		ev, err := parseEvent(check, body, base)
		if err != nil {
			return http.StatusBadRequest, err
		}
		req.oneEvent[0] = ev
		req.events = req.oneEvent[:]
		return 0, nil
	}
	events, status, err := s.readNDJSON(check, body, base)
	if err != nil {
		return status, err
	}
	if len(events) == 1 {
		req.oneEvent[0] = events[0]
		events = req.oneEvent[:]
	}
	req.events = events
	return 0, nil
}

// isNDJSON reports whether contentType names a body of one event per line.
func isNDJSON(contentType string) bool {
	switch contentType {
	case "", "application/json":
		return false // the usual cases, without parsing
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	return slices.Contains(ndjsonTypes, mt)
}

// readNDJSON reads the events of an NDJSON body, one per non-blank line.
func (s *Server) readNDJSON(check *ijson.Checker, body []byte, base map[string]json.RawMessage) (events []pipeline.Event, status int, err error) {
	line := 0
	for len(body) > 0 {
		var text []byte
		text, body, _ = bytes.Cut(body, []byte{'\n'})
		line++
		if len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		if len(events) == s.opts.MaxEvents {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("more than %d events (max_events)", s.opts.MaxEvents)
		}
		ev, err := parseEvent(check, text, base)
		if err != nil {
			return nil, http.StatusBadRequest, fmt.Errorf("line %d: %w", line, err)
		}
		events = append(events, ev)
	}
	if len(events) == 0 {
		return nil, http.StatusBadRequest, errors.New("empty body: no events")
	}
	return events, 0, nil
}

// MetaHeader is the request header that may carry metadata for the
// events of a request whose body is bare data, as a JSON object; the
// query parameter "meta" does the same and wins over it.
const MetaHeader = "Flowrun-Meta"

// baseMeta returns the metadata given by the query or header, nil if none.
// It is checked as a body's meta is (see parseEvent).
func baseMeta(check *ijson.Checker, x exchange) (map[string]json.RawMessage, error) {
	text := x.query("meta")
	from := "query parameter meta"
	if text == "" {
		text, from = x.header(MetaHeader), "header "+MetaHeader
	}
	if text == "" {
		return nil, nil
	}
	b := []byte(text)
	rep, err := check.Check(b, "meta")
	switch {
	case err == nil && rep.BadString != nil:
		err = rep.BadString
	case err != nil && errors.Is(err, ijson.ErrSyntax):
		return nil, fmt.Errorf("%s must be a JSON object, got %q", from, text)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", from, ErrNotIJSON, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%s must be a JSON object, got %q", from, text)
	}
	return m, nil
}

// ErrNotIJSON reports JSON that is not I-JSON (RFC 7493): an object with
// two members of one name, or a member name or a meta string that is not
// valid Unicode. Components would read such text differently (the first or
// the last of two members), so the server refuses such a request body
// (or NDJSON line, or the meta given by the query or header) with 400, and
// the client sends an event whose response body is such to err.
var ErrNotIJSON = errors.New("not I-JSON")

// parseEvent reads one event: an envelope {"data":...,"meta":{...}} (an
// object with a "data" member and no member but "data" and "meta"), else a
// bare JSON value taken as data. base adds meta fields the event lacks.
// The text is checked by check, as every source checks its input: a
// duplicate member name is refused, a string value holding invalid UTF-8
// or a lone surrogate escape is repaired to U+FFFD in data and refused in
// meta (a repaired key or correlation would equal another one).
func parseEvent(check *ijson.Checker, text []byte, base map[string]json.RawMessage) (pipeline.Event, error) {
	text = bytes.TrimSpace(text)
	if len(text) == 0 {
		return pipeline.Event{}, errors.New("empty body: want a JSON value or an event {\"data\":...,\"meta\":{...}}")
	}
	rep, err := check.Check(text, "")
	switch {
	case errors.Is(err, ijson.ErrSyntax):
		var v any
		if uerr := json.Unmarshal(text, &v); uerr != nil {
			err = uerr // encoding/json says what is wrong in plainer words
		}
		return pipeline.Event{}, fmt.Errorf("malformed JSON: %w", err)
	case err != nil:
		return pipeline.Event{}, fmt.Errorf("%w: %w", ErrNotIJSON, err)
	}
	ds, de, hasData := check.Member(text, "data")
	ms, me, hasMeta := check.Member(text, "meta")
	n := check.Members()
	envelope := hasData && (n == 1 || hasMeta && n == 2)
	if rep.BadString != nil {
		if envelope {
			if bad := check.BadStringIn(text, "meta"); bad != nil {
				return pipeline.Event{}, fmt.Errorf("%w: %w", ErrNotIJSON, bad)
			}
		}
		// Only data holds such strings: repaired, so that every
		// component reads the same U+FFFD.
		if text, err = check.Repaired(text); err != nil {
			return pipeline.Event{}, fmt.Errorf("%w: %w", ErrNotIJSON, err)
		}
		ds, de, _ = check.Member(text, "data")
		ms, me, _ = check.Member(text, "meta")
	}
	ev := pipeline.Event{Data: text}
	if envelope {
		ev.Data = text[ds:de:de]
		switch {
		case !hasMeta || string(text[ms:me]) == "null":
		case text[ms] == '{':
			ev.Meta = text[ms:me:me]
		default:
			return pipeline.Event{}, fmt.Errorf("%w: \"meta\" must be a JSON object", pipeline.ErrInvalidEvent)
		}
	}
	if len(base) > 0 {
		meta, err := mergeMeta(ev.Meta, base)
		if err != nil {
			return pipeline.Event{}, err
		}
		ev.Meta = meta
	}
	return ev, nil
}

// mergeMeta returns meta with the fields of base it does not have.
func mergeMeta(meta []byte, base map[string]json.RawMessage) ([]byte, error) {
	m := map[string]json.RawMessage{}
	if len(meta) > 0 {
		if err := json.Unmarshal(meta, &m); err != nil {
			return nil, fmt.Errorf("%w: meta: %w", pipeline.ErrInvalidEvent, err)
		}
	}
	for k, v := range base {
		if _, ok := m[k]; !ok {
			m[k] = v
		}
	}
	return json.Marshal(m)
}
