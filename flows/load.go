package flows

import (
	"errors"
	"fmt"
	"github.com/flowrun/flowrun/internal/yamlnode"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// Flow is a loaded, validated flow file.
type Flow struct {
	// Name is the flow's name (also the default kv namespace).
	Name string
	// File is the path the flow was loaded from.
	File string
	// Dir is the directory relative paths in the flow are resolved against.
	Dir string
	// Nodes are the connectors, then the pipelines, in file order.
	Nodes []*Node
	// Links are the links in file order.
	Links []Link

	reg *component.Registry
}

// Node is a connector or a pipeline of a flow.
type Node struct {
	// Name is the node's name, unique in the flow.
	Name string
	// Kind is component.KindSource, component.KindSink,
	// component.KindProcessor (pipelines are processors) or
	// component.KindDuplex (a source that also receives on "in").
	Kind component.Kind
	// Spec is the connector's spec; nil for a pipeline.
	Spec *component.Spec
	// Config is the connector's validated config; nil for a pipeline.
	Config *component.Config
	// Operators are the steps of a pipeline, in order.
	Operators []Operator
	// Ports are the node's output ports.
	Ports []string
	// Line and Col locate the node's name in the flow file.
	Line, Col int

	// broken marks a node whose declaration had errors: links to it are
	// not checked further, so one mistake gives one diagnostic.
	broken bool
	// outUnused marks a pipeline that never emits on "out": its last
	// operator is a route with a default port other than "out".
	outUnused bool
}

// IsPipeline reports whether the node is a pipeline of operators.
func (n *Node) IsPipeline() bool { return n.Spec == nil }

// Operator is one step of a pipeline.
type Operator struct {
	Spec   *component.Spec
	Config *component.Config
	// Line and Col locate the operator in the flow file.
	Line, Col int
}

// Link connects an output port of one node to the input of another.
type Link struct {
	From, FromPort string
	To, ToPort     string
	// Line and Col locate the link in the flow file.
	Line, Col int
}

// String returns the link in flow file syntax, "from/port -> to/in".
func (l Link) String() string {
	return l.From + "/" + l.FromPort + " -> " + l.To + "/" + l.ToPort
}

// Node returns the node with the given name.
func (f *Flow) Node(name string) (*Node, bool) {
	for _, n := range f.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return nil, false
}

// Sources returns the names of the flow's source nodes in file order,
// duplex connectors included.
func (f *Flow) Sources() []string { return f.namesOf(component.KindSource) }

// Sinks returns the names of the flow's sink nodes in file order, duplex
// connectors included.
func (f *Flow) Sinks() []string { return f.namesOf(component.KindSink) }

func (f *Flow) namesOf(k component.Kind) []string {
	var out []string
	for _, n := range f.Nodes {
		if n.Kind == k || n.Kind == component.KindDuplex {
			out = append(out, n.Name)
		}
	}
	return out
}

// Load reads, parses and validates the flow file at path. It returns every
// diagnostic found (errors and warnings, ordered by position). When any
// diagnostic is an error, the flow is nil and the error wraps
// ErrInvalidFlow and lists the errors. Load never panics, whatever the
// file holds.
func Load(path string, reg *component.Registry) (*Flow, []Diagnostic, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read flow file: %w", err)
	}
	return LoadBytes(path, src, reg)
}

// LoadBytes is Load for a flow file already in memory; file names it in
// diagnostics and relative paths are resolved against its directory.
func LoadBytes(file string, src []byte, reg *component.Registry) (*Flow, []Diagnostic, error) {
	return loadBytes(file, src, reg, LoadOptions{})
}

func loadBytes(file string, src []byte, reg *component.Registry, opts LoadOptions) (*Flow, []Diagnostic, error) {
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	l := &loader{file: file, dir: filepath.Dir(file), reg: reg, lookupEnv: opts.LookupEnv}
	flow := l.load(src)
	sortDiagnostics(l.diags)
	if HasErrors(l.diags) {
		return nil, l.diags, &invalidFlowError{file: file, diags: l.diags}
	}
	return flow, l.diags, nil
}

// LoadOptions change how LoadWith reads a flow file.
type LoadOptions struct {
	// LookupEnv gives the value of each ${NAME} of the file. Default
	// os.LookupEnv. flowrun test gives each case's variables this way,
	// over the process's.
	LookupEnv func(name string) (string, bool)
}

// LoadWith is Load with options.
func LoadWith(path string, reg *component.Registry, opts LoadOptions) (*Flow, []Diagnostic, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read flow file: %w", err)
	}
	return loadBytes(path, src, reg, opts)
}

