package httpconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// emitted is one event a Client emitted, with its port.
type emitted struct {
	port string
	ev   pipeline.Event
}

func (e emitted) meta(path string) gjson.Result { return gjson.GetBytes(e.ev.Meta, path) }

// recorder is a pipeline.Emitter keeping what it is given.
type recorder struct{ got []emitted }

func (r *recorder) Emit(port string, ev pipeline.Event) { r.got = append(r.got, emitted{port, ev}) }

// process runs evs through c as one slice.
func process(t *testing.T, c *Client, evs ...pipeline.Event) []emitted {
	t.Helper()
	return processCtx(t, context.Background(), c, evs...)
}

// processCtx is process under ctx.
func processCtx(t *testing.T, ctx context.Context, c *Client, evs ...pipeline.Event) []emitted {
	t.Helper()
	var rec recorder
	if err := c.Process(ctx, evs, &rec); err != nil {
		t.Fatalf("Process: %v", err)
	}
	if len(rec.got) != len(evs) {
		t.Fatalf("Process emitted %d events for %d", len(rec.got), len(evs))
	}
	return rec.got
}

// newClient builds a client for tests: no waiting between retries unless
// the options say otherwise.
func newClient(t *testing.T, opts ClientOptions) *Client {
	t.Helper()
	if opts.Jitter == nil {
		opts.Jitter = func(time.Duration) time.Duration { return 0 }
	}
	c, err := NewClient(opts)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func event(data, meta string) pipeline.Event {
	return pipeline.NewTracker(8, nil, nil).Track(7, pipeline.Event{Data: []byte(data), Meta: []byte(meta)})
}

// seen is a request as a test server saw it.
type seen struct {
	method, path, query, body string
	header                    http.Header
}

// recordingServer answers every request with status and body, recording
// the requests.
func recordingServer(t *testing.T, status int, contentType, body string) (*httptest.Server, func() []seen) {
	t.Helper()
	var mu sync.Mutex
	var reqs []seen
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, seen{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, string(b), r.Header.Clone()})
		mu.Unlock()
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []seen {
		mu.Lock()
		defer mu.Unlock()
		return append([]seen(nil), reqs...)
	}
}

