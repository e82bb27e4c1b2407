package httpconn_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/httpconn"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

var quiet = slog.New(slog.DiscardHandler)

// engines are the HTTP implementations every server test runs against.
var engines = []httpconn.Engine{httpconn.EngineNetHTTP, httpconn.EngineFastHTTP}

// eachEngine runs f as a subtest per engine.
func eachEngine(t *testing.T, f func(t *testing.T, eng httpconn.Engine)) {
	t.Helper()
	for _, eng := range engines {
		t.Run(strings.ReplaceAll(string(eng), "/", ""), func(t *testing.T) { f(t, eng) })
	}
}

// withEngine sets the engine of the http_server "api" of a flow's text.
func withEngine(flow string, eng httpconn.Engine) string {
	return strings.Replace(flow, "type: http_server,", "type: http_server, engine: "+string(eng)+",", 1)
}

// testProc answers by data.op: ok (echo on out), err (err port with
// meta.error), drop, two (two events), slow (echo after 300ms), fail (the
// node fails).
func testProc(ctx context.Context, batch []pipeline.Event, emit pipeline.Emitter) error {
	for _, ev := range batch {
		switch gjson.GetBytes(ev.Data, "op").String() {
		case "ok":
			emit.Emit(pipeline.PortOut, ev.Derive(ev.Data, ev.Meta))
		case "err":
			meta := `{"error":"bad op"`
			if c := gjson.GetBytes(ev.Meta, "correlation"); c.Exists() {
				meta += `,"correlation":` + c.Raw
			}
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, []byte(meta+`}`)))
		case "two":
			emit.Emit(pipeline.PortOut, ev.Derive([]byte(`1`), ev.Meta))
			emit.Emit(pipeline.PortOut, ev.Derive([]byte(`2`), ev.Meta))
		case "slow":
			time.Sleep(300 * time.Millisecond)
			emit.Emit(pipeline.PortOut, ev.Derive(ev.Data, ev.Meta))
		case "fail":
			return errors.New("boom")
		}
	}
	return nil
}

// running is a graph api -> proc -> api/in being run.
type running struct {
	srv    *httpconn.Server // nil for flows built from YAML
	url    string
	client *http.Client
	cancel context.CancelFunc
	done   chan error // receives Run's result once

	once sync.Once
	err  error
}

// wait returns the graph's result, failing t if it does not stop.
func (r *running) wait(t testing.TB) error {
	t.Helper()
	r.once.Do(func() {
		select {
		case r.err = <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("graph did not stop")
		}
	})
	return r.err
}

// stop cancels the graph and waits for it.
func (r *running) stop(t testing.TB) error {
	t.Helper()
	r.cancel()
	return r.wait(t)
}

// runServer runs a server with opts, feeding proc, answered from proc's
// out and err ports.
func runServer(t *testing.T, opts httpconn.ServerOptions, proc pipeline.ProcessorFunc) *running {
	t.Helper()
	return runServerGraph(t, opts, pipeline.Options{}, proc)
}

// runServerGraph is runServer with graph options.
func runServerGraph(t *testing.T, opts httpconn.ServerOptions, gopts pipeline.Options, proc pipeline.ProcessorFunc) *running {
	t.Helper()
	gopts.Logger = quiet
	opts.Address = "127.0.0.1:0"
	opts.Logger = quiet
	s, err := httpconn.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	g := pipeline.New(gopts)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(g.AddSource("api", s, pipeline.PortOut))
	must(g.AddProcessor("proc", proc, pipeline.PortOut, pipeline.PortErr))
	must(g.AddProcessor("api/in", s.Sink()))
	must(g.Link("api", pipeline.PortOut, "proc"))
	must(g.Link("proc", pipeline.PortOut, "api/in"))
	must(g.Link("proc", pipeline.PortErr, "api/in"))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{srv: s, url: "http://" + s.Addr().String(), client: &http.Client{Timeout: 20 * time.Second}, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- g.Run(ctx) }()
	t.Cleanup(func() { _ = r.stop(t) })
	waitReady(t, r.client, r.url)
	return r
}

