package httpconn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
	"golang.org/x/time/rate"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// Errors a Client reports in meta.error (as text) and, for options, from
// NewClient; test them with errors.Is on the errors NewClient returns and
// in tests of the package.
var (
	// ErrStatus reports a response whose status is not 2xx, after the
	// retries its status allows.
	ErrStatus = errors.New("response status is not 2xx")
	// ErrResponseTooLarge reports a response body larger than
	// ClientOptions.MaxResponseBytes.
	ErrResponseTooLarge = errors.New("response body too large")
	// ErrRequest reports a request that got no response (connection
	// refused or reset, a timeout) after its retries.
	ErrRequest = errors.New("request failed")
)

// ClientPorts returns the output ports of a Client: "out" for responses
// with a 2xx status and "err" for everything else.
func ClientPorts() []string { return []string{pipeline.PortOut, pipeline.PortErr} }

// Client is the http_client node of a flow: for each event it renders the
// URL and headers from the event, sends one request (retrying as
// ClientOptions say) and emits the event on "out" with the response body as
// data and meta.http.status added, or on "err" with meta.error and
// meta.http describing the failure. It implements pipeline.Processor and
// pipeline.Closer. Process is safe for concurrent use; MaxInFlight and
// RateLimit hold across concurrent calls.
type Client struct {
	opts    ClientOptions
	url     *urlTemplate
	headers []headerTemplate
	base    http.Header // literal headers, copied into each request
	hc      *http.Client
	owned   *http.Transport // the default transport, closed by Close
	limiter *rate.Limiter   // nil: unlimited
	slots   chan struct{}   // one per request in flight
}

// headerTemplate is a header whose value has placeholders.
type headerTemplate struct {
	name string
	t    *template
}

var (
	_ pipeline.Processor = (*Client)(nil)
	_ pipeline.Closer    = (*Client)(nil)
)

// NewClient returns a Client for opts after filling defaults and
// validating them. Errors wrap ErrInvalidOption and name the option.
func NewClient(opts ClientOptions) (*Client, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ut, err := parseURLTemplate(opts.URL, opts.Expr)
	if err != nil {
		return nil, &optionError{option: "url", msg: err.Error(), err: fmt.Errorf("http_client: URL (url): %w: %w", ErrInvalidOption, err)}
	}
	c := &Client{opts: opts, url: ut, base: http.Header{}, slots: make(chan struct{}, opts.MaxInFlight)}
	for name, v := range opts.Headers {
		t, err := parseTemplate(v, false, opts.Expr)
		if err != nil {
			return nil, &optionError{option: "headers", msg: name + ": " + err.Error(),
				err: fmt.Errorf("http_client: Headers (headers) %s: %w: %w", name, ErrInvalidOption, err)}
		}
		if t.literal() {
			lit, _ := t.render(pipeline.Event{}) // no placeholder, no error
			c.base.Set(name, lit)
			continue
		}
		c.headers = append(c.headers, headerTemplate{name: name, t: t})
	}
	if opts.Body != BodyNone && c.base.Get("Content-Type") == "" && !c.templated("Content-Type") {
		c.base.Set("Content-Type", "application/json")
	}
	switch {
	case opts.BearerToken != "":
		c.base.Set("Authorization", "Bearer "+opts.BearerToken)
	case opts.BasicAuth != nil:
		r := http.Request{Header: http.Header{}}
		r.SetBasicAuth(opts.BasicAuth.User, opts.BasicAuth.Password)
		c.base.Set("Authorization", r.Header.Get("Authorization"))
	}
	rt := opts.Transport
	if rt == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = opts.MaxInFlight
		tr.MaxIdleConns = max(tr.MaxIdleConns, opts.MaxInFlight)
		c.owned, rt = tr, tr
	}
	c.hc = &http.Client{
		Transport: rt,
		// A redirect could lead to another host than the one configured:
		// a 3xx is returned as it is, and goes to err.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if opts.RateLimit > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(opts.RateLimit), opts.RateBurst)
	}
	return c, nil
}

// templated reports whether a header named name has placeholders.
func (c *Client) templated(name string) bool {
	for _, h := range c.headers {
		if http.CanonicalHeaderKey(h.name) == http.CanonicalHeaderKey(name) {
			return true
		}
	}
	return false
}

// Options returns the client's options with defaults filled in.
func (c *Client) Options() ClientOptions { return c.opts }

// Close closes the idle connections of the client's own transport (a
// Transport given in ClientOptions is left alone). It always returns nil.
func (c *Client) Close(context.Context) error {
	if c.owned != nil {
		c.owned.CloseIdleConnections()
	}
	return nil
}