func TestClientSendsTemplatedRequest(t *testing.T) {
	tests := []struct {
		name       string
		opts       ClientOptions
		data, meta string
		wantPath   string
		wantQuery  string
		wantHeader map[string]string
		wantBody   string
		wantMethod string
	}{
		{
			name:       "path, query and header from data",
			opts:       ClientOptions{URL: "/players/{data.player}/warnings?reason={data.reason}", Headers: map[string]string{"X-Player": "{data.player}", "X-Static": "a{{b}}"}, BearerToken: "s3cret"},
			data:       `{"player":"alice","reason":"spam & eggs"}`,
			meta:       `{"correlation":"c1"}`,
			wantMethod: "POST",
			wantPath:   "/players/alice/warnings",
			wantQuery:  "reason=spam+%26+eggs",
			wantHeader: map[string]string{"X-Player": "alice", "X-Static": "a{b}", "Authorization": "Bearer s3cret", "Content-Type": "application/json"},
			wantBody:   `{"player":"alice","reason":"spam & eggs"}`,
		},
		{
			name:       "a value cannot add path segments",
			opts:       ClientOptions{URL: "/players/{data.player}", Method: "PUT"},
			data:       `{"player":"../admin/x y"}`,
			wantMethod: "PUT",
			wantPath:   "/players/..%2Fadmin%2Fx%20y",
			wantBody:   `{"player":"../admin/x y"}`,
		},
		{
			name:       "numbers and meta",
			opts:       ClientOptions{URL: "/n/{data.n}/{meta.correlation}", Method: "GET", Headers: map[string]string{"X-N": "n={data.n + 1}"}},
			data:       `{"n":41}`,
			meta:       `{"correlation":"c2"}`,
			wantMethod: "GET",
			wantPath:   "/n/41/c2",
			wantHeader: map[string]string{"X-N": "n=42", "Content-Type": ""},
		},
		{
			name:       "whole event as body, basic auth",
			opts:       ClientOptions{URL: "/e", Body: BodyEvent, BasicAuth: &BasicAuth{User: "u", Password: "p"}},
			data:       `{"a":1}`,
			meta:       `{"correlation":3}`,
			wantMethod: "POST",
			wantPath:   "/e",
			wantHeader: map[string]string{"Authorization": "Basic dTpw"},
			wantBody:   `{"data":{"a":1},"meta":{"correlation":3}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, reqs := recordingServer(t, 200, "application/json", "{\n \"ok\": true\n}\n")
			tt.opts.URL = srv.URL + tt.opts.URL
			c := newClient(t, tt.opts)
			got := process(t, c, event(tt.data, tt.meta))
			if got[0].port != pipeline.PortOut {
				t.Fatalf("port %s, meta %s", got[0].port, got[0].ev.Meta)
			}
			if string(got[0].ev.Data) != `{"ok":true}` {
				t.Errorf("data %s, want the response compacted", got[0].ev.Data)
			}
			if got[0].ev.Origin().Index() != 7 {
				t.Errorf("origin %d, want 7 (the event derives from its input)", got[0].ev.Origin().Index())
			}
			if s := got[0].meta("http.status").Int(); s != 200 {
				t.Errorf("meta.http.status %d, meta %s", s, got[0].ev.Meta)
			}
			if want := gjson.Get(tt.meta, "correlation").Raw; got[0].meta("correlation").Raw != want {
				t.Errorf("meta.correlation %s, want %s", got[0].meta("correlation").Raw, want)
			}
			r := reqs()
			if len(r) != 1 {
				t.Fatalf("%d requests", len(r))
			}
			if r[0].method != tt.wantMethod || r[0].path != tt.wantPath || r[0].query != tt.wantQuery {
				t.Errorf("request %s %s?%s, want %s %s?%s", r[0].method, r[0].path, r[0].query, tt.wantMethod, tt.wantPath, tt.wantQuery)
			}
			if r[0].body != tt.wantBody {
				t.Errorf("body %q, want %q", r[0].body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := r[0].header.Get(k); got != v {
					t.Errorf("header %s: %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestClientResponseData(t *testing.T) {
	tests := []struct {
		name, contentType, body, want string
	}{
		{"json", "application/json; charset=utf-8", `[1, 2]`, `[1,2]`},
		{"json suffix", "application/problem+json", `{"a" : "<b>"}`, `{"a":"<b>"}`},
		{"no content type", "", `"hi"`, `"hi"`},
		{"text", "text/plain", `123`, `"123"`},
		{"invalid json", "application/json", `{oops`, `"{oops"`},
		{"empty", "application/json", ``, `null`},
		{"html kept readable", "text/html", `<p>&</p>`, `"<p>&</p>"`},
		{"lone surrogate repaired", "application/json", `{"a":"x\ud800"}`, `{"a":"x\ufffd"}`},
		{"duplicate key refused", "application/json", `{"a":1,"a":2}`, `err: not I-JSON: duplicate object key \"a\" at data.a`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header()["Content-Type"] = []string{tt.contentType}
				_, _ = io.WriteString(w, tt.body)
			}))
			defer srv.Close()
			c := newClient(t, ClientOptions{URL: srv.URL})
			got := process(t, c, event(`1`, ``))
			if want, ok := strings.CutPrefix(tt.want, "err: "); ok {
				if got[0].port != pipeline.PortErr || !strings.Contains(string(got[0].ev.Meta), want) {
					t.Errorf("%s %s %s, want err naming %s", got[0].port, got[0].ev.Data, got[0].ev.Meta, want)
				}
				return
			}
			if got[0].port != pipeline.PortOut || string(got[0].ev.Data) != tt.want {
				t.Errorf("%s %s, want out %s", got[0].port, got[0].ev.Data, tt.want)
			}
		})
	}
}

// scriptedServer answers its n-th request (from 0) with statuses[n] (the
// last one repeating), counting requests.
func scriptedServer(t *testing.T, statuses []int, header http.Header, body string) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(n.Add(1)) - 1
		st := statuses[min(i, len(statuses)-1)]
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(st)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

