// Package httpbench measures flowrun as a kv service over HTTP: sync
// requests to an http_server connector feeding a kv connector on Pebble,
// against the same commands fed through a JSON-lines source in the same
// run. It backs `flowrun bench --http`.
//
// Two load shapes: closed loop (Clients keep-alive connections, each
// sending its next request when the previous answer arrives: the
// saturated throughput) and open loop (Rate requests per second sent on
// schedule whether or not earlier ones were answered; latency is measured
// from each request's scheduled time, so queueing is not hidden).
package httpbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/internal/loadgen"
)

// Workloads.
const (
	Put = "put"
	Get = "get"
)

// Config says what to measure. Zero fields take the defaults of
// EnsureDefaults.
type Config struct {
	// Workloads to run, in order: Put, Get. Default both.
	Workloads []string
	// Requests per workload and side (closed loop). Default 100,000.
	Requests int
	// Clients is the number of keep-alive connections. Default 64.
	Clients int
	// Keys is the number of distinct keys. Default 100,000.
	Keys int
	// ValueBytes is the size of each put value. Default 100.
	ValueBytes int
	// Rate, when positive, runs the open loop at Rate requests/s for
	// Duration instead of the closed loop.
	Rate int
	// Duration of an open-loop run. Default 10s.
	Duration time.Duration
	// NoSync turns off fsync of every commit group (sync is the default).
	NoSync bool
	// Engine is the http_server's engine option ("fasthttp",
	// "net/http"). Default: the connector's default.
	Engine string
	// Dir holds the temporary stores. Default os.TempDir().
	Dir string
	// Logger receives the flows' logs. Default: discarded.
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields with their defaults.
func (c *Config) EnsureDefaults() {
	if len(c.Workloads) == 0 {
		c.Workloads = []string{Put, Get}
	}
	if c.Requests == 0 {
		c.Requests = 100_000
	}
	if c.Clients == 0 {
		c.Clients = 64
	}
	if c.Keys == 0 {
		c.Keys = 100_000
	}
	if c.ValueBytes == 0 {
		c.ValueBytes = 100
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ErrConfig reports an invalid Config.
var ErrConfig = errors.New("invalid http bench config")

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	for _, w := range c.Workloads {
		if w != Put && w != Get {
			return fmt.Errorf("%w: workload %q: want %s or %s", ErrConfig, w, Put, Get)
		}
	}
	for name, v := range map[string]int{"requests": c.Requests, "clients": c.Clients, "keys": c.Keys, "value bytes": c.ValueBytes} {
		if v <= 0 {
			return fmt.Errorf("%w: %s must be positive, got %d", ErrConfig, name, v)
		}
	}
	if c.Rate < 0 || c.Duration < 0 {
		return fmt.Errorf("%w: rate and duration must not be negative", ErrConfig)
	}
	return nil
}

// Result is one workload's figures.
type Result struct {
	Workload string `json:"workload"`
	// Mode is "closed" (Clients connections, saturated) or "open" (Rate).
	Mode     string `json:"mode"`
	Clients  int    `json:"clients"`
	Rate     int    `json:"rate,omitempty"`
	Requests int    `json:"requests"`
	// Errors counts requests that did not get a 200 with the expected
	// answer.
	Errors      int     `json:"errors"`
	HTTPPerSec  float64 `json:"http_req_per_s"`
	StdinPerSec float64 `json:"stdin_ops_per_s"`
	// Ratio is HTTPPerSec / StdinPerSec.
	Ratio  float64 `json:"ratio"`
	P50us  float64 `json:"p50_us"`
	P90us  float64 `json:"p90_us"`
	P99us  float64 `json:"p99_us"`
	P999us float64 `json:"p999_us"`
	MaxUs  float64 `json:"max_us"`
}

// Run runs every workload of cfg and returns one Result each.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp(cfg.Dir, "flowrun-httpbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	var out []Result
	for i, w := range cfg.Workloads {
		dir := filepath.Join(root, strconv.Itoa(i))
		r, err := runWorkload(ctx, cfg, w, dir)
		if err != nil {
			return out, fmt.Errorf("workload %s: %w", w, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func runWorkload(ctx context.Context, cfg Config, workload, dir string) (Result, error) {
	r := Result{Workload: workload, Mode: "closed", Clients: cfg.Clients, Requests: cfg.Requests}
	if cfg.Rate > 0 {
		r.Mode, r.Rate = "open", cfg.Rate
		r.Requests = int(float64(cfg.Rate) * cfg.Duration.Seconds())
	}
	stdinDir, httpDir := filepath.Join(dir, "stdin"), filepath.Join(dir, "http")
	if workload == Get {
		// Both sides read keys that exist: preload each store (untimed).
		for _, d := range []string{stdinDir, httpDir} {
			if _, err := runStdin(ctx, cfg, d, Put, cfg.Keys); err != nil {
				return r, fmt.Errorf("preload: %w", err)
			}
		}
	}
	elapsed, err := runStdin(ctx, cfg, stdinDir, workload, r.Requests)
	if err != nil {
		return r, fmt.Errorf("stdin side: %w", err)
	}
	r.StdinPerSec = float64(r.Requests) / elapsed.Seconds()
	lat, errs, httpElapsed, err := runHTTP(ctx, cfg, httpDir, workload, r.Requests)
	if err != nil {
		return r, fmt.Errorf("http side: %w", err)
	}
	r.Errors = errs
	r.HTTPPerSec = float64(r.Requests) / httpElapsed.Seconds()
	if r.StdinPerSec > 0 {
		r.Ratio = r.HTTPPerSec / r.StdinPerSec
	}
	q := loadgen.Percentiles(lat)
	r.P50us, r.P90us, r.P99us, r.P999us, r.MaxUs = q.P50, q.P90, q.P99, q.P999, q.Max
	return r, nil
}

// command appends the event of request i of workload: a put of a value of
// cfg.ValueBytes or a get, with its number as correlation.
func command(dst []byte, cfg Config, workload string, i int) []byte {
	dst = append(dst, `{"data":`...)
	if workload == Put {
		// A JSON string of ValueBytes bytes, quotes included: the
		// request number, padded.
		start := len(dst)
		dst = append(dst, '"')
		dst = strconv.AppendInt(dst, int64(i), 10)
		for len(dst)-start < cfg.ValueBytes-1 {
			dst = append(dst, 'x')
		}
		dst = append(dst, '"')
	} else {
		dst = append(dst, "null"...)
	}
	dst = append(dst, `,"meta":{"kv":{"`...)
	dst = append(dst, workload...)
	dst = append(dst, `":"k`...)
	dst = strconv.AppendInt(dst, int64(i%cfg.Keys), 10)
	dst = append(dst, `"},"correlation":`...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	return append(dst, "}}"...)
}

func syncOption(cfg Config) string {
	if cfg.NoSync {
		return "false"
	}
	return "true"
}

// runStdin feeds n commands of workload through stdin -> kv -> null and
// returns how long the flow took from start to end.
func runStdin(ctx context.Context, cfg Config, dir, workload string, n int) (time.Duration, error) {
	var in bytes.Buffer
	var line []byte
	for i := range n {
		line = append(command(line[:0], cfg, workload, i), '\n')
		in.Write(line)
	}
	src := fmt.Sprintf(`name: bench-stdin
connectors:
  input: { type: stdin }
  store: { type: kv, dir: %q, sync: %s }
  sink:  { type: null }
links:
  - input/out -> store/in
  - store/out -> sink/in
  - store/err -> sink/in
`, dir, syncOption(cfg))
	b, err := build(ctx, cfg, src, &in)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := b.Run(ctx); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func build(ctx context.Context, cfg Config, src string, stdin io.Reader) (*flows.Built, error) {
	flow, _, err := flows.LoadBytes("bench.yaml", []byte(src), builtin.NewRegistry())
	if err != nil {
		return nil, err
	}
	return flow.Build(ctx, flows.BuildOptions{Stdin: stdin, Stdout: io.Discard, Logger: cfg.Logger})
}

// freePort returns a loopback port nothing listens on right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// engineOption is the http_server's engine option, if cfg sets one.
func engineOption(cfg Config) string {
	if cfg.Engine == "" {
		return ""
	}
	return fmt.Sprintf(", engine: %q", cfg.Engine)
}

// runHTTP serves the kv flow over HTTP and sends n requests of workload,
// returning each request's latency, the number of wrong answers and the
// time from the first request to the last answer.
func runHTTP(ctx context.Context, cfg Config, dir, workload string, n int) ([]time.Duration, int, time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, 0, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	src := fmt.Sprintf(`name: bench-http
connectors:
  api:   { type: http_server, address: %q%s }
  store: { type: kv, dir: %q, sync: %s }
links:
  - api/out -> store/in
  - store/out -> api/in
  - store/err -> api/in
`, addr, engineOption(cfg), dir, syncOption(cfg))
	b, err := build(ctx, cfg, src, nil)
	if err != nil {
		return nil, 0, 0, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- b.Run(runCtx) }()
	url := "http://" + addr + "/"
	if err := waitReady(ctx, "http://"+addr+"/ready"); err != nil {
		stop()
		<-done
		return nil, 0, 0, err
	}
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns: cfg.Clients, MaxIdleConnsPerHost: cfg.Clients, MaxConnsPerHost: cfg.Clients,
		DisableCompression: true,
	}}
	// Keep-alive clients are connected before they are measured, as wrk's
	// are: dialing 64 connections at the first requests put the setup of
	// TCP connections into the open loop's tail.
	if err := openConnections(ctx, client, "http://"+addr+"/ping", cfg.Clients); err != nil {
		stop()
		<-done
		return nil, 0, 0, err
	}
	lat := make([]time.Duration, n)
	var errs atomic.Int64
	start := time.Now()
	if cfg.Rate > 0 {
		openLoop(ctx, cfg, client, url, workload, lat, &errs, start)
	} else {
		closedLoop(ctx, cfg, client, url, workload, lat, &errs)
	}
	elapsed := time.Since(start)
	stop()
	if err := <-done; err != nil {
		return nil, 0, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, err
	}
	return lat, int(errs.Load()), elapsed, nil
}

// waitReady polls url until it answers 200, for at most 10 s.
func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server at %s not ready after 10s (last error: %v)", url, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// openConnections makes client hold n idle keep-alive connections to
// url's server: it sends n concurrent GETs of url, each holding its
// connection (its answer's body unread) until all n are answered, so that
// none reuses another's connection (url must answer with a body: the
// connection of an empty answer is free again at once). It fails when a
// GET fails or answers other than 200.
func openConnections(ctx context.Context, client *http.Client, url string, n int) error {
	var answered, finished sync.WaitGroup
	release := make(chan struct{})
	errs := make(chan error, n)
	answered.Add(n)
	finished.Add(n)
	for range n {
		go func() {
			defer finished.Done()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			var resp *http.Response
			if err == nil {
				resp, err = client.Do(req)
			}
			answered.Done()
			if err != nil {
				errs <- fmt.Errorf("open connections: %w", err)
				return
			}
			<-release
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("open connections: GET %s: %s", url, resp.Status)
			}
		}()
	}
	answered.Wait()
	close(release)
	finished.Wait()
	close(errs)
	return <-errs
}

// send sends request i and reports whether the answer was a 200 carrying
// its correlation.
func send(ctx context.Context, client *http.Client, url string, body []byte, i int, buf *bytes.Buffer) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	buf.Reset()
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return false
	}
	if resp.StatusCode != http.StatusOK {
		return false
	}
	want := []byte(`"correlation":` + strconv.Itoa(i))
	k := bytes.Index(buf.Bytes(), want)
	// The number must end there: "correlation":1 is not "correlation":12.
	return k >= 0 && (k+len(want) == buf.Len() || buf.Bytes()[k+len(want)] < '0' || buf.Bytes()[k+len(want)] > '9')
}

// closedLoop runs cfg.Clients workers, each sending its next request when
// the previous answer arrived, until len(lat) requests are answered.
func closedLoop(ctx context.Context, cfg Config, client *http.Client, url, workload string, lat []time.Duration, errs *atomic.Int64) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body []byte
			var buf bytes.Buffer
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(lat) {
					return
				}
				body = command(body[:0], cfg, workload, i)
				t0 := time.Now()
				if !send(ctx, client, url, body, i, &buf) {
					errs.Add(1)
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
}

// openLoop sends request i at start + i/Rate, whatever happened to the
// earlier ones, from up to cfg.Clients*4 concurrent senders, and measures
// each latency from its scheduled time. A request whose sender is late
// still counts from its schedule.
func openLoop(ctx context.Context, cfg Config, client *http.Client, url, workload string, lat []time.Duration, errs *atomic.Int64, start time.Time) {
	sched := loadgen.Schedule{Rate: cfg.Rate, N: len(lat)}
	jobs := make(chan int, len(lat))
	var wg sync.WaitGroup
	for range cfg.Clients * 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var body []byte
			var buf bytes.Buffer
			for i := range jobs {
				due := start.Add(sched.At(i))
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				body = command(body[:0], cfg, workload, i)
				if !send(ctx, client, url, body, i, &buf) {
					errs.Add(1)
				}
				lat[i] = time.Since(due)
			}
		}()
	}
	for i := range lat {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}
