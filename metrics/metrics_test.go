package metrics

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// scrape fetches url and returns every sample line as name{labels} -> value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func TestScrapeFollowsAFlow(t *testing.T) {
	m := New()
	dir := t.TempDir()
	pool := pebblestore.NewObservedPool(m.ObserveCommit)
	backend, err := pool.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kv.New(backend, kv.Options{Namespace: "ns", ReclaimInterval: -1, OnCommands: m.ObserveCommands})
	if err != nil {
		t.Fatal(err)
	}
	feed := make(chan []pipeline.Event)
	flushed := make(chan struct{})
	g := pipeline.New(pipeline.Options{Unlinked: func(string, string, pipeline.Event) {}})
	src := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for events := range feed {
			done := make(chan struct{})
			tr := pipeline.NewTracker(len(events), nil, func() { close(done) })
			for i, ev := range events {
				emit.Emit(pipeline.PortOut, tr.Track(i, ev))
			}
			if err := emit.Flush(ctx); err != nil {
				return err
			}
			<-done
			flushed <- struct{}{}
		}
		return nil
	})
	must(t, g.AddSource("input", src, pipeline.PortOut))
	must(t, g.AddProcessor("store", conn, kv.Ports()...))
	must(t, g.AddProcessor("results", pipeline.ProcessorFunc(func(context.Context, []pipeline.Event, pipeline.Emitter) error { return nil })))
	must(t, g.Link("input", pipeline.PortOut, "store"))
	must(t, g.Link("store", pipeline.PortOut, "results"))
	must(t, m.AddGraph("demo", g))
	if err := m.AddGraph("demo", g); err == nil {
		t.Fatal("AddGraph accepted the same flow twice")
	}

	srv, err := Serve("127.0.0.1:0", m.Handler(), nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	url := "http://" + srv.Addr().String() + "/metrics"
	t.Logf("metrics served at %s", url)

	done := make(chan error, 1)
	go func() { done <- g.Run(context.Background()) }()
	put := func(k string) pipeline.Event {
		return pipeline.Event{Data: []byte(`1`), Meta: []byte(`{"kv":{"put":"` + k + `"}}`)}
	}
	send := func(evs ...pipeline.Event) {
		feed <- evs
		select {
		case <-flushed: // every event of the slice is done
		case <-time.After(10 * time.Second):
			t.Fatal("events not done after 10s")
		}
	}

	before := scrape(t, url)
	storeIn := `flowrun_node_events_total{flow="demo",node="store",port="in"}`
	if before[storeIn] != 0 {
		t.Fatalf("%s = %v before any event", storeIn, before[storeIn])
	}
	if _, ok := before[`flowrun_node_queue_capacity_batches{flow="demo",node="store"}`]; !ok {
		t.Fatalf("queue capacity missing from scrape")
	}

	send(put("a"), put("b"), pipeline.Event{Meta: []byte(`{"kv":{"nope":1}}`)})
	mid := scrape(t, url)
	want := map[string]float64{
		storeIn: 3,
		`flowrun_node_events_total{flow="demo",node="store",port="out"}`:                    2,
		`flowrun_node_events_total{flow="demo",node="store",port="err"}`:                    1,
		`flowrun_node_events_total{flow="demo",node="input",port="out"}`:                    3,
		`flowrun_kv_commands_total{namespace="ns",op="put",outcome="ok"}`:                   2,
		`flowrun_kv_commands_total{namespace="ns",op="invalid",outcome="error"}`:            1,
		`flowrun_kv_commit_group_transactions_count{store="` + dirOf(t, dir) + `"}`:         1,
		`flowrun_kv_commit_group_transactions_sum{store="` + dirOf(t, dir) + `"}`:           2,
		`flowrun_kv_commit_duration_seconds_count{store="` + dirOf(t, dir) + `"}`:           1,
		`flowrun_node_queue_batches{flow="demo",node="store"}`:                              0,
		`flowrun_kv_commit_group_transactions_bucket{store="` + dirOf(t, dir) + `",le="1"}`: 0,
		`flowrun_kv_commit_group_transactions_bucket{store="` + dirOf(t, dir) + `",le="2"}`: 1,
	}
	check(t, mid, want)

	send(put("c"))
	after := scrape(t, url)
	want[storeIn] = 4
	want[`flowrun_node_events_total{flow="demo",node="store",port="out"}`] = 3
	want[`flowrun_node_events_total{flow="demo",node="input",port="out"}`] = 4
	want[`flowrun_kv_commit_group_transactions_sum{store="`+dirOf(t, dir)+`"}`] = 3
	want[`flowrun_kv_commit_duration_seconds_count{store="`+dirOf(t, dir)+`"}`] = 2
	want[`flowrun_kv_commit_group_transactions_bucket{store="`+dirOf(t, dir)+`",le="2"}`] = 2
	want[`flowrun_kv_commands_total{namespace="ns",op="put",outcome="ok"}`] = 3
	want[`flowrun_kv_commit_group_transactions_count{store="`+dirOf(t, dir)+`"}`] = 2
	want[`flowrun_kv_commit_group_transactions_bucket{store="`+dirOf(t, dir)+`",le="1"}`] = 1
	check(t, after, want)
	if after[`flowrun_kv_commit_duration_seconds_sum{store="`+dirOf(t, dir)+`"}`] <= 0 {
		t.Errorf("commit latency sum not positive")
	}

	close(feed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "/metrics") {
		t.Errorf("index page: %q", body)
	}
}