func TestClientRetries(t *testing.T) {
	tests := []struct {
		name         string
		statuses     []int
		body         string
		noRetry      bool
		wantPort     string
		wantRequests int32
		wantStatus   int64
		wantErr      string
	}{
		{"5xx then success", []int{503, 500, 200}, `"ok"`, false, pipeline.PortOut, 3, 200, ""},
		{"429 then success", []int{429, 200}, `"ok"`, false, pipeline.PortOut, 2, 200, ""},
		{"4xx not retried", []int{404, 200}, `no such player`, false, pipeline.PortErr, 1, 404, "response status is not 2xx: 404 Not Found (1 attempt, not retried)"},
		{"3xx not followed", []int{302, 200}, `moved`, false, pipeline.PortErr, 1, 302, "302 Found (1 attempt, not retried)"},
		{"5xx until retries run out", []int{503}, `busy`, false, pipeline.PortErr, 4, 503, "503 Service Unavailable (4 attempts)"},
		{"no retry", []int{503, 200}, `busy`, true, pipeline.PortErr, 1, 503, "(1 attempt)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := http.Header{"Location": {"http://elsewhere.invalid/"}}
			srv, n := scriptedServer(t, tt.statuses, hdr, tt.body)
			c := newClient(t, ClientOptions{URL: srv.URL + "/w", MaxRetries: 3, NoRetry: tt.noRetry})
			got := process(t, c, event(`{"player":"alice"}`, `{"correlation":"c9","source":"test"}`))[0]
			if got.port != tt.wantPort {
				t.Fatalf("port %s, want %s; meta %s", got.port, tt.wantPort, got.ev.Meta)
			}
			if n.Load() != tt.wantRequests {
				t.Errorf("server saw %d requests, want %d", n.Load(), tt.wantRequests)
			}
			if s := got.meta("http.status").Int(); s != tt.wantStatus {
				t.Errorf("meta.http.status %d, want %d", s, tt.wantStatus)
			}
			if a := got.meta("http.attempts").Int(); a != int64(tt.wantRequests) {
				t.Errorf("meta.http.attempts %d, want %d", a, tt.wantRequests)
			}
			if got.meta("correlation").String() != "c9" || got.meta("source").String() != "test" {
				t.Errorf("input meta not kept: %s", got.ev.Meta)
			}
			if tt.wantPort == pipeline.PortErr {
				if string(got.ev.Data) != `{"player":"alice"}` {
					t.Errorf("err data %s, want the input data", got.ev.Data)
				}
				if b := got.meta("http.body").String(); b != tt.body {
					t.Errorf("meta.http.body %q, want %q", b, tt.body)
				}
				if e := got.meta("error").String(); !strings.Contains(e, tt.wantErr) || !strings.Contains(e, "POST "+srv.URL+"/w") {
					t.Errorf("meta.error %q, want it to name the request and contain %q", e, tt.wantErr)
				}
			}
		})
	}
}

func TestClientErrorBodyTruncated(t *testing.T) {
	long := strings.Repeat("é", MaxErrorBodyBytes) // two bytes each
	srv, _ := scriptedServer(t, []int{400}, nil, long)
	c := newClient(t, ClientOptions{URL: srv.URL})
	got := process(t, c, event(`1`, ``))[0]
	b := got.meta("http.body").String()
	if len(b) > MaxErrorBodyBytes || len(b) < MaxErrorBodyBytes-1 || !strings.HasPrefix(long, b) {
		t.Errorf("meta.http.body is %d bytes, want the first %d bytes cut at a character", len(b), MaxErrorBodyBytes)
	}
}

func TestClientBackoffIsExponentialWithJitter(t *testing.T) {
	srv, n := scriptedServer(t, []int{500}, nil, "")
	var mu sync.Mutex
	var caps []time.Duration
	c := newClient(t, ClientOptions{
		URL: srv.URL, MaxRetries: 5, BackoffInitial: time.Millisecond, BackoffMax: 5 * time.Millisecond,
		Jitter: func(d time.Duration) time.Duration {
			mu.Lock()
			caps = append(caps, d)
			mu.Unlock()
			return d / 2
		},
	})
	process(t, c, event(`1`, ``))
	want := []time.Duration{1, 2, 4, 5, 5}
	if len(caps) != len(want) || n.Load() != 6 {
		t.Fatalf("jitter asked for %v over %d requests, want %v ms over 6", caps, n.Load(), want)
	}
	for i := range want {
		if caps[i] != want[i]*time.Millisecond {
			t.Errorf("retry %d: jitter over %v, want %v", i, caps[i], want[i]*time.Millisecond)
		}
	}
}

func TestFullJitter(t *testing.T) {
	seenLow, seenHigh := false, false
	for range 1000 {
		d := fullJitter(100)
		if d < 0 || d > 100 {
			t.Fatalf("fullJitter(100) = %d", d)
		}
		seenLow = seenLow || d < 50
		seenHigh = seenHigh || d >= 50
	}
	if !seenLow || !seenHigh || fullJitter(0) != 0 {
		t.Errorf("fullJitter does not spread over [0, d]")
	}
}