// Validate checks the flow file at path without running it and returns
// every diagnostic; a file that cannot be read gives one error diagnostic.
// It runs exactly the checks Load runs before Build may open anything
// (option types and ranges, ${NAME} expansion, expressions, links, and
// each component's Check: Lua scripts read and compiled, TLS files
// loaded), so a flow without errors gets as far as Build. What only
// opening can tell (a locked store, a broker that does not answer, an
// input file that is missing) is Build's to report.
func Validate(path string, reg *component.Registry) []Diagnostic {
	src, err := os.ReadFile(path)
	if err != nil {
		return []Diagnostic{{File: path, Severity: Error, Message: fmt.Sprintf("read flow file: %v", err)}}
	}
	_, diags, _ := LoadBytes(path, src, reg)
	return diags
}

// loader accumulates diagnostics while walking the YAML tree.
type loader struct {
	file  string
	dir   string
	reg   *component.Registry
	diags []Diagnostic
	refs  []nodeRef // TypeNode options, checked once every node is known
	// lookupEnv gives the values of ${NAME}.
	lookupEnv func(name string) (string, bool)
}

// nodeRef is a component.TypeNode option naming another connector.
type nodeRef struct {
	field *component.Field
	name  string
	pos   *yaml.Node
	path  string // "connectors.rules.kv"
}

func (l *loader) report(sev Severity, n *yaml.Node, field, format string, args ...any) {
	d := Diagnostic{File: l.file, Field: field, Severity: sev, Message: fmt.Sprintf(format, args...)}
	if n != nil {
		d.Line, d.Col = n.Line, n.Column
	}
	l.diags = append(l.diags, d)
}

func (l *loader) errorf(n *yaml.Node, field, format string, args ...any) {
	l.report(Error, n, field, format, args...)
}

func (l *loader) warnf(n *yaml.Node, field, format string, args ...any) {
	l.report(Warning, n, field, format, args...)
}

var yamlLineRe = regexp.MustCompile(`^line (\d+)`)

// yamlContextErrors are the YAML parser errors located by the collection
// they occur in, with that collection's kind.
var yamlContextErrors = map[string]string{
	"did not find expected ',' or '}'":    "flow mapping",
	"did not find expected ',' or ']'":    "flow sequence",
	"did not find expected key":           "mapping",
	"did not find expected '-' indicator": "list",
}

// load parses src. A panic anywhere (a bug, or a pathological document) is
// turned into a diagnostic: loading must never crash the caller.
func (l *loader) load(src []byte) (flow *Flow) {
	defer func() {
		if p := recover(); p != nil {
			l.errorf(nil, "", "internal error while loading the flow: %v", p)
			flow = nil
		}
	}()
	if l.reg == nil {
		l.errorf(nil, "", "no component registry")
		return nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		d := Diagnostic{File: l.file, Severity: Error, Message: "invalid YAML: " + msg}
		if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
			d.Line, _ = strconv.Atoi(m[1])
			d.Col = 1
			rest := strings.TrimPrefix(msg, m[0]+": ")
			if ctx, ok := yamlContextErrors[rest]; ok {
				// The YAML parser reports these at the 0-based line where
				// the enclosing collection starts.
				d.Line++
				rest += " in the " + ctx + " starting here"
			}
			d.Message = "invalid YAML: " + rest
		}
		l.diags = append(l.diags, d)
		return nil
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		l.errorf(nil, "", "empty flow file")
		return nil
	}
	root := yamlnode.Deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		l.errorf(root, "", "a flow file must be a mapping with name, connectors, pipelines and links, got %s", yamlnode.Describe(root))
		return nil
	}
	flow = &Flow{File: l.file, Dir: l.dir, reg: l.reg}
	var connectors, pipelines, links *yaml.Node
	var nameNode *yaml.Node
	l.eachPair(root, "", func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			nameNode = v
		case "connectors":
			connectors = v
		case "pipelines":
			pipelines = v
		case "links":
			links = v
		default:
			l.errorf(k, "", "unknown top-level field %q%s (want name, connectors, pipelines, links)", key,
				didYouMean(key, []string{"name", "connectors", "pipelines", "links"}))
		}
	})
	if nameNode == nil {
		l.errorf(root, "name", "missing required field \"name\"")
	} else if s, ok := valueText(nameNode); !ok || s == "" || yamlnode.IsNull(nameNode) {
		l.errorf(nameNode, "name", "expected a non-empty name, got %s", yamlnode.Describe(nameNode))
	} else if !validName(s) {
		l.errorf(nameNode, "name", "invalid name %q: use letters, digits, '_', '-' and '.'", s)
	} else {
		flow.Name = s
	}
	names := map[string]*Node{}
	if connectors != nil {
		l.loadConnectors(flow, connectors, names)
	}
	if pipelines != nil {
		l.loadPipelines(flow, pipelines, names)
	}
	var linkNodes []linkPos
	use := &usage{referenced: map[string]bool{}, linked: map[string]bool{}, in: map[string]bool{}, out: map[string]bool{}}
	if links != nil {
		linkNodes = l.loadLinks(flow, links, names, use)
	}
	l.checkCycles(flow, linkNodes)
	l.checkRefs(names, use)
	l.checkUsage(flow, use)
	return flow
}