func waitReady(t testing.TB, c *http.Client, url string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := c.Get(url + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("server never ready")
}

type reply struct {
	proto  int // major version
	status int
	body   string
	header http.Header
}

func post(t *testing.T, c *http.Client, url, contentType, body string, header map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{proto: resp.ProtoMajor, status: resp.StatusCode, body: strings.TrimSpace(string(b)), header: resp.Header}
}

// TestServerStatus checks each status code and its body.
func TestServerStatus(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		r := runServer(t, httpconn.ServerOptions{Engine: eng, MaxBodyBytes: 256, MaxEvents: 3, Token: "s3cret"}, testProc)
		auth := map[string]string{"Authorization": "Bearer s3cret"}
		tests := []struct {
			name        string
			path        string
			contentType string
			body        string
			header      map[string]string
			status      int
			want        string // body, or a substring of it for errors
		}{
			{"envelope", "/", "", `{"data":{"op":"ok"},"meta":{"correlation":7}}`, auth, 200, `{"data":{"op":"ok"},"meta":{"correlation":7}}`},
			{"bare data", "/", "application/json", `{"op":"ok","x":1}`, auth, 200, `{"data":{"op":"ok","x":1},"meta":{}}`},
			{"meta from query", "/?meta=%7B%22correlation%22%3A%22q%22%7D", "", `{"op":"ok"}`, auth, 200, `{"data":{"op":"ok"},"meta":{"correlation":"q"}}`},
			{"meta from header", "/", "", `{"op":"ok"}`, map[string]string{"Authorization": "Bearer s3cret", "Flowrun-Meta": `{"correlation":"h"}`}, 200, `{"data":{"op":"ok"},"meta":{"correlation":"h"}}`},
			{"err port", "/", "", `{"data":{"op":"err"},"meta":{"correlation":8}}`, auth, 422, `{"data":{"op":"err"},"meta":{"error":"bad op","correlation":8}}`},
			{"two events", "/", "", `{"data":{"op":"two"},"meta":{"correlation":9}}`, auth, 200, `[{"data":1,"meta":{"correlation":9}},{"data":2,"meta":{"correlation":9}}]`},
			{"dropped", "/", "", `{"op":"drop"}`, auth, 204, ``},
			{"ndjson", "/", "application/x-ndjson", "{\"data\":{\"op\":\"ok\"},\"meta\":{\"correlation\":1}}\n\n{\"data\":{\"op\":\"drop\"}}\n{\"op\":\"ok\"}\n", auth, 200,
				`[{"data":{"op":"ok"},"meta":{"correlation":1}},{"data":{"op":"ok"},"meta":{}}]`},
			{"ndjson with err", "/", "application/x-ndjson", "{\"op\":\"ok\"}\n{\"op\":\"err\"}\n", auth, 422, `[{"data":{"op":"ok"},"meta":{}},{"data":{"op":"err"},"meta":{"error":"bad op"}}]`},
			{"object with other keys is data", "/", "", `{"op":"ok","data":1}`, auth, 200, `{"data":{"op":"ok","data":1},"meta":{}}`},
			{"null meta", "/", "", `{"data":{"op":"ok"},"meta":null}`, auth, 200, `{"data":{"op":"ok"},"meta":{}}`},
			{"meta not an object", "/", "", `{"data":{"op":"ok"},"meta":5}`, auth, 400, `"meta\" must be a JSON object`},
			{"malformed json", "/", "", `{"op":`, auth, 400, `malformed JSON`},
			// I-JSON: what two components could read differently is refused,
			// as every source refuses it.
			{"duplicate meta key", "/", "", `{"data":{"op":"ok"},"meta":{"correlation":1,"correlation":2}}`, auth, 400, `duplicate object key \"correlation\" at meta.correlation`},
			{"duplicate data member", "/", "", `{"data":{"op":"ok"},"data":{"op":"err"}}`, auth, 400, `duplicate object key \"data\"`},
			{"duplicate key in data", "/", "", `{"data":{"op":"ok","op":"err"}}`, auth, 400, `duplicate object key \"op\" at data.op`},
			{"duplicate key in bare data", "/", "", `{"op":"ok","op":"err"}`, auth, 400, `not I-JSON: duplicate object key \"op\"`},
			{"duplicate key in ndjson line", "/", "application/x-ndjson", "{\"op\":\"ok\"}\n{\"op\":\"ok\",\"op\":1}\n", auth, 400, `line 2: not I-JSON`},
			{"duplicate key in header meta", "/", "", `{"op":"ok"}`, map[string]string{"Authorization": "Bearer s3cret", "Flowrun-Meta": `{"correlation":"a","correlation":"b"}`}, 400, `header Flowrun-Meta: not I-JSON: duplicate object key`},
			{"lone surrogate in meta", "/", "", `{"data":{"op":"ok"},"meta":{"correlation":"\ud800"}}`, auth, 400, `lone surrogate escape at meta.correlation`},
			{"lone surrogate in data repaired", "/", "", `{"data":{"op":"ok","s":"a\ud800"},"meta":{"correlation":3}}`, auth, 200, `{"data":{"op":"ok","s":"a\ufffd"},"meta":{"correlation":3}}`},
			{"invalid UTF-8 in bare data repaired", "/", "", "{\"op\":\"ok\",\"s\":\"a\xff\"}", auth, 200, "{\"data\":{\"op\":\"ok\",\"s\":\"a\uFFFD\"},\"meta\":{}}"},
			{"malformed ndjson line", "/", "application/x-ndjson", "{\"op\":\"ok\"}\n{nope\n", auth, 400, `line 2`},
			{"empty body", "/", "", ``, auth, 400, `empty body`},
			{"bad meta", "/?meta=5", "", `1`, auth, 400, `query parameter meta`},
			{"too large", "/", "", `{"data":"` + strings.Repeat("x", 300) + `"}`, auth, 413, `max_body_bytes`},
			{"too many events", "/", "application/x-ndjson", "1\n2\n3\n4\n", auth, 413, `max_events`},
			{"no token", "/", "", `{"op":"ok"}`, nil, 401, `bearer token`},
			{"wrong token", "/", "", `{"op":"ok"}`, map[string]string{"Authorization": "Bearer s3creT"}, 401, `bearer token`},
			{"wrong path", "/other", "", `{"op":"ok"}`, auth, 404, `no such path`},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got := post(t, r.client, r.url+tt.path, tt.contentType, tt.body, tt.header)
				if got.status != tt.status {
					t.Fatalf("status %d, want %d (body %s)", got.status, tt.status, got.body)
				}
				if tt.status < 300 || tt.status == 422 {
					if got.body != tt.want {
						t.Fatalf("body\n got %s\nwant %s", got.body, tt.want)
					}
				} else if !strings.Contains(got.body, tt.want) {
					t.Fatalf("body %s does not mention %q", got.body, tt.want)
				}
			})
		}
		resp, err := r.client.Get(r.url + "/ping")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("ping: %v %v", resp, err)
		}
		resp.Body.Close()
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
	})
}

