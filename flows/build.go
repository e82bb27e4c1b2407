package flows

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrUnknownSource reports a BuildOptions.ReplaceSource that is not a
// source of the flow.
var ErrUnknownSource = errors.New("unknown source")

// BuildOptions say how a flow's components reach the outside world.
type BuildOptions struct {
	// Stdin is read by the stdin connector. Default os.Stdin.
	Stdin io.Reader
	// Stdout is written by stdout connectors. Default os.Stdout.
	Stdout io.Writer
	// Resources are shared by the components of this build and of every
	// other build given the same value: kv store pools
	// (pebblestore.UsePool, etcdstore.UsePool), the in-process bus of the
	// gochannel connectors (bus.UseLocal), the kv command hook
	// (kv.ObserveCommands), the clock of expressions and lua scripts
	// (component.UseClock). Default: new, empty resources for this build,
	// in which each component creates what it needs.
	Resources *component.Resources
	// Logger receives component logs. Default slog.Default().
	Logger *slog.Logger
	// ReplaceSource names a source to be replaced by Source (replay feeds
	// recorded events this way). When set, the other sources are not run
	// (nor opened): they end at once.
	ReplaceSource string
	// Source stands in for ReplaceSource.
	Source pipeline.Source
	// Capture, when set, replaces every sink node by Capture(name); the
	// real sinks are not opened.
	Capture func(sink string) pipeline.Processor
	// Graph configures the pipeline.Graph.
	Graph pipeline.Options
}

