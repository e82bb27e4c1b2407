package component

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/flowrun/flowrun/pipeline"
)

// Env is what a Spec's Build function sees of the flow being built and of
// the process around it.
type Env struct {
	// Flow is the name of the flow being built.
	Flow string
	// Logger receives component logs; never nil.
	Logger *slog.Logger
	// Graph is the graph being built. Components that must wait for it to
	// go idle or watch its unlinked events (bus sources) use it before it
	// runs.
	Graph *pipeline.Graph
	// Stdin is the process's standard input (or what stands for it).
	Stdin io.Reader
	// Stdout is the writer stdout connectors share. Each Write is atomic
	// with respect to the other writers of the flow, so lines they write
	// never interleave.
	Stdout io.Writer
	// Resources holds what the components of a build (or of several
	// builds) share: store pools, in-process buses, metrics hooks. Each
	// package owning such a resource declares its Key; never nil.
	Resources *Resources

	mu     sync.Mutex
	shared map[string]*sharedNode // built nodes named by TypeNode options
}

// ErrNodeUnavailable reports an Env.Use of a node that is not a built
// connector of the flow named by a TypeNode option, or not of the type
// the caller needs.
var ErrNodeUnavailable = errors.New("connector unavailable")

// Use returns the processor built for the connector node, which must be
// named by a TypeNode option of the flow (the loader builds such nodes
// first), and holds it open: the node is closed only once the graph has
// closed it and release has been called. release may be called more than
// once; only the first call counts. The caller typically wraps its own
// component with WithRelease.
func (e *Env) Use(node string) (p pipeline.Processor, release func(context.Context) error, err error) {
	e.mu.Lock()
	sh, ok := e.shared[node]
	e.mu.Unlock()
	if !ok {
		return nil, nil, fmt.Errorf("%w: connector %q is not built, or not named by a node option", ErrNodeUnavailable, node)
	}
	return sh.p, sh.hold(), nil
}

// Share makes p, built for node, available to Use and returns the
// processor the graph must run in its place: its Close releases the
// graph's hold, and p is closed once every holder has released it. The
// loader calls it for the nodes named by TypeNode options.
func (e *Env) Share(node string, p pipeline.Processor) pipeline.Processor {
	sh := &sharedNode{p: p, refs: 1}
	e.mu.Lock()
	if e.shared == nil {
		e.shared = map[string]*sharedNode{}
	}
	e.shared[node] = sh
	e.mu.Unlock()
	return &heldProcessor{Processor: p, release: sh.release}
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
// obtained with Env.Use.
func WithRelease(p pipeline.Processor, release func(context.Context) error) pipeline.Processor {
	return &heldProcessor{Processor: p, close: true, release: release}
}

// Resources holds values the components of one or several builds share,
// each under a Key declared by the package owning the value's type (the
// pebblestore package keys its store pool, the bus package its in-process
// bus), so that this package needs none of their code. It is safe for
// concurrent use. The zero value is empty and ready.
type Resources struct {
	mu sync.Mutex
	m  map[any]any
}

// NewResources returns an empty set of resources.
func NewResources() *Resources { return &Resources{} }

// Key names a resource of type T. Keys are compared by identity: a
// package declares each of its keys once, with NewKey.
type Key[T any] struct{ name string }

// NewKey returns a new key; name is for messages only.
func NewKey[T any](name string) *Key[T] { return &Key[T]{name: name} }

// String returns the key's name.
func (k *Key[T]) String() string { return k.name }

// Put stores v under k in r, replacing any value there.
func (k *Key[T]) Put(r *Resources, v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[any]any{}
	}
	r.m[k] = v
}

// Get returns the value stored under k in r.
func (k *Key[T]) Get(r *Resources) (v T, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok = r.m[k].(T)
	return v, ok
}

// Shared returns the value stored under k in r, first storing newValue()
// there when there is none: components of one build asking for the same
// key share one value.
func (k *Key[T]) Shared(r *Resources, newValue func() T) T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.m[k].(T); ok {
		return v
	}
	if r.m == nil {
		r.m = map[any]any{}
	}
	v := newValue()
	r.m[k] = v
	return v
}