// TestServerTimeout checks 504 when the answer takes longer than timeout.
func TestServerTimeout(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		r := runServer(t, httpconn.ServerOptions{Engine: eng, Timeout: 50 * time.Millisecond}, testProc)
		got := post(t, r.client, r.url, "", `{"op":"slow"}`, nil)
		if got.status != 504 || !strings.Contains(got.body, "timeout") {
			t.Fatalf("got %d %s, want 504 naming the timeout", got.status, got.body)
		}
	})
}

// TestServerFull checks 503 with Retry-After once max_in_flight requests
// are in flight, and that a request that timed out still holds its place
// until its events are done.
func TestServerFull(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		release := make(chan struct{})
		r := runServer(t, httpconn.ServerOptions{Engine: eng, MaxInFlight: 2, Timeout: 50 * time.Millisecond}, func(ctx context.Context, batch []pipeline.Event, emit pipeline.Emitter) error {
			<-release
			return testProc(ctx, batch, emit)
		})
		for i := range 2 {
			if got := post(t, r.client, r.url, "", `{"op":"ok"}`, nil); got.status != 504 {
				close(release)
				t.Fatalf("held request %d answered %d %s, want 504", i, got.status, got.body)
			}
		}
		got := post(t, r.client, r.url, "", `{"op":"ok"}`, nil)
		close(release)
		if got.status != 503 || got.header.Get("Retry-After") != httpconn.RetryAfter || !strings.Contains(got.body, "max_in_flight") {
			t.Fatalf("third request: %d %v %s, want 503 with Retry-After", got.status, got.header, got.body)
		}
		deadline := time.Now().Add(20 * time.Second)
		for post(t, r.client, r.url, "", `{"op":"ok"}`, nil).status != 200 {
			if time.Now().After(deadline) {
				t.Fatal("in-flight places never released")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestServerFlowFailed checks 500 when a node fails.
func TestServerFlowFailed(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		r := runServer(t, httpconn.ServerOptions{Engine: eng}, testProc)
		got := post(t, r.client, r.url, "", `{"op":"fail"}`, nil)
		if got.status != 500 {
			t.Fatalf("status %d (%s), want 500", got.status, got.body)
		}
		if err := r.stop(t); err == nil {
			t.Fatal("graph did not report the failure")
		}
	})
}

// TestServerAsync checks 202 and that the events still reach the flow.
func TestServerAsync(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		var mu sync.Mutex
		var seen []string
		r := runServer(t, httpconn.ServerOptions{Engine: eng, Response: httpconn.ResponseAsync}, func(_ context.Context, batch []pipeline.Event, _ pipeline.Emitter) error {
			mu.Lock()
			defer mu.Unlock()
			for _, ev := range batch {
				seen = append(seen, string(ev.Data))
			}
			return nil
		})
		got := post(t, r.client, r.url, "application/x-ndjson", "1\n2\n", nil)
		if got.status != 202 || got.body != `{"accepted":2}` {
			t.Fatalf("got %d %s, want 202 {\"accepted\":2}", got.status, got.body)
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		if strings.Join(seen, ",") != "1,2" {
			t.Fatalf("flow saw %v", seen)
		}
	})
}

