package operators

import (
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// FilterOptions configure a filter.
type FilterOptions struct {
	// If is the condition an event must meet to be kept (required). It
	// must evaluate to true or false; any other result is an error.
	If string
	// Expr configures the expressions: the clock of now(), the size bound
	// of string functions. The zero value gives the real clock and the
	// defaults of expr.Options.
	Expr expr.Options
}

type filter struct{ cond *expr.Expr }

// NewFilter returns an operator that passes on "out" the events whose
// condition is true, unchanged, and drops the others.
func NewFilter(opts FilterOptions) (Operator, error) {
	cond, err := parseCond("filter", "if", opts.If, opts.Expr)
	if err != nil {
		return nil, err
	}
	return &filter{cond: cond}, nil
}

func (f *filter) Apply(ev pipeline.Event, emit func(string, pipeline.Event)) error {
	ok, err := f.cond.EvalBool(ev)
	if err != nil {
		return err
	}
	if ok {
		emit(pipeline.PortOut, ev)
	}
	return nil
}

func (f *filter) Ports() []string { return nil }
func (f *filter) String() string  { return "filter" }
