package flowrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/operators"
)

// ErrInvalidFlow is wrapped by the errors of LoadFlow, ParseFlow and
// FlowBuilder.Build for a flow that does not validate; the message lists
// every problem.
var ErrInvalidFlow = flows.ErrInvalidFlow

// NewRegistry returns a new registry holding the light built-in
// components: the stdin, stdout, file and null connectors, the kv
// connector on Pebble, and the filter, set, route and drop operators.
// Each call returns an independent value; nothing is registered at
// package level.
//
// The heavy components are not included, so that a program not using
// them does not link them; it adds each with one line:
//
//	reg := flowrun.NewRegistry(etcdstore.Backend())  // kv with backend: etcd
//	err := reg.Register(lua.Spec())                  // the lua processor
//	err = reg.Register(bus.GoChannelSpec(), bus.NATSSpec())
//
// kvBackends are further backends of the kv connector, after pebble (the
// default); their names must differ from "pebble" and from each other (a
// programming error: NewRegistry panics).
func NewRegistry(kvBackends ...kv.BackendSpec) *component.Registry {
	r := component.NewRegistry()
	r.SetExprChecker(operators.CheckExpr)
	r.MustRegister(
		jsonl.StdinSpec(),
		jsonl.StdoutSpec(),
		jsonl.FileSpec(),
		jsonl.NullSpec(),
		kv.Spec(append([]kv.BackendSpec{pebblestore.Backend()}, kvBackends...)...),
		operators.FilterSpec(),
		operators.SetSpec(),
		operators.RouteSpec(),
		operators.DropSpec(),
	)
	return r
}

// Flow is a validated flow, loaded from YAML (LoadFlow, ParseFlow) or
// built from code (FlowBuilder), ready to run. Nothing is opened until
// Run.
type Flow struct {
	flow     *flows.Flow
	warnings []string
}

// LoadFlow reads and validates the flow file at path against reg (nil:
// NewRegistry()). Relative paths in it are relative to the file's
// directory. A flow with errors gives an error wrapping ErrInvalidFlow
// that lists each one as FILE:LINE:COL: error: FIELD: message.
func LoadFlow(path string, reg *component.Registry) (*Flow, error) {
	if reg == nil {
		reg = NewRegistry()
	}
	f, diags, err := flows.Load(path, reg)
	return newFlow(f, diags, err)
}

// ParseFlow is LoadFlow for a flow already in memory; its diagnostics
// name it "flow.yaml", and relative paths in it are relative to the
// current directory.
func ParseFlow(src []byte, reg *component.Registry) (*Flow, error) {
	if reg == nil {
		reg = NewRegistry()
	}
	f, diags, err := flows.LoadBytes("flow.yaml", src, reg)
	return newFlow(f, diags, err)
}

func newFlow(f *flows.Flow, diags []flows.Diagnostic, err error) (*Flow, error) {
	if err != nil {
		return nil, fmt.Errorf("flowrun: %w", err)
	}
	fl := &Flow{flow: f}
	for _, d := range diags {
		fl.warnings = append(fl.warnings, d.String())
	}
	return fl, nil
}

// Name returns the flow's name, the default namespace of its kv
// connectors.
func (f *Flow) Name() string { return f.flow.Name }

// Warnings returns what validation found questionable but not wrong (an
// unlinked err port, an option without effect), one line each.
func (f *Flow) Warnings() []string { return append([]string(nil), f.warnings...) }

// RunOptions say how a running flow reaches the program around it. The
// zero value runs the flow as the flowrun command does.
type RunOptions struct {
	// Stdin is what the stdin connector reads. Default os.Stdin.
	Stdin io.Reader
	// Stdout is what stdout connectors write to; each line is written
	// whole by one Write call. Default os.Stdout.
	Stdout io.Writer
	// Logger receives the components' logs. Default slog.Default().
	Logger *slog.Logger
	// Store, when set, is an open Store the flow shares: a kv connector
	// (backend pebble) whose dir is the Store's directory, by any path,
	// uses the Store's open Pebble instance instead of opening the
	// directory again (which its lock forbids), so the program sees what
	// the flow writes, and the flow what the program writes, as each
	// command completes. The connector's sync option must match
	// StoreOptions.NoSync. The directory stays open until both the Store
	// and the flow are closed. Default nil: the flow opens its stores
	// itself.
	Store *Store
	// Resources are shared with other runs given the same value (kv store
	// pools, the in-process bus of the gochannel connectors); see
	// flows.BuildOptions.Resources. Store, when set, replaces the Pebble
	// pool held there. Default: new resources for this run.
	Resources *component.Resources
}

// Run opens the flow's components, runs them until the sources end or
// ctx is cancelled, then drains the events in flight and closes every
// component (see pipeline.Graph.Run): writes acknowledged before Run
// returns are durable. A flow may be run more than once, one run at a
// time when it holds Go values (FlowBuilder), since those are shared by
// every run.
func (f *Flow) Run(ctx context.Context, opts RunOptions) error {
	bo := flows.BuildOptions{Stdin: opts.Stdin, Stdout: opts.Stdout, Logger: opts.Logger, Resources: opts.Resources}
	if opts.Store != nil {
		if bo.Resources == nil {
			bo.Resources = component.NewResources()
		}
		if err := opts.Store.shareWith(bo.Resources); err != nil {
			return fmt.Errorf("flowrun: flow %s: %w", f.flow.Name, err)
		}
	}
	built, err := f.flow.Build(ctx, bo)
	if err != nil {
		return fmt.Errorf("flowrun: %w", err)
	}
	if err := built.Run(ctx); err != nil {
		return fmt.Errorf("flowrun: flow %s: %w", f.flow.Name, err)
	}
	return nil
}

// errStoreClosed reports a RunOptions.Store already closed.
var errStoreClosed = errors.New("RunOptions.Store is closed")

// shareWith makes the kv connectors built with res open s's directory
// through s's pool.
func (s *Store) shareWith(res *component.Resources) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("%w: %w", errStoreClosed, ErrClosed)
	}
	pebblestore.UsePool(res, s.pool)
	return nil
}