// eachPair calls fn for every key of mapping n, reporting non-scalar and
// duplicate keys.
func (l *loader) eachPair(n *yaml.Node, field string, fn func(key string, k, v *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := yamlnode.Deref(n.Content[i]), yamlnode.Deref(n.Content[i+1])
		key, ok := valueText(k)
		if !ok {
			l.errorf(k, field, "keys must be plain strings, got %s", yamlnode.Describe(k))
			continue
		}
		if seen[key] {
			l.errorf(k, field, "duplicate key %q", key)
			continue
		}
		seen[key] = true
		fn(key, k, v)
	}
}

// validName reports whether s can name a flow, node or port.
func validName(s string) bool { return component.ValidName(s) }

func (l *loader) addNode(flow *Flow, names map[string]*Node, n *Node, k *yaml.Node, field string) {
	if prev, dup := names[n.Name]; dup && (prev.Line != n.Line || prev.Col != n.Col) {
		l.errorf(k, field, "node name %q is already used at line %d", n.Name, prev.Line)
		return
	}
	names[n.Name] = n
	flow.Nodes = append(flow.Nodes, n)
}

func (l *loader) loadConnectors(flow *Flow, m *yaml.Node, names map[string]*Node) {
	if m.Kind != yaml.MappingNode {
		if !yamlnode.IsNull(m) {
			l.errorf(m, "connectors", "expected a mapping of connector names to configs, got %s", yamlnode.Describe(m))
		}
		return
	}
	once := map[string]string{} // OnePerFlow type -> the connector of that type
	l.eachPair(m, "connectors", func(name string, k, v *yaml.Node) {
		field := "connectors." + name
		if !validName(name) {
			l.errorf(k, "connectors", "invalid connector name %q: use letters, digits, '_', '-' and '.'", name)
			return
		}
		if _, dup := names[name]; !dup {
			// Stands for the connector until it is known to be valid.
			names[name] = &Node{Name: name, Line: k.Line, Col: k.Column, broken: true}
		}
		if v.Kind != yaml.MappingNode {
			l.errorf(v, field, "expected a mapping with a type, got %s", yamlnode.Describe(v))
			return
		}
		var typ string
		var typeNode *yaml.Node
		for i := 0; i+1 < len(v.Content); i += 2 {
			if key, _ := valueText(yamlnode.Deref(v.Content[i])); key == "type" {
				typeNode = yamlnode.Deref(v.Content[i+1])
			}
		}
		if typeNode == nil {
			l.errorf(k, field, "missing required option \"type\" (one of %s)", strings.Join(l.reg.ConnectorTypes(), ", "))
			return
		}
		typ, ok := valueText(typeNode)
		if !ok || typ == "" {
			l.errorf(typeNode, field+".type", "expected a connector type, got %s", yamlnode.Describe(typeNode))
			return
		}
		spec, found := l.reg.Spec(typ)
		if !found {
			l.errorf(typeNode, field+".type", "unknown connector type %q%s", typ, typeHint(typ, l.reg.ConnectorTypes()))
			return
		}
		if spec.Kind == component.KindOperator {
			l.errorf(typeNode, field+".type", "%q is an operator, not a connector: use it as a step of a pipeline", typ)
			return
		}
		if spec.OnePerFlow != "" {
			if first, dup := once[typ]; dup {
				l.errorf(typeNode, field+".type", "only one %s connector is allowed per flow (%q already %s)", typ, first, spec.OnePerFlow)
			} else {
				once[typ] = name
			}
		}
		cfg, ok := l.parseOptions(spec, v, k, field, name, "type")
		if !ok {
			return
		}
		node := &Node{Name: name, Spec: spec, Config: cfg, Line: k.Line, Col: k.Column,
			Kind: spec.KindFor(cfg), Ports: spec.PortsFor(cfg)}
		l.addNode(flow, names, node, k, "connectors")
	})
}