// TestServerShutdown checks that requests accepted before the flow is
// cancelled are answered, including those queued while the server's
// flush was blocked by a full graph, and that later ones are refused.
func TestServerShutdown(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		started := make(chan struct{}, 16)
		release := make(chan struct{})
		// Queue depth 1 and MaxCoalesce 1: one request in the processor, one
		// in its queue, one in the server's blocked flush, the rest queued in
		// the server.
		r := runServerGraph(t, httpconn.ServerOptions{Engine: eng, Timeout: 5 * time.Second}, pipeline.Options{QueueDepth: 1, MaxCoalesce: 1},
			func(ctx context.Context, batch []pipeline.Event, emit pipeline.Emitter) error {
				started <- struct{}{}
				<-release
				return testProc(ctx, batch, emit)
			})
		const n = 8
		replies := make(chan reply, n)
		for i := range n {
			go func() {
				resp, err := r.client.Post(r.url, "", strings.NewReader(fmt.Sprintf(`{"data":{"op":"ok"},"meta":{"correlation":%d}}`, i)))
				if err != nil {
					replies <- reply{status: -1, body: err.Error()}
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				replies <- reply{status: resp.StatusCode, body: strings.TrimSpace(string(b))}
			}()
		}
		<-started // one request is in the processor
		waitInFlight(t, r, n)
		r.cancel()
		time.Sleep(50 * time.Millisecond)
		close(release)
		for range n {
			if rep := <-replies; rep.status != 200 {
				t.Fatalf("reply %d %s, want 200 (accepted before the shutdown)", rep.status, rep.body)
			}
		}
		// Refused once shutdown began.
		if resp, err := r.client.Post(r.url, "", strings.NewReader(`{"op":"ok"}`)); err == nil {
			resp.Body.Close()
			if resp.StatusCode != 503 {
				t.Fatalf("request after shutdown: %d, want 503 or a refused connection", resp.StatusCode)
			}
		}
		if err := r.wait(t); err != nil {
			t.Fatal(err)
		}
		if _, err := r.client.Get(r.url + "/ping"); err == nil {
			t.Fatal("server still serving after the flow stopped")
		}
	})
}

