// Package metrics exposes a flowrun process to Prometheus: events per node
// and port, input queue depth per node, kv commands by op and outcome, and
// commit group size and latency per store.
//
// Graph counters are read from pipeline.Graph.Counts and QueueDepths when a
// scrape happens, so counting events costs nothing more than the graph's own
// atomic counters. kv commands arrive through kv.Options.OnCommands (once
// per slice of events, op and outcome) and commits through pebblestore's OnCommit
// hook. Every collector lives on the Metrics' own registry: no global state.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// Metric names.
const (
	NodeEvents        = "flowrun_node_events_total"
	QueueBatches      = "flowrun_node_queue_batches"
	QueueCapacity     = "flowrun_node_queue_capacity_batches"
	KVCommands        = "flowrun_kv_commands_total"
	CommitGroupSize   = "flowrun_kv_commit_group_transactions"
	CommitLatency     = "flowrun_kv_commit_duration_seconds"
	CommitFailures    = "flowrun_kv_commit_failures_total"
	outcomeOK, outErr = "ok", "error"
)

// Metrics holds the collectors of one process. Create it with New.
type Metrics struct {
	reg        *prometheus.Registry
	commands   *prometheus.CounterVec
	groupSize  *prometheus.HistogramVec
	latency    *prometheus.HistogramVec
	commitFail *prometheus.CounterVec
}

// New returns metrics registered on a fresh registry, with the Go runtime
// and process collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: KVCommands,
			Help: "kv commands handled, by namespace, op (\"invalid\" when the command did not decode) and outcome (ok: emitted on out; error: on err).",
		}, []string{"namespace", "op", "outcome"}),
		groupSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    CommitGroupSize,
			Help:    "Transactions (kv commands) committed together with one write to the store, per store directory.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14), // 1 .. 8192 (the default max_group)
		}, []string{"store"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    CommitLatency,
			Help:    "Time from a commit group's start to its release: applying its commands, committing and (with sync) the WAL fsync, per store directory.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16), // 50µs .. ~1.6s
		}, []string{"store"}),
		commitFail: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: CommitFailures,
			Help: "Commit groups whose commit or sync failed (every command of the group went to err), per store directory.",
		}, []string{"store"}),
	}
	m.reg.MustRegister(m.commands, m.groupSize, m.latency, m.commitFail,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry holding every collector, for tests and for
// embedding in another exporter.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveCommands counts n kv commands; it has the signature of
// kv.Options.OnCommands (and kv.ObserveCommands).
func (m *Metrics) ObserveCommands(namespace, op string, ok bool, n int) {
	outcome := outcomeOK
	if !ok {
		outcome = outErr
	}
	m.commands.WithLabelValues(namespace, op, outcome).Add(float64(n))
}

// ObserveCommit records one commit group; it has the signature of
// pebblestore.Options.OnCommit (use it with pebblestore.NewObservedPool).
// Groups that only read are not commits and are not recorded.
//
// The failure counter of a store is exported from its opening on (the
// pool's empty report), at 0 until a commit fails, so that a query or
// alert on it sees the series before the first failure (an absent series
// reads as "no data", not 0).
func (m *Metrics) ObserveCommit(ci pebblestore.CommitInfo) {
	failures := m.commitFail.WithLabelValues(ci.Dir)
	if ci.Err != nil {
		failures.Inc()
		return
	}
	if !ci.Wrote {
		return
	}
	m.groupSize.WithLabelValues(ci.Dir).Observe(float64(ci.Transactions))
	m.latency.WithLabelValues(ci.Dir).Observe(ci.Latency.Seconds())
}

// AddGraph exports the event counts and queue depths of g, labelled with
// flow. It fails when a graph of the same flow name is already added.
func (m *Metrics) AddGraph(flow string, g *pipeline.Graph) error {
	if err := m.reg.Register(newGraphCollector(flow, g)); err != nil {
		return fmt.Errorf("metrics for flow %s: %w", flow, err)
	}
	return nil
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// graphCollector reads a graph's counters at scrape time.
type graphCollector struct {
	g                       *pipeline.Graph
	flow                    string
	events, queue, capacity *prometheus.Desc
}

func newGraphCollector(flow string, g *pipeline.Graph) *graphCollector {
	constant := prometheus.Labels{"flow": flow}
	return &graphCollector{
		g:    g,
		flow: flow,
		events: prometheus.NewDesc(NodeEvents,
			"Events per node and port: port \"in\" counts events a node received, other ports the events it emitted there (\"err\" for failures).",
			[]string{"node", "port"}, constant),
		queue: prometheus.NewDesc(QueueBatches,
			"Slices of events waiting in a node's input queue (shared by every link into it); a queue at capacity marks the node holding the flow back.",
			[]string{"node"}, constant),
		capacity: prometheus.NewDesc(QueueCapacity,
			"Slices of events a node's input queue holds before senders block.",
			[]string{"node"}, constant),
	}
}

func (c *graphCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.queue
	ch <- c.capacity
}

func (c *graphCollector) Collect(ch chan<- prometheus.Metric) {
	for _, pc := range c.g.Counts() {
		ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(pc.Events), pc.Node, pc.Port)
	}
	for _, q := range c.g.QueueDepths() {
		ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, float64(q.Slices), q.Node)
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(q.Capacity), q.Node)
	}
}

// Server serves /metrics over HTTP until Close.
type Server struct {
	srv  *http.Server
	addr net.Addr
	done chan error
}

// Serve listens on addr ("host:port"; port 0 picks a free one, see Addr)
// and serves h at /metrics in a goroutine it owns, with the probes
// Kubernetes users expect: /ping answers 200 while the process is alive,
// /ready 200 while ready returns nil (a nil ready: always) and 503 with its
// error otherwise. A listen failure is returned at once; later serving
// errors are logged to logger.
func Serve(addr string, h http.Handler, ready func() error, logger *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "pong")
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready != nil {
			if err := ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, strings.ReplaceAll(err.Error(), "\n", "; "))
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "flowrun: metrics at /metrics, probes at /ping and /ready")
	})
	s := &Server{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: ln.Addr(),
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server stopped", "addr", s.addr.String(), "error", err)
		}
		s.done <- nil
	}()
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.addr }

// Close stops the server, letting in-flight scrapes finish until ctx ends,
// and waits for its goroutine.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}
