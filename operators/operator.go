// Package operators implements the steps of a flowrun pipeline: filter,
// set, route and drop, and Pipeline, which runs a list of them in sequence
// as one pipeline.Processor.
//
// Operators read events with the expressions of package expr (gjson paths
// over the raw bytes) and build new byte slices with sjson for what they
// change; they never modify the bytes of an event they receive. Conditions
// and values are parsed when an operator is built, so a malformed expression
// is reported before any event flows.
//
// Operators are synchronous: Apply handles one event and calls emit for
// each result, and a Pipeline chains them with plain function calls (no
// goroutines, no channels), which keeps the order of events.
package operators

import (
	"errors"
	"fmt"

	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// Errors returned by the constructors and by Apply. Constructors wrap
// ErrInvalidExpression or ErrInvalidOption with the option concerned; Apply
// wraps expr.ErrEval or ErrTarget with the expression or target concerned.
var (
	// ErrInvalidExpression reports an expression that does not parse; the
	// error also wraps the *expr.SyntaxError with its column.
	ErrInvalidExpression = errors.New("invalid expression")
	// ErrInvalidOption reports a missing or malformed option other than an
	// expression: an empty condition, an invalid port name or target.
	ErrInvalidOption = errors.New("invalid option")
	// ErrTarget reports a set that cannot be applied to an event: the
	// value is missing, meta would not be an object, or a parent on the
	// target path is not an object or array.
	ErrTarget = errors.New("cannot set target")
)

// Operator is one step of a pipeline.
//
// Apply handles one event and calls emit for each event it produces: on
// pipeline.PortOut to pass it to the next operator, or on one of Ports to
// send it straight out of the pipeline. Apply may emit nothing (the event
// is dropped). It must not modify ev's bytes nor keep emit after returning.
// A returned error sends the pipeline's original input event to its "err"
// port with meta.error set; events already emitted stay emitted.
type Operator interface {
	Apply(ev pipeline.Event, emit func(port string, ev pipeline.Event)) error
	// Ports lists the output ports beyond "out" and "err" that Apply may
	// emit on; nil for most operators.
	Ports() []string
}

// OperatorFunc adapts a function to the Operator interface; it has no extra
// ports.
type OperatorFunc func(ev pipeline.Event, emit func(port string, ev pipeline.Event)) error

// Apply calls f(ev, emit).
func (f OperatorFunc) Apply(ev pipeline.Event, emit func(port string, ev pipeline.Event)) error {
	return f(ev, emit)
}

// Ports returns nil.
func (f OperatorFunc) Ports() []string { return nil }

// parseCond parses a required condition, wrapping errors with the operator
// and option names so that a flow author can find the field.
func parseCond(op, option, src string, opts expr.Options) (*expr.Expr, error) {
	if src == "" {
		return nil, fmt.Errorf("%s: option %s: %w: a condition is required", op, option, ErrInvalidOption)
	}
	e, err := expr.ParseWith(src, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: option %s: %w: %w", op, option, ErrInvalidExpression, err)
	}
	if e.IsDelete() {
		serr := &expr.SyntaxError{Src: src, Line: 1, Column: 1, Msg: "delete() removes a set target; a condition must be true or false"}
		return nil, fmt.Errorf("%s: option %s: %w: %w", op, option, ErrInvalidExpression, serr)
	}
	return e, nil
}

// validPort reports whether name can be a port: letters, digits, '_' and
// '-', not empty.
func validPort(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c == '_' || c == '-' || (c >= '0' && c <= '9') || (c|0x20 >= 'a' && c|0x20 <= 'z')) {
			return false
		}
	}
	return true
}
