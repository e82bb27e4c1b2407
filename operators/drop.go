package operators

import (
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// DropOptions configure a drop.
type DropOptions struct {
	// If, when set, limits dropping to the events meeting the condition;
	// the others pass on "out" unchanged. Empty drops every event.
	If string
	// Expr configures the expressions: the clock of now(), the size bound
	// of string functions. The zero value gives the real clock and the
	// defaults of expr.Options.
	Expr expr.Options
}

type drop struct{ cond *expr.Expr }

// NewDrop returns an operator that discards every event, or only those
// whose condition is true when opts.If is set.
func NewDrop(opts DropOptions) (Operator, error) {
	if opts.If == "" {
		return &drop{}, nil
	}
	cond, err := parseCond("drop", "if", opts.If, opts.Expr)
	if err != nil {
		return nil, err
	}
	return &drop{cond: cond}, nil
}

func (d *drop) Apply(ev pipeline.Event, emit func(string, pipeline.Event)) error {
	if d.cond == nil {
		return nil
	}
	match, err := d.cond.EvalBool(ev)
	if err != nil {
		return err
	}
	if !match {
		emit(pipeline.PortOut, ev)
	}
	return nil
}

func (d *drop) Ports() []string { return nil }
func (d *drop) String() string  { return "drop" }