// TestServerShutdownWaitsForAnswers checks that closing the server waits
// for the answers of requests whose events are still being processed.
func TestServerShutdownWaitsForAnswers(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		started := make(chan struct{}, 16)
		r := runServerGraph(t, httpconn.ServerOptions{Engine: eng, Timeout: 10 * time.Second}, pipeline.Options{MaxCoalesce: 1},
			func(ctx context.Context, batch []pipeline.Event, emit pipeline.Emitter) error {
				started <- struct{}{}
				time.Sleep(100 * time.Millisecond)
				return testProc(ctx, batch, emit)
			})
		const n = 4
		replies := make(chan int, n)
		for range n {
			go func() {
				resp, err := r.client.Post(r.url, "", strings.NewReader(`{"op":"ok"}`))
				if err != nil {
					replies <- -1
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				replies <- resp.StatusCode
			}()
		}
		<-started
		waitInFlight(t, r, n)
		r.cancel()
		for range n {
			if s := <-replies; s != 200 {
				t.Fatalf("reply %d, want 200 (accepted before the shutdown)", s)
			}
		}
		if err := r.wait(t); err != nil {
			t.Fatal(err)
		}
	})
}

// waitInFlight waits until n requests are accepted by r's server.
func waitInFlight(t *testing.T, r *running, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); r.srv.InFlight() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests in flight, want %d", r.srv.InFlight(), n)
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key to dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "flowrun test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestServerTLS serves HTTPS with a self-signed certificate.
func TestServerTLS(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		certFile, keyFile, pool := selfSigned(t, t.TempDir())
		s, err := httpconn.NewServer(httpconn.ServerOptions{Engine: eng, Address: "127.0.0.1:0", TLSCert: certFile, TLSKey: keyFile, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		g := pipeline.New(pipeline.Options{Logger: quiet})
		_ = g.AddSource("api", s, pipeline.PortOut)
		_ = g.AddProcessor("proc", pipeline.ProcessorFunc(testProc), pipeline.PortOut, pipeline.PortErr)
		_ = g.AddProcessor("api/in", s.Sink())
		_ = g.Link("api", pipeline.PortOut, "proc")
		_ = g.Link("proc", pipeline.PortOut, "api/in")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()
		defer func() { cancel(); <-done }()
		// The client offers HTTP/2: net/http takes it, fasthttp (HTTP/1.1
		// only) must not.
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
		url := "https://" + s.Addr().String()
		waitReady(t, c, url)
		got := post(t, c, url, "", `{"data":{"op":"ok"},"meta":{"correlation":1}}`, nil)
		if got.status != 200 || got.body != `{"data":{"op":"ok"},"meta":{"correlation":1}}` {
			t.Fatalf("got %d %s", got.status, got.body)
		}
		wantProto := map[httpconn.Engine]int{httpconn.EngineNetHTTP: 2, httpconn.EngineFastHTTP: 1}[eng]
		if got.proto != wantProto {
			t.Fatalf("answered over HTTP/%d, want HTTP/%d", got.proto, wantProto)
		}
	})
}

// TestServerBodyLimitWhileReading checks that max_body_bytes is enforced
// while the body is read: a chunked body that goes past the limit and
// never ends is answered 413 at once, not when the client finishes.
func TestServerBodyLimitWhileReading(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		// Timeout (which also bounds reading a request) is longer than the
		// wait for the answer: only the limit can answer in time.
		r := runServer(t, httpconn.ServerOptions{Engine: eng, MaxBodyBytes: 1000, Timeout: time.Minute}, testProc)
		conn, err := net.Dial("tcp", r.srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		chunk := strings.Repeat("x", 4000)
		_, err = fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(chunk), chunk)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("no answer before the body ended: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 413 || !strings.Contains(string(b), "body larger than 1000 bytes (max_body_bytes)") {
			t.Fatalf("got %d %s, want 413 naming max_body_bytes", resp.StatusCode, b)
		}
	})
}