// Process sends one request per event of the slice, up to MaxInFlight at once,
// and emits the outcomes in input order once all are known. Every event
// comes out exactly once, on "out" or "err". Process returns an error only
// when ctx is done before every outcome is known (the graph is failing):
// it then stops waiting at once and emits nothing.
func (c *Client) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	outcomes := make([]outcome, len(events))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(c.opts.MaxInFlight, len(events)) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(events) || ctx.Err() != nil {
					return
				}
				outcomes[i] = c.call(ctx, events[i])
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return fmt.Errorf("http_client: %w", context.Cause(ctx))
	}
	for i, ev := range events {
		o := &outcomes[i]
		if o.err != nil {
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, o.errMeta(ev.MetaJSON())))
			continue
		}
		emit.Emit(pipeline.PortOut, ev.Derive(o.data, o.outMeta(ev.MetaJSON())))
	}
	return nil
}

// outcome is what became of one event's request.
type outcome struct {
	status   int    // of the last response; 0 when none came
	attempts int    // requests sent
	data     []byte // out data (JSON)
	body     []byte // start of a failed response's body
	err      error  // nil: 2xx
}

// outMeta returns meta with "http" set to the status and attempts.
func (o *outcome) outMeta(meta []byte) []byte {
	return setMeta(meta, "", o.httpMeta())
}

// errMeta returns meta with "error" set to the failure and "http" to
// what is known of the response.
func (o *outcome) errMeta(meta []byte) []byte {
	return setMeta(meta, o.err.Error(), o.httpMeta())
}

// httpMeta builds {"status":..,"attempts":..,"body":..}: status and body
// only when a response came, body only for a failure.
func (o *outcome) httpMeta() []byte {
	dst := []byte(`{`)
	if o.status != 0 {
		dst = fmt.Appendf(dst, `"status":%d,`, o.status)
	}
	dst = fmt.Appendf(dst, `"attempts":%d`, o.attempts)
	if o.err != nil && o.status != 0 {
		dst = append(dst, `,"body":`...)
		dst = appendString(dst, string(o.body))
	}
	return append(dst, '}')
}

// setMeta returns a copy of meta with "http" set to h and, unless msg is
// empty, "error" set to msg; a fresh object when meta is not one.
func setMeta(meta []byte, msg string, h []byte) []byte {
	set := func(meta []byte) ([]byte, error) {
		out, err := sjson.SetRawBytes(meta, "http", h)
		if err == nil && msg != "" {
			out, err = sjson.SetRawBytes(out, "error", appendString(nil, msg))
		}
		if err == nil && !gjson.ValidBytes(out) {
			err = errors.New("invalid meta")
		}
		return out, err
	}
	if out, err := set(meta); err == nil {
		return out
	}
	out, _ := set([]byte("{}"))
	return out
}

// appendString appends s as a JSON string without HTML escaping; invalid
// UTF-8 becomes U+FFFD.
func appendString(dst []byte, s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return append(dst, bytes.TrimSuffix(b.Bytes(), []byte("\n"))...)
}

// call sends the event's request, retrying as the options allow, and
// returns its outcome. When ctx is done it returns at once; the outcome
// is then not used.
func (c *Client) call(ctx context.Context, ev pipeline.Event) outcome {
	u, err := c.url.render(ev)
	if err != nil {
		return outcome{err: fmt.Errorf("http_client: url: %w", err)}
	}
	where := c.opts.Method + " " + u.Scheme + "://" + u.Host + u.EscapedPath()
	hdr := c.base.Clone()
	for _, h := range c.headers {
		v, err := h.t.render(ev)
		if err != nil {
			return outcome{err: fmt.Errorf("http_client: %s: header %s: %w", where, h.name, err)}
		}
		hdr.Set(h.name, v)
	}
	var body []byte
	switch c.opts.Body {
	case BodyData:
		body = ev.DataJSON()
	case BodyEvent:
		body = ev.AppendJSON(nil)
	}
	retries := c.opts.MaxRetries
	if c.opts.NoRetry {
		retries = 0
	}
	var o outcome
	for {
		r := c.attempt(ctx, u, hdr, body)
		o.attempts++
		o.status, o.data, o.body = r.status, r.data, r.body
		if ctx.Err() != nil {
			return outcome{err: context.Cause(ctx)}
		}
		if r.err == nil && r.status/100 == 2 {
			return o
		}
		cause := r.err
		if cause == nil {
			cause = fmt.Errorf("%w: %s", ErrStatus, statusText(r.status))
		}
		if !r.retry || o.attempts > retries {
			note := ""
			if !r.retry {
				note = ", not retried"
			}
			o.err = fmt.Errorf("http_client: %s: %w (%s%s)", where, cause, plural(o.attempts, "attempt"), note)
			return o
		}
		wait := c.backoff(o.attempts - 1)
		if r.retryAfter > 0 {
			wait = min(r.retryAfter, c.opts.BackoffMax)
		}
		if err := sleep(ctx, wait); err != nil {
			return outcome{err: err}
		}
	}
}