func TestServeBadAddress(t *testing.T) {
	if _, err := Serve("127.0.0.1:notaport", New().Handler(), nil, slog.New(slog.DiscardHandler)); err == nil ||
		!strings.Contains(err.Error(), "127.0.0.1:notaport") {
		t.Fatalf("Serve on a bad address: %v", err)
	}
}

func TestCommitFailureCounted(t *testing.T) {
	m := New()
	m.ObserveCommit(pebblestore.CommitInfo{Dir: "/s", Transactions: 4, Wrote: true, Err: io.ErrUnexpectedEOF})
	m.ObserveCommit(pebblestore.CommitInfo{Dir: "/s", Transactions: 1}) // reads only: not a commit
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			switch {
			case mt.GetCounter() != nil:
				got[mf.GetName()] += mt.GetCounter().GetValue()
			case mt.GetHistogram() != nil:
				got[mf.GetName()] += float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	if got[CommitFailures] != 1 || got[CommitGroupSize] != 0 || got[CommitLatency] != 0 {
		t.Fatalf("after one failed and one read-only group: %v", got)
	}
}

// TestCommitFailuresExportedAtZero checks that a store's commit failure
// counter is exported at 0 before any failure.
func TestCommitFailuresExportedAtZero(t *testing.T) {
	m := New()
	m.ObserveCommit(pebblestore.CommitInfo{Dir: "/ok", Transactions: 1}) // reads only
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != CommitFailures {
			continue
		}
		for _, mt := range mf.GetMetric() {
			if len(mt.GetLabel()) == 1 && mt.GetLabel()[0].GetValue() == "/ok" && mt.GetCounter().GetValue() == 0 {
				return
			}
		}
	}
	t.Fatalf("%s{store=\"/ok\"} 0 not exported", CommitFailures)
}

func check(t *testing.T, got, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("missing %s", k)
		} else if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

func dirOf(t *testing.T, dir string) string {
	t.Helper()
	return dir // t.TempDir is absolute, as the pool reports it
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCommitFailuresExportedFromOpen: a store opened through an observed
// pool has its failure counter at 0 before any commit.
func TestCommitFailuresExportedFromOpen(t *testing.T) {
	m := New()
	pool := pebblestore.NewObservedPool(m.ObserveCommit)
	dir := t.TempDir()
	b, err := pool.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == CommitFailures && len(mf.GetMetric()) == 1 && mf.GetMetric()[0].GetCounter().GetValue() == 0 {
			return
		}
	}
	t.Fatalf("%s not exported at 0 after opening the store", CommitFailures)
}

func TestServeProbes(t *testing.T) {
	var notReady atomic.Pointer[error]
	srv, err := Serve("127.0.0.1:0", New().Handler(), func() error {
		if e := notReady.Load(); e != nil {
			return *e
		}
		return nil
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close(context.Background())
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + srv.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/ping"); code != http.StatusOK {
		t.Errorf("/ping: %d", code)
	}
	if code, body := get("/ready"); code != http.StatusOK {
		t.Errorf("/ready when ready: %d %q", code, body)
	}
	e := errors.New("orders: disconnected\nalerts: connection refused")
	notReady.Store(&e)
	if code, body := get("/ready"); code != http.StatusServiceUnavailable || body != "orders: disconnected; alerts: connection refused\n" {
		t.Errorf("/ready when not ready: %d %q", code, body)
	}
}