// TestServerPaths checks the routing of a server on a path of its own:
// events there, the health checks, and a JSON 404 elsewhere.
func TestServerPaths(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		r := runServer(t, httpconn.ServerOptions{Engine: eng, Path: "/events"}, testProc)
		tests := []struct {
			method, path string
			status       int
			want         string
		}{
			{"POST", "/events", 200, `{"data":{"op":"ok"},"meta":{}}`},
			{"POST", "/other", 404, `{"error":"no such path \"/other\": events are posted to /events"}`},
			{"POST", "/events/x", 404, `no such path`},
			{"GET", "/events", 405, `{"error":"events are sent with POST"}`},
			{"GET", "/ping", 200, "pong"},
			{"GET", "/ready", 200, "ready"},
		}
		for _, tc := range tests {
			req, _ := http.NewRequest(tc.method, r.url+tc.path, strings.NewReader(`{"op":"ok"}`))
			resp, err := r.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
				t.Errorf("%s %s: got %d %s, want %d with %s", tc.method, tc.path, resp.StatusCode, b, tc.status, tc.want)
			}
			if tc.status == 405 && resp.Header.Get("Allow") != "POST" {
				t.Errorf("405 without Allow: POST: %v", resp.Header)
			}
		}
	})
}

// TestServerEngineOption checks that an unknown engine is refused,
// naming the option.
func TestServerEngineOption(t *testing.T) {
	_, err := httpconn.NewServer(httpconn.ServerOptions{Address: "127.0.0.1:0", Engine: "nginx", Logger: quiet})
	if !errors.Is(err, httpconn.ErrInvalidOption) || !strings.Contains(err.Error(), "engine") {
		t.Fatalf("got %v, want ErrInvalidOption naming engine", err)
	}
}

// startFlow loads and runs a flow file's text with a kv store in a
// temporary directory; it returns the server's URL.
func startFlow(t testing.TB, src string) *running {
	t.Helper()
	src = strings.ReplaceAll(src, "DIR", t.TempDir())
	flow, diags, err := flows.LoadBytes("flow.yaml", []byte(src), builtin.NewRegistry())
	if err != nil {
		t.Fatalf("%v %v", err, diags)
	}
	res := component.NewResources()
	built, err := flow.Build(context.Background(), flows.BuildOptions{Resources: res, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	addr, ok := httpconn.ServerAddr(res, "api")
	if !ok {
		t.Fatal("no address for api")
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{url: "http://" + addr.String(), cancel: cancel, done: make(chan error, 1),
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}}
	go func() { r.done <- built.Run(ctx) }()
	t.Cleanup(func() { _ = r.stop(t) })
	waitReady(t, r.client, r.url)
	return r
}

const kvFlow = `
name: http-kv
connectors:
  api:   {type: http_server, address: 127.0.0.1:0, timeout: 30s}
  store: {type: kv, dir: DIR}
links:
  - api/out -> store/in
  - store/out -> api/in
  - store/err -> api/in
`

// TestServerKV runs puts and gets through a kv store on Pebble.
func TestServerKV(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		r := startFlow(t, withEngine(kvFlow, eng))
		steps := []struct {
			body   string
			status int
			want   string
		}{
			{`{"data":"badger","meta":{"kv":{"put":"snot"},"correlation":1}}`, 200, `{"data":"badger","meta":{"kv":{"op":"put","key":"snot",`},
			{`{"data":null,"meta":{"kv":{"get":"snot"},"correlation":2}}`, 200, `{"data":"badger","meta":{"kv":{"op":"get","key":"snot","found":true},"correlation":2}}`},
			{`{"data":"x","meta":{"kv":{"cas":"snot","old":"nope"},"correlation":3}}`, 422, `"error":"cas \"snot\": expected \"nope\", found \"badger\": compare mismatch"`},
		}
		for _, s := range steps {
			got := post(t, r.client, r.url, "", s.body, nil)
			if got.status != s.status || !strings.Contains(got.body, s.want) {
				t.Fatalf("%s:\n got %d %s\nwant %d %s", s.body, got.status, got.body, s.status, s.want)
			}
		}
	})
}

