package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/logs"
	"github.com/flowrun/flowrun/metrics"
	"github.com/flowrun/flowrun/pipeline"
)

// observer wires logging and, with --metrics-addr, Prometheus metrics into
// a flow run: it fills the build options before Build, registers the graph
// after it, and logs the stop line.
type observer struct {
	logger   *slog.Logger
	unlinked *logs.UnlinkedErrors
	metrics  *metrics.Metrics
	addr     string
	server   *metrics.Server
	start    time.Time
	health   *component.Health
	running  atomic.Bool // the flow is built and started: /ready may say ready
	// lifecycle is the level of the start and stop lines: info for run,
	// debug for replay, whose summary line already says how it went.
	lifecycle slog.Level
}

// newObserver sets opts.Logger, the graph's unlinked-event hook and, when
// metricsAddr is set, a store pool and kv hook reporting to metrics, and
// starts serving them: a bad address fails here, before anything is
// opened.
func newObserver(e env, metricsAddr string, opts *flows.BuildOptions) (*observer, error) {
	o := &observer{logger: newLogger(e), addr: metricsAddr}
	o.unlinked = logs.NewUnlinkedErrors(o.logger, logs.UnlinkedOptions{})
	opts.Logger = o.logger
	opts.Graph.Logger = o.logger
	opts.Graph.Unlinked = o.unlinked.Hook
	if opts.Resources == nil {
		opts.Resources = component.NewResources()
	}
	pebblestore.UsePool(opts.Resources, pebblestore.NewPool())
	if metricsAddr != "" {
		o.metrics = metrics.New()
		pebblestore.UsePool(opts.Resources, pebblestore.NewObservedPool(o.metrics.ObserveCommit))
		kv.ObserveCommands(opts.Resources, o.metrics.ObserveCommands)
		o.health = component.HealthOf(opts.Resources)
		srv, err := metrics.Serve(o.addr, o.metrics.Handler(), o.ready, o.logger)
		if err != nil {
			return nil, usageError{fmt.Errorf("--metrics-addr: %w", err)}
		}
		o.server = srv
	}
	return o, nil
}

// errNotStarted is /ready's answer before the flow has started and once it
// is stopping.
var errNotStarted = errors.New("not ready: the flow is not running")

// ready is the metrics address's /ready: the flow is running and every
// component reporting health is ready.
func (o *observer) ready() error {
	if !o.running.Load() {
		return errNotStarted
	}
	return o.health.Err()
}

// close stops the metrics server, letting a scrape in progress finish.
func (o *observer) close() {
	if o.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = o.server.Close(ctx)
		o.server = nil
	}
}

// started registers the built graph with the metrics and logs the start
// line, which names the metrics URL.
func (o *observer) started(flow *flows.Flow, path string, g *pipeline.Graph) {
	attrs := []any{"flow", flow.Name, "file", path}
	if o.metrics != nil {
		// One graph per process: the flow name cannot be taken already.
		_ = o.metrics.AddGraph(flow.Name, g)
		attrs = append(attrs, "metrics", "http://"+o.server.Addr().String()+"/metrics")
	}
	o.start = time.Now()
	o.running.Store(true)
	o.logger.Log(context.Background(), o.lifecycle, "flow started", attrs...)
	if o.metrics != nil && o.lifecycle < slog.LevelInfo {
		// replay's start line is debug, but the port --metrics-addr
		// picked (port 0) is needed to scrape it.
		o.logger.Info("serving metrics", "flow", flow.Name, "metrics", "http://"+o.server.Addr().String()+"/metrics")
	}
}

// stopped logs the stop line (or the failure) with the run's totals and
// stops the metrics server.
func (o *observer) stopped(flow string, g *pipeline.Graph, runErr error) {
	o.running.Store(false)
	o.unlinked.Flush()
	var errs uint64
	for _, c := range g.Counts() {
		if c.Port == pipeline.PortErr {
			errs += c.Events
		}
	}
	dropped := 0
	for _, n := range o.unlinked.Dropped() {
		dropped += n
	}
	attrs := []any{"flow", flow, "elapsed", time.Since(o.start).Round(time.Millisecond),
		"events_in", sourceEvents(g), "errors", errs, "errors_dropped", dropped}
	if runErr != nil {
		o.logger.Error("flow failed", append(attrs, "error", runErr)...)
	} else {
		o.logger.Log(context.Background(), o.lifecycle, "flow stopped", attrs...)
	}
}
