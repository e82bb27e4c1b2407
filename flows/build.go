package flows

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
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
	// Stores shares kv stores between the kv connectors of this process.
	// Default: a new pool for this build.
	Stores *pebblestore.Pool
	// EtcdStores shares etcd stores (one client per endpoints and prefix)
	// between the kv connectors of this process. Default: a new pool for
	// this build.
	EtcdStores *etcdstore.Pool
	// Logger receives component logs. Default slog.Default().
	Logger *slog.Logger
	// Local is the in-process bus of the gochannel connectors. Pass the
	// same one to every flow of a process that should exchange messages.
	// Default: a new one for this build.
	Local *gochannel.GoChannel
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
	// KVCommands, when set, becomes the kv.Options.OnCommands of every kv
	// connector, for metrics. Default nil.
	KVCommands func(namespace, op string, ok bool, n int)
}

// EnsureDefaults fills unset fields with their defaults.
func (o *BuildOptions) EnsureDefaults() {
	if o.Stdin == nil {
		o.Stdin = os.Stdin
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stores == nil {
		o.Stores = pebblestore.NewPool()
	}
	if o.EtcdStores == nil {
		o.EtcdStores = etcdstore.NewPool()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Graph.Logger == nil {
		o.Graph.Logger = o.Logger
	}
	if o.Local == nil {
		o.Local = bus.NewLocal(o.Logger)
	}
}

// BuildEnv is what a Spec's Build function sees of the flow being built.
type BuildEnv struct {
	// Flow is the flow being built (nil while validating).
	Flow *Flow
	// Options are the build options, defaults filled.
	Options BuildOptions
	// Validating is true when Build runs only to check an operator config.
	Validating bool
	// Graph is the graph being built (nil while validating). Components
	// that must wait for it to go idle or watch its unlinked events (bus
	// sources) use it before it runs.
	Graph *pipeline.Graph

	stdout io.Writer
	shared map[string]*sharedNode // built nodes named by TypeNode options
}

// ErrNodeUnavailable reports a BuildEnv.Use of a node that is not a built
// connector of the flow named by a TypeNode option.
var ErrNodeUnavailable = errors.New("connector unavailable")

// Use returns the processor built for the connector node, which must be
// named by a TypeNode option of the flow (Build builds such nodes first),
// and holds it open: the node is closed only once the graph has closed it
// and release has been called. release may be called more than once; only
// the first call counts. The caller typically wraps its own component with
// WithRelease.
func (e *BuildEnv) Use(node string) (p pipeline.Processor, release func(context.Context) error, err error) {
	sh, ok := e.shared[node]
	if !ok {
		return nil, nil, fmt.Errorf("%w: connector %q is not built, or not named by a node option", ErrNodeUnavailable, node)
	}
	return sh.p, sh.hold(), nil
}

// sharedNode is a built processor other components use: it is closed when
// the last of its holders (the graph node and each Use) releases it.
type sharedNode struct {
	p    pipeline.Processor
	mu   sync.Mutex
	refs int
}

func (s *sharedNode) hold() func(context.Context) error {
	s.mu.Lock()
	s.refs++
	s.mu.Unlock()
	var once sync.Once
	return func(ctx context.Context) (err error) {
		once.Do(func() { err = s.release(ctx) })
		return err
	}
}

func (s *sharedNode) release(ctx context.Context) error {
	s.mu.Lock()
	s.refs--
	last := s.refs == 0
	s.mu.Unlock()
	if c, ok := s.p.(pipeline.Closer); ok && last {
		return c.Close(ctx)
	}
	return nil
}

// heldProcessor is a processor whose Close calls release instead of (or
// after) closing it.
type heldProcessor struct {
	pipeline.Processor
	close   bool // close Processor before release
	release func(context.Context) error
}

// Close closes the processor when it owns it, then calls release.
func (h *heldProcessor) Close(ctx context.Context) error {
	var err error
	if c, ok := h.Processor.(pipeline.Closer); ok && h.close {
		err = c.Close(ctx)
	}
	return errors.Join(err, h.release(ctx))
}

// WithRelease returns p with a Close that closes p (when it is a
// pipeline.Closer) and then calls release, for components holding a node
// obtained with BuildEnv.Use.
func WithRelease(p pipeline.Processor, release func(context.Context) error) pipeline.Processor {
	return &heldProcessor{Processor: p, close: true, release: release}
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
		if fd.Type == TypeNode && n.Config.String(fd.Name) != "" {
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

// Stdout returns the writer stdout connectors share. Each Write is atomic
// with respect to the other stdout connectors of the flow, so lines they
// write never interleave.
func (e *BuildEnv) Stdout() io.Writer { return e.stdout }

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
	env := &BuildEnv{Flow: f, Options: opts, stdout: &lockedWriter{w: opts.Stdout}, shared: map[string]*sharedNode{}}
	if opts.ReplaceSource != "" {
		n, ok := f.Node(opts.ReplaceSource)
		if !ok || n.Kind != KindSource {
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
	comps := map[string]Component{}
	referenced := f.referenced()
	for _, n := range f.buildOrder() {
		if n.IsPipeline() || (n.Kind == KindSource && opts.ReplaceSource != "") || (n.Kind == KindSink && opts.Capture != nil) {
			continue
		}
		c, err := n.Spec.Build(ctx, env, n.Config)
		if err != nil {
			return fail(fmt.Errorf("flow %s, connector %s: %w", f.Name, n.Name, err))
		}
		for _, x := range []any{c.Source, c.Processor} {
			if cl, ok := x.(pipeline.Closer); ok {
				opened = append(opened, cl)
			}
		}
		if referenced[n.Name] && c.Processor != nil {
			sh := &sharedNode{p: c.Processor, refs: 1}
			env.shared[n.Name] = sh
			c.Processor = &heldProcessor{Processor: c.Processor, release: sh.release}
		}
		comps[n.Name] = c
	}
	for _, n := range f.Nodes {
		var err error
		switch {
		case n.IsPipeline():
			err = f.addPipeline(ctx, env, g, n)
		case n.Kind == KindSource && opts.ReplaceSource != "":
			src := opts.Source
			if n.Name != opts.ReplaceSource {
				src = pipeline.SourceFunc(func(context.Context, pipeline.SourceEmitter) error { return nil })
			}
			err = g.AddSource(n.Name, src, n.Ports...)
		case n.Kind == KindSink && opts.Capture != nil:
			err = g.AddProcessor(n.Name, opts.Capture(n.Name))
		default:
			c := comps[n.Name]
			switch {
			case n.Kind == KindSource && c.Source != nil:
				err = g.AddSource(n.Name, c.Source, n.Ports...)
			case n.Kind != KindSource && c.Processor != nil:
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
		if err := g.Link(lk.From, lk.FromPort, lk.To); err != nil {
			return fail(fmt.Errorf("flow %s: link %s (line %d): %w", f.Name, lk, lk.Line, err))
		}
	}
	return built, nil
}

func (f *Flow) addPipeline(ctx context.Context, env *BuildEnv, g *pipeline.Graph, n *Node) error {
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
