package operators

import (
	"context"
	"errors"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/operators/expr"
)

// This file declares the operators for flow files: filter, set, route and
// drop. Building an operator has no side effects, so each spec's Check
// builds it and throws it away: an invalid set target or a route to port
// "in" is found by flowrun validate.

// CheckExpr parses src as an expression of the operators' language; it is
// the checker to give component.Registry.SetExprChecker.
func CheckExpr(src string) error {
	_, err := expr.Parse(src)
	return err
}

// exprOptions returns the expression options of the operators built in
// env; env is nil while checking.
func exprOptions(env *component.Env) expr.Options {
	var o expr.Options
	if env != nil {
		// component.UseClock: now() and now_s() return the build's
		// clock, so a test or a replay fixing it repeats its output.
		o.Now = component.Clock(env.Resources)
	}
	return o
}

// operatorSpec fills Check and Build of an operator spec from one
// constructor.
func operatorSpec(s component.Spec, build func(c *component.Config, o expr.Options) (Operator, error)) component.Spec {
	s.Kind = component.KindOperator
	s.Check = func(c *component.Config) error {
		_, err := build(c, exprOptions(nil))
		return err
	}
	s.Build = func(_ context.Context, env *component.Env, c *component.Config) (component.Component, error) {
		op, err := build(c, exprOptions(env))
		return component.Component{Operator: op}, err
	}
	return s
}

// FilterSpec declares filter: keep the events meeting a condition.
func FilterSpec() component.Spec {
	return operatorSpec(component.Spec{
		Type:      "filter",
		Summary:   "Keeps the events for which the condition is true and drops the others.",
		Shorthand: "if",
		Fields:    []component.Field{{Name: "if", Type: component.TypeExpr, Required: true, Doc: "Condition an event must meet to be kept."}},
	}, func(c *component.Config, o expr.Options) (Operator, error) {
		return NewFilter(FilterOptions{If: c.String("if"), Expr: o})
	})
}

// SetSpec declares set: assign expressions to payload or metadata fields.
func SetSpec() component.Spec {
	return operatorSpec(component.Spec{
		Type: "set",
		Summary: "Sets payload (`data.…`) or metadata (`meta.…`) fields to the values of expressions, " +
			"in the order written. Each expression sees the event as changed by the assignments before it.",
		Extra: &component.Field{Name: "TARGET", Type: component.TypeExpr, Required: true,
			Doc: "Each key is a target path (`data.count`, `meta.kv`) and its value the expression to store there, or `delete()` to remove the field."},
	}, func(c *component.Config, o expr.Options) (Operator, error) {
		if len(c.Extra) == 0 {
			return nil, errors.New("set needs at least one assignment such as `data.x: 'data.y + 1'`")
		}
		opts := SetOptions{Expr: o}
		for _, e := range c.Extra {
			opts.Fields = append(opts.Fields, Assignment{Target: e.Key, Expr: e.Value})
		}
		return NewSet(opts)
	})
}

// RouteSpec declares route: send each event to the port of the first
// matching condition.
func RouteSpec() component.Spec {
	return operatorSpec(component.Spec{
		Type: "route",
		Summary: "Sends each event to the port of the first route whose condition is true, " +
			"or to the default port. Every port named here becomes an output port of the pipeline.",
		Fields: []component.Field{{Name: "default", Type: component.TypeString,
			Doc: "Port for events matching no route (by default they continue on out)."}},
		Extra: &component.Field{Name: "PORT", Type: component.TypeExpr,
			Doc: "Each other key is a port name and its value the condition for sending an event there."},
		Ports: func(c *component.Config) []string {
			var ports []string
			for _, e := range c.Extra {
				ports = append(ports, e.Key)
			}
			if d := c.String("default"); d != "" {
				ports = append(ports, d)
			}
			return ports
		},
		PortsDoc: "one per route, plus the default",
	}, func(c *component.Config, o expr.Options) (Operator, error) {
		if len(c.Extra) == 0 {
			return nil, errors.New("route needs at least one route such as `bans: 'data.count >= 3'`")
		}
		opts := RouteOptions{Default: c.String("default"), Expr: o}
		for _, e := range c.Extra {
			opts.Routes = append(opts.Routes, Route{Port: e.Key, If: e.Value})
		}
		return NewRoute(opts)
	})
}

// DropSpec declares drop: discard every event, or those meeting a
// condition.
func DropSpec() component.Spec {
	return operatorSpec(component.Spec{
		Type:      "drop",
		Summary:   "Drops every event (`drop: {}`), or those for which the condition is true (`drop: EXPR`).",
		Shorthand: "if",
		Fields:    []component.Field{{Name: "if", Type: component.TypeExpr, Doc: "Condition for dropping; every event when unset."}},
	}, func(c *component.Config, o expr.Options) (Operator, error) {
		return NewDrop(DropOptions{If: c.String("if"), Expr: o})
	})
}