// parseOptions validates the options in mapping m (nil: no options) against
// spec, then runs the spec's Check. key locates the component for
// missing-option errors. ok is false when any option was invalid.
func (l *loader) parseOptions(spec *component.Spec, m *yaml.Node, key *yaml.Node, field, node string, skip string) (*component.Config, bool) {
	cfg := component.NewConfig(node, spec.Type, nil)
	ok := true
	given := map[string]*yaml.Node{}  // options present, valid or not, by field name
	values := map[string]*yaml.Node{} // their values
	if m != nil {
		l.eachPair(m, field, func(name string, k, v *yaml.Node) {
			if name == skip {
				return
			}
			f := spec.Field(name)
			if f == nil && spec.Extra == nil {
				l.errorf(k, field, "unknown option %q%s", name, didYouMean(name, spec.Keys()))
				ok = false
				return
			}
			sub := field + "." + name
			if f == nil {
				f = spec.Extra
			} else if given[f.Name] != nil {
				l.errorf(k, field, "option %q is set twice (%q is an alias of %q)", f.Name, name, f.Name)
				ok = false
				return
			} else {
				given[f.Name], values[f.Name] = k, v
			}
			if f.Type == component.TypeMap && yamlnode.Deref(v).Kind == yaml.MappingNode {
				m, mok := l.mapValue(f, yamlnode.Deref(v), sub)
				if !mok {
					ok = false
					return
				}
				cfg.Set(f.Name, m)
				return
			}
			text, scalar := valueText(v)
			if f.Type == component.TypeStrings && yamlnode.Deref(v).Kind == yaml.SequenceNode {
				text, scalar = l.listText(yamlnode.Deref(v), sub)
				if text == "" && scalar {
					ok = false // an item was reported
					return
				}
			}
			if !scalar {
				l.errorf(v, sub, "expected %s, got %s", typeDesc(f), yamlnode.Describe(v))
				ok = false
				return
			}
			if yamlnode.IsNull(v) && f.Type != component.TypeExpr {
				l.errorf(v, sub, "expected %s, got nothing", typeDesc(f))
				ok = false
				return
			}
			if f.Expands() {
				var err error
				if text, err = component.ExpandEnvFunc(text, l.lookupEnv); err != nil {
					l.errorf(v, sub, "%v", err)
					ok = false
					return
				}
			}
			val, err := l.reg.ParseValue(f, text, yamlnode.IsNull(v), l.dir)
			pos := v
			if err == nil && f.Type == component.TypeExpr {
				if cerr := l.reg.CheckExpr(text); cerr != nil {
					err = fmt.Errorf("invalid expression %q: %w", text, cerr)
					pos = exprErrorPos(v, cerr)
				}
			}
			if err != nil {
				l.errorf(pos, sub, "%v", err)
				ok = false
				return
			}
			if f == spec.Extra {
				cfg.Extra = append(cfg.Extra, component.Entry{Key: name, Value: text, Line: k.Line, Col: k.Column})
				return
			}
			if f.Type == component.TypeNode {
				l.refs = append(l.refs, nodeRef{field: f, name: text, pos: v, path: sub})
			}
			cfg.Set(f.Name, val)
		})
	}
	// Defaults first: conditions on other options see their defaults.
	for i := range spec.Fields {
		f := &spec.Fields[i]
		if cfg.Has(f.Name) || given[f.Name] != nil || f.Default == "" {
			continue
		}
		if val, err := l.reg.ParseValue(f, f.Default, false, l.dir); err == nil {
			cfg.SetDefault(f.Name, val)
		}
	}
	for i := range spec.Fields {
		f := &spec.Fields[i]
		if k := given[f.Name]; k != nil {
			// An invalid value of the tested option is reported already.
			if w := f.OnlyWhen; w != nil && (given[w.Field] == nil || cfg.Has(w.Field)) && !w.Holds(cfg) {
				l.warnf(k, field, "option %q has no effect: it applies only when %s", f.Name, f.OnlyWhen.Describe(nil))
			}
			continue
		}
		switch {
		case !f.Required:
		case f.RequiredWhen == nil:
			l.errorf(key, field, "missing required option %q", f.Name)
			ok = false
		case f.RequiredWhen.Holds(cfg):
			l.errorf(key, field, "missing option %q, required when %s", f.Name, f.RequiredWhen.Describe(cfg))
			ok = false
		}
	}
	if ok && spec.Check != nil {
		ok = l.check(spec, cfg, key, field, values)
	}
	return cfg, ok
}