func TestClientHonoursRetryAfter(t *testing.T) {
	tests := []struct {
		name       string
		retryAfter string
		backoffMax time.Duration
		minGap     time.Duration
	}{
		// The backoff itself is 0 (Jitter returns 0): any wait comes
		// from Retry-After.
		{"seconds", "1", 5 * time.Second, 900 * time.Millisecond},
		{"capped by backoff_max", "3600", 50 * time.Millisecond, 40 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var times []time.Time
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				times = append(times, time.Now())
				first := len(times) == 1
				mu.Unlock()
				if first {
					w.Header().Set("Retry-After", tt.retryAfter)
					w.WriteHeader(http.StatusTooManyRequests)
					return
				}
				_, _ = io.WriteString(w, `"ok"`)
			}))
			defer srv.Close()
			c := newClient(t, ClientOptions{URL: srv.URL, BackoffInitial: time.Millisecond, BackoffMax: tt.backoffMax})
			// A Retry-After not capped would hold Process for an hour.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			got := processCtx(t, ctx, c, event(`1`, ``))[0]
			if got.port != pipeline.PortOut || len(times) != 2 {
				t.Fatalf("port %s after %d requests", got.port, len(times))
			}
			if gap := times[1].Sub(times[0]); gap < tt.minGap {
				t.Errorf("retried after %v, want at least %v", gap, tt.minGap)
			}
		})
	}
}

func TestRetryAfterParse(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"2", 2 * time.Second}, {"0", 0}, {"-3", 0}, {"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.v, now); got != tt.want {
			t.Errorf("retryAfter(%q) = %v, want %v", tt.v, got, tt.want)
		}
	}
}

func TestClientConnectErrorRetriedThenErr(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	var retries atomic.Int32
	c := newClient(t, ClientOptions{URL: "http://" + addr + "/x", MaxRetries: 2, Jitter: func(time.Duration) time.Duration {
		retries.Add(1)
		return 0
	}})
	got := process(t, c, event(`1`, `{"correlation":1}`))[0]
	if got.port != pipeline.PortErr {
		t.Fatalf("port %s", got.port)
	}
	if a := got.meta("http.attempts").Int(); a != 3 || retries.Load() != 2 {
		t.Errorf("attempts %d with %d backoffs, want 3 and 2", a, retries.Load())
	}
	if got.meta("http.status").Exists() || got.meta("correlation").Int() != 1 {
		t.Errorf("meta %s: want no status, correlation kept", got.ev.Meta)
	}
	if e := got.meta("error").String(); !strings.Contains(e, "request failed") || !strings.Contains(e, "(3 attempts)") {
		t.Errorf("meta.error %q", e)
	}
}

func TestClientTimeoutPerAttempt(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		_, _ = io.ReadAll(r.Body) // so that the server notices the client hanging up
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
			_, _ = io.WriteString(w, `"late"`)
		}
	}))
	defer srv.Close()
	c := newClient(t, ClientOptions{URL: srv.URL, Timeout: 100 * time.Millisecond, MaxRetries: 1})
	start := time.Now()
	got := process(t, c, event(`1`, ``))[0]
	if got.port != pipeline.PortErr {
		t.Fatalf("port %s after %v", got.port, time.Since(start))
	}
	if e := got.meta("error").String(); !strings.Contains(e, "deadline exceeded") || !strings.Contains(e, "(2 attempts)") {
		t.Errorf("meta.error %q, want a timeout after 2 attempts", e)
	}
	if n.Load() != 2 {
		t.Errorf("server saw %d requests, want 2", n.Load())
	}
}

