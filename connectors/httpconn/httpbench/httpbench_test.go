package httpbench

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRunSmall runs both workloads, closed and open loop, with a few
// requests: every request is answered with its own correlation, and the
// figures are filled.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts flows on Pebble and an HTTP server")
	}
	for _, rate := range []int{0, 400} {
		rs, err := Run(context.Background(), Config{Requests: 300, Clients: 4, Keys: 50, Rate: rate,
			Duration: 500 * time.Millisecond, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 2 {
			t.Fatalf("%d results, want put and get", len(rs))
		}
		for _, r := range rs {
			if r.Errors != 0 || r.HTTPPerSec <= 0 || r.StdinPerSec <= 0 || r.P50us <= 0 || r.P99us < r.P50us {
				t.Errorf("rate %d: %+v", rate, r)
			}
		}
	}
}

func TestConfigRefused(t *testing.T) {
	for _, c := range []Config{{Workloads: []string{"scan"}}, {Clients: -1}, {Rate: -5}} {
		c.EnsureDefaults()
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// TestOpenConnections: the client ends up holding n connections, and the
// requests that follow dial none.
func TestOpenConnections(t *testing.T) {
	var opened atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("pong\n")) }))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	const n = 16
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n}}
	if err := openConnections(context.Background(), client, srv.URL, n); err != nil {
		t.Fatal(err)
	}
	if got := opened.Load(); got != n {
		t.Fatalf("%d connections opened, want %d", got, n)
	}
	var wg sync.WaitGroup
	for range 4 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := client.Get(srv.URL); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if got := opened.Load(); got != n {
		t.Errorf("%d connections after the requests, want the %d opened before", got, n)
	}
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }))
	defer bad.Close()
	if err := openConnections(context.Background(), http.DefaultClient, bad.URL, 3); err == nil {
		t.Error("openConnections to a server answering 503: no error")
	}
}