// check runs spec.Check on a config whose options are valid, reporting its
// error at the option it names (see component.OptionError), else at key.
// A panicking Check is reported, not propagated: loading never crashes.
func (l *loader) check(spec *component.Spec, cfg *component.Config, key *yaml.Node, field string, values map[string]*yaml.Node) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			l.errorf(key, field, "internal error checking %s: %v", spec.Type, p)
			ok = false
		}
	}()
	err := spec.Check(cfg)
	if err == nil {
		return true
	}
	pos, at := key, field
	var oe *component.OptionError
	if errors.As(err, &oe) {
		if f := spec.Field(oe.Option); f != nil && values[f.Name] != nil {
			pos, at = values[f.Name], field+"."+f.Name
			err = oe.Err
		}
	}
	l.errorf(pos, at, "%s", strings.TrimSpace(strings.TrimPrefix(err.Error(), spec.Type+": ")))
	return false
}

// mapValue reads a component.TypeMap option written as a mapping: scalar
// values, ${NAME} expanded. ok is false when an entry was reported.
func (l *loader) mapValue(f *component.Field, m *yaml.Node, field string) (map[string]string, bool) {
	out := map[string]string{}
	ok := true
	l.eachPair(m, field, func(name string, _, v *yaml.Node) {
		sub := field + "." + name
		text, scalar := valueText(v)
		if !scalar || yamlnode.IsNull(v) {
			l.errorf(v, sub, "expected a string, got %s", yamlnode.Describe(v))
			ok = false
			return
		}
		if f.Expands() {
			var err error
			if text, err = component.ExpandEnv(text); err != nil {
				l.errorf(v, sub, "%v", err)
				ok = false
				return
			}
		}
		out[name] = text
	})
	return out, ok
}

// listText joins the items of a YAML list with commas, for a component.TypeStrings
// option. An item that is not a plain string is reported: then text is ""
// and scalar true.
func (l *loader) listText(seq *yaml.Node, field string) (text string, scalar bool) {
	items := make([]string, 0, len(seq.Content))
	for i, item := range seq.Content {
		s, isScalar := valueText(item)
		if !isScalar || yamlnode.IsNull(item) || strings.Contains(s, ",") {
			l.errorf(item, fmt.Sprintf("%s[%d]", field, i), "expected a string without commas, got %s", yamlnode.Describe(item))
			return "", true
		}
		items = append(items, s)
	}
	return strings.Join(items, ","), true
}

// exprErrorPos points at the problem inside an expression when the
// expression's error says where it is and the YAML scalar is written on one
// line, so that the column of the diagnostic is the column of the mistake.
func exprErrorPos(v *yaml.Node, err error) *yaml.Node {
	var se *expr.SyntaxError
	if !errors.As(err, &se) || se.Line != 1 || strings.ContainsAny(v.Value, "\n\\") || strings.Contains(v.Value, "'") {
		return v
	}
	col := v.Column + se.Column - 1
	switch v.Style {
	case 0, yaml.TaggedStyle:
	case yaml.SingleQuotedStyle, yaml.DoubleQuotedStyle:
		col++ // the opening quote
	default:
		return v
	}
	return &yaml.Node{Line: v.Line, Column: col}
}

// typeDesc says in words what a field expects.
func typeDesc(f *component.Field) string {
	switch f.Type {
	case component.TypeInt:
		return "an integer"
	case component.TypeBool:
		return "true or false"
	case component.TypeDuration:
		return "a duration"
	case component.TypeByteSize:
		return "a size in bytes"
	case component.TypeExpr:
		return "an expression"
	case component.TypePath:
		return "a path"
	case component.TypeEnum:
		return "one of " + strings.Join(f.Enum, ", ")
	case component.TypeMap:
		return "a mapping of names to strings"
	case component.TypeNode:
		return "the name of a " + f.NodeType + " connector"
	case component.TypeStrings:
		return "a list such as `" + f.Name + ": [a, b]`"
	}
	return "a string"
}