func TestClientResponseTooLarge(t *testing.T) {
	const limit = 64 << 10
	const streamed = 32 << 20
	tests := []struct {
		name    string
		stream  bool
		wantErr string
	}{
		// The declared length is refused before reading.
		{"declared length", false, fmt.Sprintf("%d bytes, limit is %d (max_response_bytes)", limit+1, limit)},
		{"streamed without length", true, fmt.Sprintf("more than %d bytes (max_response_bytes)", limit)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var requests atomic.Int32
			written := make(chan int, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				if !tt.stream {
					w.Header().Set("Content-Length", strconv.Itoa(limit+1))
					_, _ = w.Write(make([]byte, limit+1))
					written <- limit + 1
					return
				}
				chunk := []byte(strings.Repeat("x", 64<<10))
				total := 0
				for total < streamed {
					k, err := w.Write(chunk)
					total += k
					if err != nil {
						break
					}
					w.(http.Flusher).Flush()
				}
				written <- total
			}))
			defer srv.Close()
			c := newClient(t, ClientOptions{URL: srv.URL, MaxResponseBytes: limit})
			got := process(t, c, event(`1`, ``))[0]
			if got.port != pipeline.PortErr {
				t.Fatalf("port %s, data of %d bytes", got.port, len(got.ev.Data))
			}
			if e := got.meta("error").String(); !strings.Contains(e, "response body too large: "+tt.wantErr) || !strings.Contains(e, "not retried") {
				t.Errorf("meta.error %q", e)
			}
			if requests.Load() != 1 {
				t.Errorf("%d requests, want 1 (not retried)", requests.Load())
			}
			select {
			case w := <-written:
				if tt.stream && w >= streamed {
					t.Errorf("the server wrote all %d bytes: the client read past its limit", w)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the server's handler did not end: the client kept the connection open")
			}
		})
	}
}

func TestClientMaxInFlight(t *testing.T) {
	const limit, events = 3, 20
	var cur, peak atomic.Int32
	full := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if c <= p || peak.CompareAndSwap(p, c) {
				break
			}
		}
		if c >= limit {
			once.Do(func() { close(full) })
		}
		// Hold the first requests until limit are in flight, so that the
		// peak is reached however slow the machine, then overlap.
		select {
		case <-full:
		case <-time.After(10 * time.Second):
		}
		time.Sleep(5 * time.Millisecond)
		_, _ = io.WriteString(w, `"ok"`)
	}))
	defer srv.Close()
	c := newClient(t, ClientOptions{URL: srv.URL, MaxInFlight: limit})
	evs := make([]pipeline.Event, events)
	for i := range evs {
		evs[i] = event(strconv.Itoa(i), ``)
	}
	for _, g := range process(t, c, evs...) {
		if g.port != pipeline.PortOut {
			t.Fatalf("port %s: %s", g.port, g.ev.Meta)
		}
	}
	if p := peak.Load(); p != limit {
		t.Errorf("at most %d requests were in flight, want exactly %d", p, limit)
	}
}

func TestClientRateLimit(t *testing.T) {
	const events, perSecond = 8, 20
	srv, n := scriptedServer(t, []int{200}, nil, `1`)
	c := newClient(t, ClientOptions{URL: srv.URL, RateLimit: perSecond, RateBurst: 1})
	evs := make([]pipeline.Event, events)
	for i := range evs {
		evs[i] = event(`1`, ``)
	}
	start := time.Now()
	process(t, c, evs...)
	// 8 requests at 20/s with a burst of 1 take at least 7/20 s; a
	// slow machine only makes it longer.
	if el := time.Since(start); el < (events-1)*time.Second/perSecond-20*time.Millisecond {
		t.Errorf("%d requests took %v, want at least %v", n.Load(), el, (events-1)*time.Second/perSecond)
	}
}

func TestClientKeepsInputOrder(t *testing.T) {
	const events = 8
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		// Later events answer first; odd ones fail.
		time.Sleep(time.Duration(events-i) * 15 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		if i%2 == 1 {
			w.WriteHeader(http.StatusBadRequest)
		}
		fmt.Fprint(w, i)
	}))
	defer srv.Close()
	c := newClient(t, ClientOptions{URL: srv.URL + "/{data}"})
	evs := make([]pipeline.Event, events)
	for i := range evs {
		evs[i] = event(strconv.Itoa(i), fmt.Sprintf(`{"correlation":%d}`, i))
	}
	for i, g := range process(t, c, evs...) {
		if g.meta("correlation").Int() != int64(i) || string(g.ev.Data) != strconv.Itoa(i) {
			t.Errorf("output %d is %s %s, want event %d", i, g.ev.Data, g.ev.Meta, i)
		}
		if want := []string{pipeline.PortOut, pipeline.PortErr}[i%2]; g.port != want {
			t.Errorf("output %d on %s, want %s", i, g.port, want)
		}
	}
}

