package flowrun

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/internal/suggest"
	"github.com/flowrun/flowrun/pipeline"
)

// Errors of FlowBuilder, for errors.Is; each also wraps ErrInvalidFlow.
var (
	// ErrDuplicateNode reports a node name given twice.
	ErrDuplicateNode = errors.New("duplicate node")
	// ErrUnknownType reports a connector type the registry does not hold.
	ErrUnknownType = errors.New("unknown component type")
)

// FlowBuilder builds a flow from code, without YAML: connectors of
// registered types with their options, pipelines of operators, and the
// program's own Go values (sources, processors, sinks), linked by name.
// Options given from code are checked by the same specs as a flow file's,
// with the same messages, naming the node and the option. A builder is
// not safe for concurrent use.
//
// Each Add and Link call returns its own error, when it can tell at once
// (a duplicate or invalid name, an unknown type); Build returns every
// error of the flow, so a caller may check only Build.
type FlowBuilder struct {
	name  string
	reg   *component.Registry
	nodes map[string]bool
	// connectors and pipelines are the flow, in the order added, as the
	// YAML a flow file would hold.
	connectors yaml.Node
	pipelines  yaml.Node
	links      []string
	// goSpecs declare the Go values added, one spec each.
	goSpecs []component.Spec
	errs    []error
}

// NewFlowBuilder returns a builder of the flow called name (the default
// namespace of its kv connectors) with the components of reg (nil:
// NewRegistry()).
func NewFlowBuilder(name string, reg *component.Registry) *FlowBuilder {
	if reg == nil {
		reg = NewRegistry()
	}
	return &FlowBuilder{name: name, reg: reg, nodes: map[string]bool{},
		connectors: yaml.Node{Kind: yaml.MappingNode}, pipelines: yaml.Node{Kind: yaml.MappingNode}}
}

// fail records err, wrapped with ErrInvalidFlow, and returns it.
func (b *FlowBuilder) fail(err error) error {
	err = fmt.Errorf("flowrun: flow %s: %w: %w", b.name, ErrInvalidFlow, err)
	b.errs = append(b.errs, err)
	return err
}

// addName claims a node name.
func (b *FlowBuilder) addName(name string) error {
	switch {
	case !component.ValidName(name):
		return b.fail(fmt.Errorf("invalid node name %q: use letters, digits, '_', '-' and '.'", name))
	case b.nodes[name]:
		return b.fail(fmt.Errorf("%w %q: the name is already used", ErrDuplicateNode, name))
	}
	b.nodes[name] = true
	return nil
}

// AddConnector adds the connector name of a registered type, with options
// as a flow file would give them: strings, numbers, booleans,
// time.Duration values and lists of strings ([]string). Like a flow
// file's, string options may name environment variables as ${NAME}
// ($${...} stands for ${...} itself), and relative paths are relative to
// the current directory.
func (b *FlowBuilder) AddConnector(name, typ string, options map[string]any) error {
	if err := b.addName(name); err != nil {
		return err
	}
	spec, ok := b.reg.Spec(typ)
	if !ok || spec.Kind == component.KindOperator {
		valid := b.reg.ConnectorTypes()
		return b.fail(fmt.Errorf("connector %s: %w %q%s (valid: %s)", name, ErrUnknownType, typ,
			suggest.DidYouMean(typ, valid), strings.Join(valid, ", ")))
	}
	m := yaml.Node{Kind: yaml.MappingNode}
	appendPair(&m, "type", typ)
	for _, k := range sortedKeys(options) {
		appendPair(&m, k, yamlValue(options[k]))
	}
	b.connectors.Content = append(b.connectors.Content, scalar(name), &m)
	return nil
}