func (l *loader) loadPipelines(flow *Flow, m *yaml.Node, names map[string]*Node) {
	if m.Kind != yaml.MappingNode {
		if !yamlnode.IsNull(m) {
			l.errorf(m, "pipelines", "expected a mapping of pipeline names to lists of operators, got %s", yamlnode.Describe(m))
		}
		return
	}
	l.eachPair(m, "pipelines", func(name string, k, v *yaml.Node) {
		field := "pipelines." + name
		if !validName(name) {
			l.errorf(k, "pipelines", "invalid pipeline name %q: use letters, digits, '_', '-' and '.'", name)
			return
		}
		node := &Node{Name: name, Kind: component.KindProcessor, Line: k.Line, Col: k.Column,
			Ports: []string{pipeline.PortOut, pipeline.PortErr}}
		switch {
		case yamlnode.IsNull(v):
			// An empty pipeline passes events through.
		case v.Kind != yaml.SequenceNode:
			l.errorf(v, field, "expected a list of operators, got %s", yamlnode.Describe(v))
		default:
			for i, item := range v.Content {
				op, ok := l.loadOperator(yamlnode.Deref(item), fmt.Sprintf("%s[%d]", field, i), name)
				if !ok {
					node.broken = true
					continue
				}
				node.Operators = append(node.Operators, op)
				node.outUnused = op.Spec.Type == "route" && op.Config.String("default") != "" &&
					op.Config.String("default") != pipeline.PortOut
				for _, p := range op.Spec.PortsFor(op.Config) {
					if !contains(node.Ports, p) {
						node.Ports = append(node.Ports, p)
					}
				}
			}
		}
		l.addNode(flow, names, node, k, "pipelines")
	})
}

func (l *loader) loadOperator(item *yaml.Node, field, pipelineName string) (Operator, bool) {
	if item.Kind != yaml.MappingNode || len(item.Content) != 2 {
		l.errorf(item, field, "expected one operator such as `filter: EXPR`, got %s", describeOp(item))
		return Operator{}, false
	}
	k, v := yamlnode.Deref(item.Content[0]), yamlnode.Deref(item.Content[1])
	typ, ok := valueText(k)
	if !ok {
		l.errorf(k, field, "expected an operator name, got %s", yamlnode.Describe(k))
		return Operator{}, false
	}
	spec, found := l.reg.Spec(typ)
	if !found {
		l.errorf(k, field, "unknown operator %q%s", typ, typeHint(typ, l.reg.Types(component.KindOperator)))
		return Operator{}, false
	}
	if spec.Kind != component.KindOperator {
		l.errorf(k, field, "%q is a connector, not an operator: declare it under connectors and link to it", typ)
		return Operator{}, false
	}
	field += "." + typ
	var opts *yaml.Node
	switch {
	case yamlnode.IsNull(v):
	case v.Kind == yaml.MappingNode:
		opts = v
	case v.Kind == yaml.ScalarNode && spec.Shorthand != "":
		// filter: EXPR is filter: {if: EXPR}.
		opts = &yaml.Node{Kind: yaml.MappingNode, Line: v.Line, Column: v.Column, Content: []*yaml.Node{
			{Kind: yaml.ScalarNode, Tag: "!!str", Value: spec.Shorthand, Line: v.Line, Column: v.Column}, v,
		}}
	default:
		l.errorf(v, field, "expected a mapping of options, got %s", yamlnode.Describe(v))
		return Operator{}, false
	}
	cfg, ok := l.parseOptions(spec, opts, k, field, pipelineName, "")
	if !ok {
		return Operator{}, false
	}
	return Operator{Spec: spec, Config: cfg, Line: k.Line, Col: k.Column}, true
}

// typeHint suggests the closest of the registered types to an unknown one,
// or lists them all when none is close: the registry may hold types the
// reader does not know of (a program's own components).
func typeHint(typ string, types []string) string {
	if s := didYouMean(typ, types); s != "" {
		return s
	}
	return " (registered: " + strings.Join(types, ", ") + ")"
}

