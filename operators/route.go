package operators

import (
	"fmt"

	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// Route is one branch of a route operator.
type Route struct {
	// Port is the output port matching events are sent to (required):
	// letters, digits, '_' and '-'; "out" continues the pipeline; "err" and
	// "in" are reserved.
	Port string
	// If is the condition selecting events for Port (required).
	If string
}

// RouteOptions configure a route.
type RouteOptions struct {
	// Routes are tried in order; the first whose condition is true wins.
	// At least one is required.
	Routes []Route
	// Default is the port of events no route matches. Default "out", which
	// passes them to the next operator.
	Default string
	// Expr configures the expressions: the clock of now(), the size bound
	// of string functions. The zero value gives the real clock and the
	// defaults of expr.Options.
	Expr expr.Options
}

// EnsureDefaults fills in Default.
func (o *RouteOptions) EnsureDefaults() {
	if o.Default == "" {
		o.Default = pipeline.PortOut
	}
}

type route struct {
	conds []*expr.Expr
	ports []string // per route
	def   string
	extra []string // Ports()
}

// NewRoute returns an operator that sends each event, unchanged, to the port
// of the first route whose condition is true, or to opts.Default.
func NewRoute(opts RouteOptions) (Operator, error) {
	opts.EnsureDefaults()
	if len(opts.Routes) == 0 {
		return nil, fmt.Errorf("route: %w: at least one route is required", ErrInvalidOption)
	}
	r := &route{def: opts.Default}
	seen := map[string]bool{}
	addPort := func(p string) {
		if p != pipeline.PortOut && !seen[p] {
			seen[p] = true
			r.extra = append(r.extra, p)
		}
	}
	for i, rt := range opts.Routes {
		if err := checkPort(rt.Port); err != nil {
			return nil, fmt.Errorf("route: route %d: %w", i+1, err)
		}
		cond, err := parseCond("route", fmt.Sprintf("route %q", rt.Port), rt.If, opts.Expr)
		if err != nil {
			return nil, err
		}
		r.conds = append(r.conds, cond)
		r.ports = append(r.ports, rt.Port)
		addPort(rt.Port)
	}
	if err := checkPort(opts.Default); err != nil {
		return nil, fmt.Errorf("route: option default: %w", err)
	}
	addPort(opts.Default)
	return r, nil
}

func checkPort(p string) error {
	switch {
	case !validPort(p):
		return fmt.Errorf("%w: port %q must be letters, digits, '_' or '-'", ErrInvalidOption, p)
	case p == pipeline.PortErr || p == pipeline.PortIn:
		return fmt.Errorf("%w: port %q is reserved", ErrInvalidOption, p)
	}
	return nil
}

func (r *route) Apply(ev pipeline.Event, emit func(string, pipeline.Event)) error {
	for i, c := range r.conds {
		ok, err := c.EvalBool(ev)
		if err != nil {
			return fmt.Errorf("route %q: %w", r.ports[i], err)
		}
		if ok {
			emit(r.ports[i], ev)
			return nil
		}
	}
	emit(r.def, ev)
	return nil
}

// Ports returns the route ports and the default port, except "out", in the
// order they were declared.
func (r *route) Ports() []string { return append([]string(nil), r.extra...) }
func (r *route) String() string  { return "route" }