// AddPipeline adds the pipeline name: its steps, in order, each a
// one-entry map from an operator to its options, as in a flow file. The
// options of one step are applied in the order of their names, not of the
// map literal: give set targets that depend on each other steps of their
// own.
//
//	b.AddPipeline("main",
//		map[string]any{"filter": "exists(data.id)"},
//		map[string]any{"set": map[string]any{"meta.kv": `{"put": "k" + data.id}`}})
func (b *FlowBuilder) AddPipeline(name string, steps ...map[string]any) error {
	if err := b.addName(name); err != nil {
		return err
	}
	seq := yaml.Node{Kind: yaml.SequenceNode}
	for _, st := range steps {
		m := yaml.Node{Kind: yaml.MappingNode}
		for _, k := range sortedKeys(st) {
			appendPair(&m, k, yamlValue(st[k]))
		}
		seq.Content = append(seq.Content, &m)
	}
	b.pipelines.Content = append(b.pipelines.Content, scalar(name), &seq)
	return nil
}

// AddSource adds a source the program implements, emitting on ports
// (default "out"). To learn when each of its events is done, the source
// tags them with a pipeline.Tracker.
func (b *FlowBuilder) AddSource(name string, src pipeline.Source, ports ...string) error {
	if len(ports) == 0 {
		ports = []string{pipeline.PortOut}
	}
	return b.addGo(name, component.KindSource, component.Component{Source: src}, src == nil, ports)
}

// AddProcessor adds a processor the program implements, receiving on
// "in" and emitting on ports (default "out"). An event it emits in
// response to another must be made with Event.Derive, so that completion
// tracking follows it.
func (b *FlowBuilder) AddProcessor(name string, p pipeline.Processor, ports ...string) error {
	if len(ports) == 0 {
		ports = []string{pipeline.PortOut}
	}
	return b.addGo(name, component.KindProcessor, component.Component{Processor: p}, p == nil, ports)
}

// AddSink adds a processor with no output ports: the end of the line for
// the events it receives.
func (b *FlowBuilder) AddSink(name string, p pipeline.Processor) error {
	return b.addGo(name, component.KindSink, component.Component{Processor: p}, p == nil, nil)
}

func (b *FlowBuilder) addGo(name string, kind component.Kind, c component.Component, isNil bool, ports []string) error {
	if err := b.addName(name); err != nil {
		return err
	}
	if isNil {
		return b.fail(fmt.Errorf("%s %s: nil value", kind, name))
	}
	for _, p := range ports {
		if !component.ValidName(p) {
			return b.fail(fmt.Errorf("%s %s: invalid port name %q", kind, name, p))
		}
	}
	typ := "go:" + name
	spec := component.Spec{Type: typ, Kind: kind, Summary: "A Go value given to FlowBuilder.",
		Build: func(context.Context, *component.Env, *component.Config) (component.Component, error) { return c, nil }}
	if len(ports) > 0 {
		spec.Ports = component.StaticPorts(ports...)
	}
	b.goSpecs = append(b.goSpecs, spec)
	m := yaml.Node{Kind: yaml.MappingNode}
	appendPair(&m, "type", typ)
	b.connectors.Content = append(b.connectors.Content, scalar(name), &m)
	return nil
}

// Link links the output port from, written "NODE/PORT" (or "NODE" for its
// "out"), to the input of to, written "NODE" or "NODE/in", as a flow
// file's links do. Unknown nodes and ports are reported by Build.
func (b *FlowBuilder) Link(from, to string) error {
	text := from + " -> " + to
	if strings.Contains(from, "->") || strings.Contains(to, "->") {
		return b.fail(fmt.Errorf("malformed link %q", text))
	}
	b.links = append(b.links, text)
	return nil
}