func TestClientTemplateErrors(t *testing.T) {
	tests := []struct {
		name, url, data, wantErr string
		headers                  map[string]string
	}{
		{"missing field", "/p/{data.player}", `{"name":"x"}`, "{data.player}: template cannot be rendered: the value is missing", nil},
		{"object value", "/p/{data.player}", `{"player":{"id":1}}`, "the value is object", nil},
		{"dot-dot segment", "/p/{data.player}/x", `{"player":".."}`, `the value ".." cannot be a path segment`, nil},
		{"empty segment", "/p/{data.player}", `{"player":""}`, `the value "" cannot be a path segment`, nil},
		{"evaluation error", "/p/{data.n * 2}", `{"n":"x"}`, "template cannot be rendered", nil},
		{"header control character", "/p", `{"p":"a\r\nX-Evil: 1"}`, "header X-P: {data.p}: template cannot be rendered: the value holds a control character", map[string]string{"X-P": "{data.p}"}},
		{"header missing", "/p", `{}`, "header X-P: {data.p}: template cannot be rendered: the value is missing", map[string]string{"X-P": "{data.p}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, n := scriptedServer(t, []int{200}, nil, `1`)
			c := newClient(t, ClientOptions{URL: srv.URL + tt.url, Headers: tt.headers})
			got := process(t, c, event(tt.data, `{"correlation":"k"}`))[0]
			if got.port != pipeline.PortErr || n.Load() != 0 {
				t.Fatalf("port %s after %d requests, want err and none", got.port, n.Load())
			}
			if e := got.meta("error").String(); !strings.Contains(e, tt.wantErr) {
				t.Errorf("meta.error %q, want %q", e, tt.wantErr)
			}
			if got.meta("correlation").String() != "k" || got.meta("http.attempts").Int() != 0 || string(got.ev.Data) != tt.data {
				t.Errorf("err event %s %s: want input data, correlation, 0 attempts", got.ev.Data, got.ev.Meta)
			}
		})
	}
}