func describeOp(n *yaml.Node) string {
	if n.Kind == yaml.MappingNode && len(n.Content) > 2 {
		return fmt.Sprintf("a mapping with %d keys (start each operator with its own \"- \")", len(n.Content)/2)
	}
	return yamlnode.Describe(n)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// parseLink parses "from[/port] -> to[/port]"; omitted ports are "out"
// and "in".
func parseLink(text string) (Link, bool) {
	from, to, ok := strings.Cut(text, "->")
	if !ok || strings.Contains(to, "->") {
		return Link{}, false
	}
	end := func(s, defPort string) (string, string, bool) {
		s = strings.TrimSpace(s)
		name, port, hasPort := strings.Cut(s, "/")
		if !hasPort {
			port = defPort
		}
		return name, port, validName(name) && validName(port)
	}
	var lk Link
	var okFrom, okTo bool
	lk.From, lk.FromPort, okFrom = end(from, pipeline.PortOut)
	lk.To, lk.ToPort, okTo = end(to, pipeline.PortIn)
	return lk, okFrom && okTo
}

// loadLinks parses and checks links, returning the YAML node of each link
// in flow.Links for later diagnostics.
func (l *loader) loadLinks(flow *Flow, seq *yaml.Node, names map[string]*Node, use *usage) []linkPos {
	if seq.Kind != yaml.SequenceNode {
		if !yamlnode.IsNull(seq) {
			l.errorf(seq, "links", "expected a list of links such as \"input/out -> main/in\", got %s", yamlnode.Describe(seq))
		}
		return nil
	}
	var nodes []linkPos
	seen := map[Link]int{}
	for i, item := range seq.Content {
		item = yamlnode.Deref(item)
		field := fmt.Sprintf("links[%d]", i)
		text, ok := valueText(item)
		if !ok || yamlnode.IsNull(item) {
			l.errorf(item, field, "expected a link such as \"input/out -> main/in\", got %s", yamlnode.Describe(item))
			continue
		}
		link, ok := parseLink(text)
		if !ok {
			l.errorf(item, field, "malformed link %q: want \"NODE/PORT -> NODE/in\"", text)
			continue
		}
		link.Line, link.Col = item.Line, item.Column
		use.linked[link.From], use.linked[link.To] = true, true
		use.in[link.To] = true
		use.out[link.From+"/"+link.FromPort] = true
		from, okFrom := names[link.From]
		to, okTo := names[link.To]
		if !okFrom {
			l.errorf(item, field, "link from unknown node %q%s", link.From, didYouMean(link.From, sortedKeys(names)))
		}
		if !okTo {
			l.errorf(item, field, "link to unknown node %q%s", link.To, didYouMean(link.To, sortedKeys(names)))
		}
		if !okFrom || !okTo || from.broken || to.broken {
			continue
		}
		bad := false
		if !contains(from.Ports, link.FromPort) {
			bad = true
			if len(from.Ports) == 0 {
				l.errorf(item, field, "%s %q is a sink and has no output ports", nodeWord(from), from.Name)
			} else {
				l.errorf(item, field, "%s %q has no output port %q%s (ports: %s)", nodeWord(from), from.Name, link.FromPort,
					didYouMean(link.FromPort, from.Ports), strings.Join(from.Ports, ", "))
			}
		}
		if to.Kind == component.KindSource {
			bad = true
			l.errorf(item, field, "link into a source: %s %q is a source and has no input port", nodeWord(to), to.Name)
		} else if link.ToPort != pipeline.PortIn {
			bad = true
			l.errorf(item, field, "%s %q has no input port %q (links go into port \"in\")", nodeWord(to), to.Name, link.ToPort)
		}
		if bad {
			continue
		}
		key := link
		key.Line, key.Col = 0, 0
		if prev, dup := seen[key]; dup {
			l.warnf(item, field, "duplicate link %q (also at line %d)", text, prev)
			continue
		}
		seen[key] = item.Line
		flow.Links = append(flow.Links, link)
		nodes = append(nodes, linkPos{node: item, field: field})
	}
	return nodes
}

// linkPos remembers where a link of Flow.Links was written.
type linkPos struct {
	node  *yaml.Node
	field string
}

func nodeWord(n *Node) string {
	if n.IsPipeline() {
		return "pipeline"
	}
	return "connector"
}

// checkCycles reports every link that closes a cycle.
func (l *loader) checkCycles(flow *Flow, linkNodes []linkPos) {
	out := map[string][]int{} // node -> indices of links from it
	for i, lk := range flow.Links {
		out[lk.From] = append(out[lk.From], i)
	}
	// A link into a duplex connector ends at its sink side, a vertex of
	// its own that links nowhere: requests going out of an HTTP server and
	// answers coming back into it form no cycle.
	target := func(lk Link) string {
		if n, ok := flow.Node(lk.To); ok && n.Kind == component.KindDuplex {
			return component.DuplexSink(lk.To)
		}
		return lk.To
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var path []string
	var visit func(name string)
	visit = func(name string) {
		state[name] = visiting
		path = append(path, name)
		for _, i := range out[name] {
			to := target(flow.Links[i])
			switch state[to] {
			case visiting:
				start := 0
				for j, p := range path {
					if p == to {
						start = j
					}
				}
				cycle := append(append([]string(nil), path[start:]...), to)
				l.errorf(linkNodes[i].node, linkNodes[i].field, "links form a cycle: %s", strings.Join(cycle, " -> "))
			case 0:
				visit(to)
			}
		}
		path = path[:len(path)-1]
		state[name] = done
	}
	for _, n := range flow.Nodes {
		if state[n.Name] == 0 {
			visit(n.Name)
		}
	}
}

// usage records what the links of a flow mention, including links
// rejected for other reasons, so that one bad link does not also produce
// "not linked" warnings.
type usage struct {
	referenced map[string]bool // node names named by component.TypeNode options
	linked     map[string]bool // node names
	in         map[string]bool // node names linked into
	out        map[string]bool // "node/port" linked from
}

// checkUsage warns about nodes nothing links to or from, output ports
// (err, out, route targets, declared ports) that are not linked, and a flow
// without a source.
func (l *loader) checkUsage(flow *Flow, use *usage) {
	linkedOut, in, any := use.out, use.in, use.linked
	for _, n := range flow.Nodes {
		if n.broken {
			continue
		}
		pos := &yaml.Node{Line: n.Line, Column: n.Col}
		field := "connectors." + n.Name
		if n.IsPipeline() {
			field = "pipelines." + n.Name
		}
		if !any[n.Name] && use.referenced[n.Name] {
			continue // used by the connectors naming it, not through links
		}
		if !any[n.Name] {
			l.warnf(pos, field, "%s %q is not linked to anything", nodeWord(n), n.Name)
			continue
		}
		switch {
		case n.Kind == component.KindDuplex && !in[n.Name]:
			l.warnf(pos, field, "nothing links into %s/in, so %s %q gets nothing back (an http_server answers 204)", n.Name, nodeWord(n), n.Name)
		case n.Kind != component.KindSource && !in[n.Name] && !use.referenced[n.Name]:
			l.warnf(pos, field, "nothing links into %s %q, so it receives no events", nodeWord(n), n.Name)
		}
		for _, p := range n.Ports {
			switch {
			case linkedOut[n.Name+"/"+p], p == pipeline.PortOut && n.outUnused, optionalPort(n, p):
			case p == pipeline.PortOut && !n.IsPipeline() && linksOwnPort(n, linkedOut):
				// A connector with ports of its own (a Lua script's
				// ports) may emit only on those.
			case p == pipeline.PortErr:
				l.warnf(pos, field, "port \"err\" is not linked: failed events will only be logged (link %s/err to a sink)", n.Name)
			default:
				l.warnf(pos, field, "port %q is not linked: events sent to it are dropped (link %s/%s to a node)", p, n.Name, p)
			}
		}
	}
	if len(flow.Sources()) == 0 && len(flow.Nodes) > 0 && !HasErrors(l.diags) {
		l.warnf(nil, "connectors", "the flow has no source, so nothing feeds it events (add one such as `input: { type: stdin }`)")
	}
}

// optionalPort reports whether port p of n is one its component (or one of
// its operators) declares optional (component.Spec.OptionalPorts).
func optionalPort(n *Node, p string) bool {
	if n.Spec != nil {
		return contains(n.Spec.OptionalPorts, p)
	}
	for _, op := range n.Operators {
		if contains(op.Spec.OptionalPorts, p) {
			return true
		}
	}
	return false
}

// linksOwnPort reports whether a port of n other than out and err is
// linked.
func linksOwnPort(n *Node, linkedOut map[string]bool) bool {
	for _, p := range n.Ports {
		if p != pipeline.PortOut && p != pipeline.PortErr && linkedOut[n.Name+"/"+p] {
			return true
		}
	}
	return false
}

// checkRefs reports component.TypeNode options naming no connector of the flow, or
// one of the wrong type, and records the nodes they name as used.
func (l *loader) checkRefs(names map[string]*Node, use *usage) {
	for _, r := range l.refs {
		var ofType []string
		for _, name := range sortedKeys(names) {
			if n := names[name]; n.Spec != nil && n.Spec.Type == r.field.NodeType {
				ofType = append(ofType, name)
			}
		}
		list := "none"
		if len(ofType) > 0 {
			list = strings.Join(ofType, ", ")
		}
		n, ok := names[r.name]
		switch {
		case !ok:
			l.errorf(r.pos, r.path, "no connector %q in this flow%s (%s connectors: %s)", r.name, didYouMean(r.name, ofType), r.field.NodeType, list)
		case n.broken:
			use.referenced[r.name] = true // its own errors are reported
		case n.IsPipeline():
			l.errorf(r.pos, r.path, "%q is a pipeline, not a %s connector (%s connectors: %s)", r.name, r.field.NodeType, r.field.NodeType, list)
		case n.Spec.Type != r.field.NodeType:
			l.errorf(r.pos, r.path, "connector %q is of type %s, not %s (%s connectors: %s)", r.name, n.Spec.Type, r.field.NodeType, r.field.NodeType, list)
		default:
			use.referenced[r.name] = true
		}
	}
}

// valueText returns the text of a scalar node and whether n is a scalar.
func valueText(n *yaml.Node) (string, bool) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode {
		return "", false
	}
	return n.Value, true
}

// sortedKeys returns m's keys in order, for deterministic messages.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