// Build validates the flow and returns it. The error wraps ErrInvalidFlow
// (and ErrDuplicateNode or ErrUnknownType when one applies) and lists
// every problem, each naming the node and the option or link concerned.
func (b *FlowBuilder) Build() (*Flow, error) {
	if len(b.errs) > 0 {
		return nil, errors.Join(b.errs...)
	}
	reg := b.reg
	if len(b.goSpecs) > 0 {
		// A registry of this flow only: the caller's, plus the Go values.
		reg = component.NewRegistry()
		reg.SetExprChecker(b.reg.CheckExpr)
		for _, t := range b.reg.Types("") {
			s, _ := b.reg.Spec(t)
			if err := reg.Register(*s); err != nil {
				return nil, fmt.Errorf("flowrun: flow %s: %w", b.name, err)
			}
		}
		if err := reg.Register(b.goSpecs...); err != nil {
			return nil, fmt.Errorf("flowrun: flow %s: %w", b.name, err)
		}
	}
	doc := yaml.Node{Kind: yaml.MappingNode}
	appendPair(&doc, "name", b.name)
	doc.Content = append(doc.Content, scalar("connectors"), &b.connectors, scalar("pipelines"), &b.pipelines)
	links := yaml.Node{Kind: yaml.SequenceNode}
	for _, l := range b.links {
		links.Content = append(links.Content, scalar(l))
	}
	doc.Content = append(doc.Content, scalar("links"), &links)
	src, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, b.fail(err)
	}
	f, diags, err := flows.LoadBytes(b.name, src, reg)
	if err != nil {
		var lines []string
		for _, d := range diags {
			if d.Severity == flows.Error {
				lines = append(lines, b.describe(d))
			}
		}
		return nil, fmt.Errorf("flowrun: flow %s: %w: %s", b.name, ErrInvalidFlow, strings.Join(lines, "; "))
	}
	fl := &Flow{flow: f}
	for _, d := range diags {
		fl.warnings = append(fl.warnings, b.describe(d))
	}
	return fl, nil
}

// describe words a diagnostic of the generated YAML in the builder's
// terms: no position (it would be one in YAML the caller never saw), the
// node and the option, or the link as given to Link.
func (b *FlowBuilder) describe(d flows.Diagnostic) string {
	msg := d.Message
	if d.Severity != flows.Error {
		msg = d.Severity.String() + ": " + msg
	}
	field := d.Field
	if rest, ok := strings.CutPrefix(field, "connectors."); ok {
		// connectors.NODE or connectors.NODE.OPTION
		if node, opt, hasOpt := strings.Cut(rest, "."); hasOpt {
			return "connector " + node + ": option " + opt + ": " + msg
		}
		return "connector " + rest + ": " + msg
	}
	if rest, ok := strings.CutPrefix(field, "pipelines."); ok {
		// pipelines.NODE, pipelines.NODE[STEP] or
		// pipelines.NODE[STEP].OPERATOR.OPTION
		node, step, hasStep := strings.Cut(rest, "[")
		if !hasStep {
			return "pipeline " + node + ": " + msg
		}
		i, opt, _ := strings.Cut(step, "]")
		where := "pipeline " + node + ", step " + i
		if op, name, hasOpt := strings.Cut(strings.TrimPrefix(opt, "."), "."); hasOpt {
			where += " (" + op + "): option " + name
		}
		return where + ": " + msg
	}
	if rest, ok := strings.CutPrefix(field, "links["); ok {
		if i, err := strconv.Atoi(strings.TrimSuffix(rest, "]")); err == nil && i < len(b.links) {
			return fmt.Sprintf("link %q: %s", b.links[i], msg)
		}
	}
	if field != "" {
		return field + ": " + msg
	}
	return msg
}

func scalar(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// appendPair adds key: v to mapping m.
func appendPair(m *yaml.Node, key string, v any) {
	var n yaml.Node
	if err := n.Encode(v); err != nil {
		n = *scalar(fmt.Sprint(v))
	}
	m.Content = append(m.Content, scalar(key), &n)
}

// yamlValue converts an option value given from code to what its YAML
// spelling encodes: a time.Duration as "1m30s" rather than nanoseconds.
func yamlValue(v any) any {
	switch x := v.(type) {
	case time.Duration:
		return x.String()
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = yamlValue(e)
		}
		return out
	}
	return v
}

// sortedKeys returns m's keys in order: options are independent of their
// order, and sorting makes the generated flow, and so the order of its
// diagnostics, stable.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