func TestNewClientRefuses(t *testing.T) {
	tests := []struct {
		name    string
		opts    ClientOptions
		wantErr string
	}{
		{"no url", ClientOptions{}, "URL (url)"},
		{"host from a placeholder", ClientOptions{URL: "http://{data.host}/x"}, "placeholders cannot set the host"},
		{"host suffix from a placeholder", ClientOptions{URL: "http://example.com{data.path}"}, "may not stand in the scheme or host"},
		{"port from a placeholder", ClientOptions{URL: "http://example.com:{data.port}/x"}, "may not stand in the scheme or host"},
		{"userinfo host trick", ClientOptions{URL: "http://example.com@{data.host}/"}, "placeholders cannot set the host"},
		{"scheme from a placeholder", ClientOptions{URL: "{data.scheme}://example.com/"}, "must start with http:// or https://"},
		{"other scheme", ClientOptions{URL: "ftp://example.com/"}, "must start with http:// or https://"},
		{"relative", ClientOptions{URL: "/x"}, "must start with http"},
		{"credentials", ClientOptions{URL: "http://u:p@example.com/"}, "credentials in the URL"},
		{"lone brace", ClientOptions{URL: "http://example.com/a}b"}, "a lone '}'"},
		{"unclosed placeholder", ClientOptions{URL: "http://example.com/{data.x"}, "not closed"},
		{"empty placeholder", ClientOptions{URL: "http://example.com/{}"}, "empty placeholder"},
		{"bad expression", ClientOptions{URL: "http://example.com/{data.x +}"}, "URL (url)"},
		{"bad method", ClientOptions{URL: "http://h/", Method: "GE T"}, "Method (method)"},
		{"bad body", ClientOptions{URL: "http://h/", Body: "xml"}, "Body (body)"},
		{"bad header name", ClientOptions{URL: "http://h/", Headers: map[string]string{"X Y": "1"}}, "Headers (headers)"},
		{"header line break", ClientOptions{URL: "http://h/", Headers: map[string]string{"X": "a\nb"}}, "the value of X holds a control character"},
		{"header NUL", ClientOptions{URL: "http://h/", Headers: map[string]string{"X": "a{data.x}\x00"}}, "the value of X holds a control character"},
		{"token line break", ClientOptions{URL: "http://h/", BearerToken: "t\r\nX: y"}, "BearerToken (bearer_token)"},
		{"bad header template", ClientOptions{URL: "http://h/", Headers: map[string]string{"X": "{data."}}, "Headers (headers) X"},
		{"two auths", ClientOptions{URL: "http://h/", BearerToken: "t", Headers: map[string]string{"authorization": "x"}}, "at most one of"},
		{"negative timeout", ClientOptions{URL: "http://h/", Timeout: -1}, "Timeout (timeout)"},
		{"negative retries", ClientOptions{URL: "http://h/", MaxRetries: -1}, "MaxRetries (max_retries)"},
		{"backoff max below initial", ClientOptions{URL: "http://h/", BackoffInitial: time.Second, BackoffMax: time.Millisecond}, "BackoffMax (backoff_max)"},
		{"negative in flight", ClientOptions{URL: "http://h/", MaxInFlight: -1}, "MaxInFlight (max_in_flight)"},
		{"negative rate", ClientOptions{URL: "http://h/", RateLimit: -1}, "RateLimit (rate_limit)"},
		{"negative burst", ClientOptions{URL: "http://h/", RateBurst: -1}, "RateBurst (rate_burst)"},
		{"negative response limit", ClientOptions{URL: "http://h/", MaxResponseBytes: -1}, "MaxResponseBytes (max_response_bytes)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(tt.opts)
			if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewClient: %v, want ErrInvalidOption mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestClientDefaults(t *testing.T) {
	c, err := NewClient(ClientOptions{URL: "http://example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	o := c.Options()
	if o.Method != "POST" || o.Body != BodyData || o.Timeout != DefaultTimeout || o.MaxRetries != DefaultMaxRetries ||
		o.MaxInFlight != DefaultMaxInFlight || o.MaxResponseBytes != DefaultMaxResponseBytes || o.RateLimit != 0 ||
		o.BackoffInitial != DefaultBackoffInitial || o.BackoffMax != DefaultBackoffMax || o.Jitter == nil {
		t.Errorf("defaults not filled: %+v", o)
	}
	g, _ := NewClient(ClientOptions{URL: "http://example.com/", Method: "GET"})
	if g.Options().Body != BodyNone {
		t.Errorf("GET sends %q by default, want none", g.Options().Body)
	}
}

func TestClientStopsOnCancel(t *testing.T) {
	tests := []struct {
		name   string
		status int // 0: the server holds the request until released
		rate   float64
	}{
		{"request in flight", 0, 0},
		{"waiting to retry", http.StatusServiceUnavailable, 0},
		{"waiting for the rate limit", http.StatusOK, 0.001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadAll(r.Body)
				if tt.status != 0 {
					w.WriteHeader(tt.status)
					return
				}
				select {
				case <-r.Context().Done():
				case <-release:
				}
			}))
			defer srv.Close()
			defer close(release)
			// An hour of timeout and of backoff: only the cancellation
			// can end Process in time.
			c := newClient(t, ClientOptions{URL: srv.URL, Timeout: time.Hour, BackoffInitial: time.Hour, BackoffMax: time.Hour,
				RateLimit: tt.rate, Jitter: func(d time.Duration) time.Duration { return d }})
			ctx, cancel := context.WithCancelCause(context.Background())
			stop := errors.New("graph failing")
			time.AfterFunc(50*time.Millisecond, func() { cancel(stop) })
			var rec recorder
			done := make(chan error, 1)
			go func() { done <- c.Process(ctx, []pipeline.Event{event(`1`, ``), event(`2`, ``)}, &rec) }()
			select {
			case err := <-done:
				if !errors.Is(err, stop) || len(rec.got) != 0 {
					t.Errorf("Process: %v with %d events, want the cancellation cause and nothing emitted", err, len(rec.got))
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Process did not return after its context was cancelled")
			}
		})
	}
}

// TestURLTemplateKeepsHost checks the second line of defence: a rendered
// URL whose scheme or host differs from the configured ones is refused.
// Escaping makes it unreachable from NewClient's templates, so the check
// is driven directly.
func TestURLTemplateKeepsHost(t *testing.T) {
	ut, err := parseURLTemplate("http://example.com/{data}", expr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ut.render(event(`"x"`, ``)); err != nil {
		t.Fatalf("render: %v", err)
	}
	for _, other := range []urlTemplate{{ut.template, "http", "evil.example"}, {ut.template, "https", "example.com"}} {
		if _, err := other.render(event(`"x"`, ``)); !errors.Is(err, ErrTemplate) || !strings.Contains(err.Error(), "does not keep the configured") {
			t.Errorf("render with %s://%s configured: %v, want ErrTemplate", other.scheme, other.host, err)
		}
	}
}