// EnsureDefaults fills unset fields with their defaults.
func (o *BuildOptions) EnsureDefaults() {
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Resources == nil {
		o.Resources = component.NewResources()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Graph.Logger == nil {
		o.Graph.Logger = o.Logger
	}
}

// referenced returns the names of the nodes named by TypeNode options.
func (f *Flow) referenced() map[string]bool {
	out := map[string]bool{}
	for _, n := range f.Nodes {
		for _, r := range n.refs() {
			out[r] = true
		}
	}
	return out
}

// refs returns the nodes n's TypeNode options name.
func (n *Node) refs() []string {
	if n.Spec == nil {
		return nil
	}
	var out []string
	for _, fd := range n.Spec.Fields {
		if fd.Type == component.TypeNode && n.Config.String(fd.Name) != "" {
			out = append(out, n.Config.String(fd.Name))
		}
	}
	return out
}

// buildOrder returns the nodes in file order, except that a node named by
// a TypeNode option comes before the nodes naming it.
func (f *Flow) buildOrder() []*Node {
	var out []*Node
	seen := map[string]bool{}
	var visit func(n *Node)
	visit = func(n *Node) {
		if seen[n.Name] {
			return
		}
		seen[n.Name] = true
		for _, r := range n.refs() {
			if m, ok := f.Node(r); ok {
				visit(m)
			}
		}
		out = append(out, n)
	}
	for _, n := range f.Nodes {
		visit(n)
	}
	return out
}

// lockedWriter serialises writes to a shared writer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Built is a flow turned into a runnable graph.
type Built struct {
	// Graph is the runtime graph, one node per connector and pipeline.
	Graph *pipeline.Graph
	// Sources and Sinks name the source and sink nodes in file order.
	Sources []string
	Sinks   []string
}

// Run runs the graph until its sources end or ctx is cancelled, then drains
// and closes every node (see pipeline.Graph.Run).
func (b *Built) Run(ctx context.Context) error { return b.Graph.Run(ctx) }

// Build creates the flow's components and wires them into a graph. Stores
// are opened here, so a locked or unwritable store directory is reported by
// Build, naming the flow, the connector and the directory. When Build fails
// it closes whatever it had already opened.
func (f *Flow) Build(ctx context.Context, opts BuildOptions) (*Built, error) {
	opts.EnsureDefaults()
	env := &component.Env{Flow: f.Name, Logger: opts.Logger, Stdin: opts.Stdin, Stdout: &lockedWriter{w: opts.Stdout},
		Resources: opts.Resources}
	if opts.ReplaceSource != "" {
		n, ok := f.Node(opts.ReplaceSource)
		if !ok || (n.Kind != component.KindSource && n.Kind != component.KindDuplex) {
			return nil, fmt.Errorf("flow %s: %w %q (sources: %v)", f.Name, ErrUnknownSource, opts.ReplaceSource, f.Sources())
		}
		if opts.Source == nil {
			return nil, fmt.Errorf("flow %s: ReplaceSource %q given without a Source", f.Name, opts.ReplaceSource)
		}
	}
	g := pipeline.New(opts.Graph)
	env.Graph = g
	built := &Built{Graph: g, Sources: f.Sources(), Sinks: f.Sinks()}
	var opened []pipeline.Closer
	fail := func(err error) (*Built, error) {
		for i := len(opened) - 1; i >= 0; i-- {
			_ = opened[i].Close(context.WithoutCancel(ctx))
		}
		return nil, err
	}
	// Components are built first, nodes named by TypeNode options before
	// the nodes naming them, then added to the graph in file order.
	comps := map[string]component.Component{}
	referenced := f.referenced()
	for _, n := range f.buildOrder() {
		if n.IsPipeline() || (n.Kind == component.KindSource && opts.ReplaceSource != "") || (n.Kind == component.KindSink && opts.Capture != nil) ||
			(n.Kind == component.KindDuplex && (opts.ReplaceSource != "" || opts.Capture != nil)) {
			continue
		}
		c, err := n.Spec.Build(ctx, env, n.Config)
		if err != nil {
			return fail(fmt.Errorf("flow %s, connector %s: %w", f.Name, n.Name, err))
		}
		for _, x := range []any{c.Source, c.Processor, c.Side} {
			if cl, ok := x.(pipeline.Closer); ok {
				opened = append(opened, cl)
			}
		}
		if referenced[n.Name] && c.Processor != nil {
			c.Processor = env.Share(n.Name, c.Processor)
		}
		comps[n.Name] = c
	}
	for _, n := range f.Nodes {
		var err error
		switch {
		case n.IsPipeline():
			err = f.addPipeline(ctx, env, g, n)
		case n.Kind == component.KindSource && opts.ReplaceSource != "":
			src := opts.Source
			if n.Name != opts.ReplaceSource {
				src = pipeline.SourceFunc(func(context.Context, pipeline.SourceEmitter) error { return nil })
			}
			err = g.AddSource(n.Name, src, n.Ports...)
		case n.Kind == component.KindSink && opts.Capture != nil:
			err = g.AddProcessor(n.Name, opts.Capture(n.Name))
		case n.Kind == component.KindDuplex && (opts.ReplaceSource != "" || opts.Capture != nil):
			// Not opened (no server listens): its source side is
			// replaced or ends at once, its sink side is captured or
			// discards.
			var src pipeline.Source = pipeline.SourceFunc(func(context.Context, pipeline.SourceEmitter) error { return nil })
			if n.Name == opts.ReplaceSource {
				src = opts.Source
			}
			var sink pipeline.Processor = pipeline.ProcessorFunc(func(context.Context, []pipeline.Event, pipeline.Emitter) error { return nil })
			if opts.Capture != nil {
				sink = opts.Capture(n.Name)
			}
			if err = g.AddSource(n.Name, src, n.Ports...); err == nil {
				err = g.AddProcessor(component.DuplexSink(n.Name), sink)
			}
		default:
			c := comps[n.Name]
			switch {
			case n.Kind == component.KindSource && c.Source != nil:
				err = g.AddSource(n.Name, c.Source, n.Ports...)
			case n.Kind == component.KindDuplex && c.Source != nil && c.Processor != nil:
				if err = g.AddSource(n.Name, c.Source, n.Ports...); err == nil {
					err = g.AddProcessor(component.DuplexSink(n.Name), c.Processor)
				}
			case n.Kind != component.KindSource && c.Processor != nil && c.Side != nil:
				var own []string
				for _, p := range n.Ports {
					if !slices.Contains(c.SidePorts, p) {
						own = append(own, p)
					}
				}
				if err = g.AddProcessor(n.Name, c.Processor, own...); err == nil {
					err = g.AddSource(sideName(n.Name), c.Side, c.SidePorts...)
				}
			case n.Kind != component.KindSource && c.Processor != nil:
				err = g.AddProcessor(n.Name, c.Processor, n.Ports...)
			default:
				err = fmt.Errorf("flow %s, connector %s: type %q built no %s", f.Name, n.Name, n.Spec.Type, n.Kind)
			}
		}
		if err != nil {
			return fail(err)
		}
	}
	for _, lk := range f.Links {
		from := lk.From
		if c := comps[from]; c.Side != nil && slices.Contains(c.SidePorts, lk.FromPort) {
			from = sideName(from)
		}
		to := lk.To
		if n, ok := f.Node(to); ok && n.Kind == component.KindDuplex {
			to = component.DuplexSink(to)
		}
		if err := g.Link(from, lk.FromPort, to); err != nil {
			return fail(fmt.Errorf("flow %s: link %s (line %d): %w", f.Name, lk, lk.Line, err))
		}
	}
	return built, nil
}

// sideName is the graph node of a connector's Component.Side: a name no
// flow file can give a node.
func sideName(connector string) string { return connector + "/side" }

func (f *Flow) addPipeline(ctx context.Context, env *component.Env, g *pipeline.Graph, n *Node) error {
	ops := make([]operators.Operator, 0, len(n.Operators))
	for i, op := range n.Operators {
		c, err := op.Spec.Build(ctx, env, op.Config)
		if err != nil {
			return fmt.Errorf("flow %s, pipeline %s, step %d (%s): %w", f.Name, n.Name, i, op.Spec.Type, err)
		}
		ops = append(ops, c.Operator)
	}
	p := operators.NewPipeline(ops)
	return g.AddProcessor(n.Name, p, p.Ports()...)
}