// plural renders n and a noun: "1 attempt", "4 attempts".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// statusText renders a status as "503 Service Unavailable".
func statusText(code int) string {
	if t := http.StatusText(code); t != "" {
		return strconv.Itoa(code) + " " + t
	}
	return strconv.Itoa(code)
}

// backoff returns the wait before retry n (from 0): full jitter over
// min(BackoffMax, BackoffInitial × 2^n).
func (c *Client) backoff(n int) time.Duration {
	d := c.opts.BackoffInitial
	for range n {
		if d >= c.opts.BackoffMax/2 {
			d = c.opts.BackoffMax
			break
		}
		d *= 2
	}
	return c.opts.Jitter(min(d, c.opts.BackoffMax))
}

// sleep waits d or until ctx is done, returning ctx's cause then.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// attemptResult is the result of one request.
type attemptResult struct {
	status     int
	data       []byte // out data of a 2xx
	body       []byte // start of a non-2xx body
	err        error  // no (complete) response, or a body too large
	retry      bool   // worth another attempt
	retryAfter time.Duration
}

// drainBytes is how much of an unread response body is read to let its
// connection be reused; a longer rest closes the connection instead.
const drainBytes = 64 << 10

// attempt sends one request within ClientOptions.Timeout, waiting first
// for the rate limiter and a free slot of MaxInFlight.
func (c *Client) attempt(ctx context.Context, u *url.URL, hdr http.Header, body []byte) attemptResult {
	if c.limiter != nil {
		if err := c.limiter.Wait(ctx); err != nil {
			return attemptResult{err: err}
		}
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return attemptResult{err: context.Cause(ctx)}
	}
	defer func() { <-c.slots }()
	actx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, c.opts.Method, u.String(), rd)
	if err != nil {
		return attemptResult{err: err}
	}
	req.Header = hdr.Clone()
	resp, err := c.hc.Do(req)
	if err != nil {
		return attemptResult{err: fmt.Errorf("%w: %w", ErrRequest, unwrapURLError(err)), retry: true}
	}
	defer resp.Body.Close()
	r := attemptResult{status: resp.StatusCode}
	if resp.StatusCode/100 != 2 {
		r.body, _ = io.ReadAll(io.LimitReader(resp.Body, MaxErrorBodyBytes+1))
		if len(r.body) > MaxErrorBodyBytes {
			r.body = truncateUTF8(r.body, MaxErrorBodyBytes)
		}
		_, _ = io.CopyN(io.Discard, resp.Body, drainBytes)
		r.retry = resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
		r.retryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		return r
	}
	limit := c.opts.MaxResponseBytes
	if resp.ContentLength > limit {
		r.err = fmt.Errorf("%w: %d bytes, limit is %d (max_response_bytes)", ErrResponseTooLarge, resp.ContentLength, limit)
		return r
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		r.err, r.retry = fmt.Errorf("%w: reading the response: %w", ErrRequest, err), true
		return r
	}
	if int64(len(raw)) > limit {
		r.err = fmt.Errorf("%w: more than %d bytes (max_response_bytes)", ErrResponseTooLarge, limit)
		return r
	}
	r.data, r.err = responseData(raw, resp.Header.Get("Content-Type"))
	if r.err != nil {
		r.body = truncateUTF8(raw, MaxErrorBodyBytes) // what was refused, in meta.http.body
	}
	return r
}

// unwrapURLError drops the *url.Error around a transport error: the
// message names the URL already.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// responseData turns a 2xx body into event data: the body itself
// (compacted to one line) when it is valid JSON and the Content-Type is
// JSON or absent, null when it is empty, a JSON string otherwise. JSON
// that is not I-JSON (an object with two members of one name, which
// components would read differently) is refused with ErrNotIJSON; string
// values holding invalid UTF-8 or lone surrogate escapes are repaired to
// U+FFFD, as every source does with its input.
func responseData(raw []byte, contentType string) ([]byte, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return []byte("null"), nil
	}
	if isJSONType(contentType) {
		var check ijson.Checker
		rep, err := check.Check(raw, "data")
		switch {
		case err == nil:
			if rep.BadString != nil {
				raw = ijson.Repair(nil, raw)
			}
			var b bytes.Buffer
			if json.Compact(&b, raw) == nil {
				return b.Bytes(), nil
			}
		case !errors.Is(err, ijson.ErrSyntax):
			return nil, fmt.Errorf("response body: %w: %w", ErrNotIJSON, err)
		}
	}
	return appendString(nil, string(raw)), nil
}

// isJSONType reports whether a Content-Type is absent, application/json
// or a +json type.
func isJSONType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or malformed.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, 1<<20)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// truncateUTF8 cuts b to at most n bytes without splitting a character.
func truncateUTF8(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	for n > 0 && b[n]&0xC0 == 0x80 {
		n--
	}
	return b[:n]
}