// TestServerConcurrentKV sends 64 clients × 2,000 mixed commands through
// a kv store on Pebble and checks that each response answers its own
// request: its correlation, and a content a per-client model predicts
// (each client owns its keys, so its model is exact).
func TestServerConcurrentKV(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		// 32,000 requests at 64 at a time: the race detector makes each
		// cost about half a millisecond of CPU here, and more of them
		// only repeat the same interleavings.
		clients, perClient := 64, 500
		if eng != httpconn.EngineFastHTTP {
			// The full size runs on the default engine; both share the
			// request handling, so net/http gets the same clients with
			// fewer requests each.
			perClient = 150
		}
		if testing.Short() {
			clients, perClient = 16, 200
		}
		r := startFlow(t, withEngine(kvFlow, eng))
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for c := range clients {
			wg.Go(func() {
				if err := runClient(r, c, perClient); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// runClient sends n commands on 4 keys of its own, checking each answer
// against a model of the keys.
func runClient(r *running, c, n int) error {
	model := map[string]int64{} // key → number stored; absent: never written
	for i := range n {
		key := fmt.Sprintf("c%d_k%d", c, (i/4)%3) // each key: put, get, increment, cas
		corr := fmt.Sprintf("%d-%d", c, i)
		cur, present := model[key]
		var body, want string
		status := 200
		switch i % 4 {
		case 0: // put
			v := int64(c*100000 + i)
			body = fmt.Sprintf(`{"data":%d,"meta":{"kv":{"put":%q},"correlation":%q}}`, v, key, corr)
			want = fmt.Sprint(v)
			model[key] = v
		case 1: // get
			body = fmt.Sprintf(`{"data":null,"meta":{"kv":{"get":%q},"correlation":%q}}`, key, corr)
			want = "null"
			if present {
				want = fmt.Sprint(cur)
			}
		case 2: // increment
			body = fmt.Sprintf(`{"data":null,"meta":{"kv":{"increment":%q,"by":3},"correlation":%q}}`, key, corr)
			model[key] = cur + 3
			want = fmt.Sprint(cur + 3)
		case 3: // cas, failing every other time
			old := cur
			if i%8 == 3 {
				old = cur + 1
				status = 422
			}
			body = fmt.Sprintf(`{"data":%d,"meta":{"kv":{"cas":%q,"old":%d},"correlation":%q}}`, cur+1, key, old, corr)
			want = "null" // a cas answers with no data
			if status == 200 {
				model[key] = cur + 1
			}
		}
		req, _ := http.NewRequest(http.MethodPost, r.url, strings.NewReader(body))
		resp, err := r.client.Do(req)
		if err != nil {
			return fmt.Errorf("client %d request %d: %w", c, i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != status {
			return fmt.Errorf("client %d request %d %s: status %d (%s), want %d", c, i, body, resp.StatusCode, b, status)
		}
		if got := gjson.GetBytes(b, "meta.correlation").String(); got != corr {
			return fmt.Errorf("client %d request %d: answer of %q: %s", c, i, got, b)
		}
		if status == 200 {
			if got := gjson.GetBytes(b, "data").Raw; got != want {
				return fmt.Errorf("client %d request %d %s: data %s, want %s", c, i, body, got, want)
			}
		} else if !bytes.Contains(b, []byte(`"error"`)) {
			return fmt.Errorf("client %d request %d: 422 without meta.error: %s", c, i, b)
		}
	}
	return nil
}

// TestServerReuse checks that what a request borrows from the server's
// pools (its timeout timer, its response buffer) comes back as good as
// new: a request after a timed out one is answered, not timed out at
// once, and a small answer after a large one carries nothing of it, with
// the right Content-Length either way.
func TestServerReuse(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		release := make(chan struct{}, 10) // one token per held request
		r := runServer(t, httpconn.ServerOptions{Engine: eng, Timeout: time.Second}, func(ctx context.Context, batch []pipeline.Event, emit pipeline.Emitter) error {
			for _, ev := range batch {
				if gjson.GetBytes(ev.Data, "op").String() == "hold" {
					select { // held past the timeout, then dropped
					case <-release:
					case <-ctx.Done():
					}
					return nil
				}
			}
			return testProc(ctx, batch, emit)
		})
		big := `{"op":"ok","pad":"` + strings.Repeat("x", 5000) + `"}`
		tests := []struct {
			name, body string
			status     int
			want       string
		}{
			{"timed out", `{"op":"hold"}`, 504, "timeout"},
			{"answered after a timeout", `{"op":"ok","n":1}`, 200, `{"data":{"op":"ok","n":1},"meta":{}}`},
			{"timed out again", `{"op":"hold"}`, 504, "timeout"},
			{"large", big, 200, `{"data":` + big + `,"meta":{}}`},
			{"small after large", `{"op":"ok","n":2}`, 200, `{"data":{"op":"ok","n":2},"meta":{}}`},
			{"two answers", `{"op":"two"}`, 200, `[{"data":1,"meta":{}},{"data":2,"meta":{}}]`},
			{"one answer after two", `{"op":"ok","n":3}`, 200, `{"data":{"op":"ok","n":3},"meta":{}}`},
		}
		for _, tc := range tests {
			got := post(t, r.client, r.url, "", tc.body, nil)
			if tc.status != 200 {
				if got.status != tc.status || !strings.Contains(got.body, tc.want) {
					t.Fatalf("%s: got %d %s, want %d with %q", tc.name, got.status, got.body, tc.status, tc.want)
				}
				release <- struct{}{}
				continue
			}
			if got.status != 200 || got.body != tc.want {
				t.Fatalf("%s: got %d %q, want 200 %q", tc.name, got.status, got.body, tc.want)
			}
			if cl := got.header.Get("Content-Length"); cl != strconv.Itoa(len(got.body)+1) { // post trims the newline
				t.Fatalf("%s: Content-Length %q for a body of %d bytes and a newline", tc.name, cl, len(got.body))
			}
		}
	})
}

// TestServerReadyFollowsHealth checks that /ready answers 503, naming the
// component, while a component of the process reports itself not ready.
func TestServerReadyFollowsHealth(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		h := &component.Health{}
		r := runServer(t, httpconn.ServerOptions{Engine: eng, Health: h}, testProc)
		get := func() (int, string) {
			t.Helper()
			resp, err := r.client.Get(r.url + "/ready")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		h.Set("orders", errors.New("disconnected from the broker"))
		if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, "orders: disconnected") {
			t.Errorf("/ready while a source is disconnected: %d %q", code, body)
		}
		h.Set("orders", nil)
		if code, body := get(); code != http.StatusOK {
			t.Errorf("/ready once reconnected: %d %q", code, body)
		}
	})
}

// TestServerHeaderLimit checks the engines' header limits: a 10 KiB
// Flowrun-Meta header is read by both; one of 20 KiB is answered 431 by
// fasthttp (its 16 KiB read buffer), read by net/http (1 MiB).
func TestServerHeaderLimit(t *testing.T) {
	eachEngine(t, func(t *testing.T, eng httpconn.Engine) {
		r := runServer(t, httpconn.ServerOptions{Engine: eng}, testProc)
		for _, size := range []int{10 << 10, 20 << 10} {
			meta := `{"pad":"` + strings.Repeat("x", size) + `"}`
			got := post(t, r.client, r.url, "", `{"op":"ok"}`, map[string]string{httpconn.MetaHeader: meta})
			want := 200
			if eng == httpconn.EngineFastHTTP && size > 16<<10 {
				want = 431
			}
			if got.status != want {
				t.Fatalf("%d-byte header: got %d %.200s, want %d", size, got.status, got.body, want)
			}
			if want == 200 && got.body != `{"data":{"op":"ok"},"meta":`+meta+`}` {
				t.Fatalf("%d-byte header: body %.200s", size, got.body)
			}
			if want == 431 && !strings.Contains(got.body, "16384 bytes") {
				t.Fatalf("431 body %s does not give the limit", got.body)
			}
		}
	})
}
