package flows

import (
	"context"
	"fmt"
	"math"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/pipeline"
)

// Kind is the role a component plays in a flow.
type Kind string

// Kinds of components.
const (
	// KindSource produces events; nothing links into it.
	KindSource Kind = "source"
	// KindSink consumes events and has no output ports.
	KindSink Kind = "sink"
	// KindProcessor receives events on "in" and emits on output ports.
	KindProcessor Kind = "processor"
	// KindOperator is a step of a pipeline, not a node of its own.
	KindOperator Kind = "operator"
)

// FieldType is the type of an option's value.
type FieldType string

// Option types.
const (
	// TypeString is any scalar, taken as text.
	TypeString FieldType = "string"
	// TypeInt is a whole number.
	TypeInt FieldType = "int"
	// TypeBool is true or false.
	TypeBool FieldType = "bool"
	// TypeDuration is a Go duration such as "5ms" or "1m30s".
	TypeDuration FieldType = "duration"
	// TypeByteSize is a number of bytes, with an optional unit: B, KB, MB,
	// GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
	TypeByteSize FieldType = "bytesize"
	// TypeExpr is an expression of the operators' expression language,
	// checked when the flow is loaded.
	TypeExpr FieldType = "expr"
	// TypePath is a file system path, relative to the flow file's
	// directory unless absolute.
	TypePath FieldType = "path"
	// TypeEnum is one of Field.Enum.
	TypeEnum FieldType = "enum"
	// TypeStrings is a list of strings, written as a YAML list or as one
	// comma-separated string; empty items are dropped and at least one
	// must remain.
	TypeStrings FieldType = "strings"
	// TypeNode names another connector of the same flow, of type
	// Field.NodeType. The loader checks that it exists and has that type,
	// and Build builds it first so the component can reach it through
	// BuildEnv.Use.
	TypeNode FieldType = "node"
)

// Field describes one option of a component: how it is validated and how it
// is documented.
type Field struct {
	// Name is the option's key in the flow file.
	Name string
	// Type says which values are valid.
	Type FieldType
	// Required options must be set; with RequiredWhen, only in configs
	// where that condition holds.
	Required bool
	// RequiredWhen limits Required to the configs meeting a condition on
	// another option (the kv connector's dir is required only when its
	// backend is pebble). Nil: Required holds for every config.
	RequiredWhen *When
	// OnlyWhen, when set, says the option has an effect only in configs
	// meeting the condition; setting it in another config is warned about.
	OnlyWhen *When
	// Env lets the value name environment variables as ${NAME}, replaced
	// when the flow is loaded; naming an unset variable is an error.
	Env bool
	// Default is the value used when the option is not set, written as it
	// would be in the flow file ("" for none).
	Default string
	// Doc is a one-sentence description for the reference.
	Doc string
	// Enum lists the valid values of a TypeEnum field.
	Enum []string
	// Aliases are other accepted keys for the option.
	Aliases []string
	// NodeType is the connector type a TypeNode field must name ("kv").
	NodeType string
	// Positive refuses zero and negative values of a TypeInt or
	// TypeByteSize field: for a limit, where neither may mean "off".
	Positive bool
}

// When is a condition on another option of the same component: it holds
// for a config in which that option's value (given or default) is one of
// Values.
type When struct {
	// Field names the option tested; it must be a field of the spec.
	Field string
	// Values are the values for which the condition holds.
	Values []string
}

// holds reports whether the condition holds for c. An option that was
// given an invalid value has no value, so no condition on it holds.
func (w *When) holds(c *Config) bool {
	v, ok := c.values[w.Field].(string)
	return ok && contains(w.Values, v)
}

// describe says when the condition holds, in words: `backend is etcd`.
func (w *When) describe(c *Config) string {
	s := w.Field + " is " + strings.Join(w.Values, " or ")
	if c != nil && !c.Has(w.Field) {
		s += " (the default)"
	}
	return s
}

// markdown is the condition for the reference: `backend: etcd`.
func (w *When) markdown() string {
	alts := make([]string, len(w.Values))
	for i, v := range w.Values {
		alts[i] = "`" + w.Field + ": " + v + "`"
	}
	return strings.Join(alts, " or ")
}

// Component is what a Spec builds: exactly one of its fields is set,
// according to the kind.
type Component struct {
	// Source is set for KindSource.
	Source pipeline.Source
	// Processor is set for KindSink and KindProcessor.
	Processor pipeline.Processor
	// Operator is set for KindOperator.
	Operator operators.Operator
}

// Spec declares a component type: its options, its ports and how to build
// it. The same spec validates configs and renders the reference docs, so
// the two cannot drift apart.
type Spec struct {
	// Type is the name used in flow files ("kv", "filter").
	Type string
	// Kind is the component's role. KindOf overrides it per config.
	Kind Kind
	// KindOf, when set, gives the kind for a validated config (the file
	// connector is a source or a sink depending on its mode).
	KindOf func(c *Config) Kind
	// Summary is a short paragraph for the reference.
	Summary string
	// Fields are the options the component accepts.
	Fields []Field
	// Shorthand names the field that a plain scalar sets: with Shorthand
	// "if", `filter: EXPR` means `filter: {if: EXPR}`. Operators only.
	Shorthand string
	// Extra, when set, accepts keys other than Fields; each such key's
	// value is checked as Extra (its Name and Doc document the key). Set
	// targets and route ports are Extra keys. Operators only.
	Extra *Field
	// Ports returns the output ports for a validated config. Nil means no
	// output ports (a sink).
	Ports func(c *Config) []string
	// PortsDoc describes the output ports in the reference when they
	// depend on the config. Default: the ports of an empty config.
	PortsDoc string
	// Build creates the component from a validated config. For operators
	// it also runs during validation, so it must have no side effects and
	// its errors are reported against the operator.
	Build func(ctx context.Context, env *BuildEnv, c *Config) (Component, error)
}

// StaticPorts returns a Spec.Ports function that always returns ports.
func StaticPorts(ports ...string) func(*Config) []string {
	return func(*Config) []string { return append([]string(nil), ports...) }
}

func (s *Spec) kindOf(c *Config) Kind {
	if s.KindOf != nil {
		return s.KindOf(c)
	}
	return s.Kind
}

func (s *Spec) portsOf(c *Config) []string {
	if s.Ports == nil {
		return nil
	}
	return s.Ports(c)
}

func (s *Spec) field(key string) *Field {
	for i := range s.Fields {
		f := &s.Fields[i]
		if f.Name == key {
			return f
		}
		for _, a := range f.Aliases {
			if a == key {
				return f
			}
		}
	}
	return nil
}

func (s *Spec) keys() []string {
	var keys []string
	for _, f := range s.Fields {
		keys = append(keys, f.Name)
		keys = append(keys, f.Aliases...)
	}
	return keys
}

// Entry is one Extra key of an operator config with its value, in the
// order written in the flow file.
type Entry struct {
	// Key is the key as written ("meta.kv", a route port name).
	Key string
	// Value is the value's text.
	Value string
	// Line and Col locate the key in the flow file.
	Line, Col int
}

// Config is a validated component config: the values of its options with
// defaults applied, plus the Extra entries.
type Config struct {
	// Node is the name of the node in the flow ("store"; "main" for an
	// operator of pipeline main).
	Node string
	// Type is the component type.
	Type string
	// Extra holds the Extra keys in flow file order.
	Extra []Entry

	values map[string]any
	set    map[string]bool
}

// NewConfig returns a config with the given option values, for building
// components from code and in tests. Values must already have the Go type
// matching the field type (string, int, bool, time.Duration; int64 for
// TypeByteSize; []string for TypeStrings). Field defaults are not applied: only Load does that.
func NewConfig(node, typ string, values map[string]any, extra ...Entry) *Config {
	c := &Config{Node: node, Type: typ, Extra: extra, values: map[string]any{}, set: map[string]bool{}}
	for k, v := range values {
		c.values[k] = v
		c.set[k] = true
	}
	return c
}

// Has reports whether the option was set in the flow file (rather than
// taken from its default).
func (c *Config) Has(name string) bool { return c != nil && c.set[name] }

// String returns a string, expr, path or enum option ("" when unset and
// without default). Paths are already resolved against the flow file's
// directory.
func (c *Config) String(name string) string {
	if c == nil {
		return ""
	}
	s, _ := c.values[name].(string)
	return s
}

// Strings returns a strings option (nil when unset and without default).
func (c *Config) Strings(name string) []string {
	if c == nil {
		return nil
	}
	s, _ := c.values[name].([]string)
	return s
}

// Int returns an int option (0 when unset and without default).
func (c *Config) Int(name string) int {
	if c == nil {
		return 0
	}
	switch v := c.values[name].(type) {
	case int:
		return v
	case int64:
		return int(v)
	}
	return 0
}

// ByteSize returns a bytesize option in bytes.
func (c *Config) ByteSize(name string) int64 {
	if c == nil {
		return 0
	}
	switch v := c.values[name].(type) {
	case int64:
		return v
	case int:
		return int64(v)
	}
	return 0
}

// Bool returns a bool option (false when unset and without default).
func (c *Config) Bool(name string) bool {
	if c == nil {
		return false
	}
	b, _ := c.values[name].(bool)
	return b
}

// Duration returns a duration option (0 when unset and without default).
func (c *Config) Duration(name string) time.Duration {
	if c == nil {
		return 0
	}
	d, _ := c.values[name].(time.Duration)
	return d
}

// Registry holds the component specs a flow file may use. It has no global
// state: each NewRegistry call returns an independent registry.
type Registry struct {
	specs map[string]*Spec
	order []string
	// checkExpr compiles an expression, reporting why it is invalid.
	checkExpr func(src string) error
}

// NewEmptyRegistry returns a registry with no components.
func NewEmptyRegistry() *Registry {
	return &Registry{specs: map[string]*Spec{}}
}

// SetExprChecker sets the function that checks every TypeExpr value when a
// flow is loaded (NewRegistry uses the operators' expression compiler).
func (r *Registry) SetExprChecker(check func(src string) error) { r.checkExpr = check }

// Register adds a spec. It returns an error when the type is empty, already
// registered, or the spec is incomplete.
func (r *Registry) Register(s Spec) error {
	switch {
	case s.Type == "":
		return fmt.Errorf("flows: register: empty type")
	case r.specs[s.Type] != nil:
		return fmt.Errorf("flows: register %q: type already registered", s.Type)
	case s.Build == nil:
		return fmt.Errorf("flows: register %q: no Build function", s.Type)
	}
	for _, f := range s.Fields {
		if f.Type == TypeEnum && len(f.Enum) == 0 {
			return fmt.Errorf("flows: register %q: enum field %q has no values", s.Type, f.Name)
		}
		for _, w := range []*When{f.RequiredWhen, f.OnlyWhen} {
			if w != nil && (s.field(w.Field) == nil || w.Field == f.Name || len(w.Values) == 0) {
				return fmt.Errorf("flows: register %q: field %q has a condition on %q, which is not another field of the spec or lists no values", s.Type, f.Name, w.Field)
			}
		}
		if f.Type == TypeNode && f.NodeType == "" {
			return fmt.Errorf("flows: register %q: node field %q has no NodeType", s.Type, f.Name)
		}
	}
	r.specs[s.Type] = &s
	r.order = append(r.order, s.Type)
	return nil
}

// Spec returns the spec registered for typ.
func (r *Registry) Spec(typ string) (*Spec, bool) {
	s, ok := r.specs[typ]
	return s, ok
}

// Types returns the registered types of the given kind (all types when
// kind is ""), in registration order. A connector whose kind depends on its
// options (KindOf) is listed under every connector kind.
func (r *Registry) Types(kind Kind) []string {
	var out []string
	for _, t := range r.order {
		s := r.specs[t]
		if kind == "" || s.Kind == kind || (s.KindOf != nil && kind != KindOperator) {
			out = append(out, t)
		}
	}
	return out
}

func (r *Registry) connectorTypes() []string {
	var out []string
	for _, t := range r.order {
		if r.specs[t].Kind != KindOperator {
			out = append(out, t)
		}
	}
	return out
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

// parseValue checks a value against a field type and returns its Go value.
// The error message is for the user, without position.
func (r *Registry) parseValue(f *Field, text string, isNull bool, baseDir string) (any, string) {
	switch f.Type {
	case TypeString:
		return text, ""
	case TypeInt:
		if isNull {
			return nil, "expected an integer, got null"
		}
		n, err := strconv.ParseInt(strings.ReplaceAll(text, "_", ""), 0, 64)
		if err != nil || n > math.MaxInt32 || n < math.MinInt32 {
			return nil, fmt.Sprintf("expected an integer, got %q", text)
		}
		if f.Positive && n <= 0 {
			return nil, fmt.Sprintf("must be a positive integer, got %q (a limit cannot be switched off; raise it instead)", text)
		}
		return int(n), ""
	case TypeBool:
		switch strings.ToLower(text) {
		case "true", "yes", "on":
			return true, ""
		case "false", "no", "off":
			return false, ""
		}
		return nil, fmt.Sprintf("expected true or false, got %q", text)
	case TypeDuration:
		d, err := time.ParseDuration(text)
		if err != nil {
			return nil, fmt.Sprintf("expected a duration such as \"5ms\" or \"1m30s\", got %q", text)
		}
		if d < 0 {
			return nil, fmt.Sprintf("duration must not be negative, got %q", text)
		}
		return d, ""
	case TypeByteSize:
		n, ok := parseByteSize(text)
		if !ok {
			return nil, fmt.Sprintf("expected a size such as 4096, \"64KiB\" or \"16MiB\", got %q", text)
		}
		if f.Positive && n <= 0 {
			return nil, fmt.Sprintf("must be a positive size, got %q (a limit cannot be switched off; raise it instead)", text)
		}
		return n, ""
	case TypeExpr:
		if isNull || strings.TrimSpace(text) == "" {
			return nil, "expected an expression, got nothing"
		}
		return text, ""
	case TypePath:
		if isNull || text == "" {
			return nil, "expected a path, got nothing"
		}
		if !filepath.IsAbs(text) && baseDir != "" {
			text = filepath.Join(baseDir, text)
		}
		return text, ""
	case TypeNode:
		if isNull || !validName(text) {
			return nil, fmt.Sprintf("expected the name of a %s connector of this flow, got %q", f.NodeType, text)
		}
		return text, ""
	case TypeEnum:
		for _, e := range f.Enum {
			if text == e {
				return text, ""
			}
		}
		return nil, fmt.Sprintf("invalid value %q (want one of %s)%s", text, strings.Join(f.Enum, ", "), didYouMean(text, f.Enum))
	case TypeStrings:
		var list []string
		for _, s := range strings.Split(text, ",") {
			if s = strings.TrimSpace(s); s != "" {
				list = append(list, s)
			}
		}
		if len(list) == 0 {
			return nil, "expected a list or a comma-separated string, got nothing"
		}
		return list, ""
	}
	return nil, fmt.Sprintf("field has unknown type %q", f.Type)
}

// parseByteSize parses "4096", "64KiB", "16 MiB", "1GB".
func parseByteSize(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) && r != '_' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	if num == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.ReplaceAll(num, "_", ""), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	mult := map[string]int64{
		"": 1, "B": 1,
		"KB": 1e3, "MB": 1e6, "GB": 1e9,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
	}[unit]
	if mult == 0 || n > math.MaxInt64/mult {
		return 0, false
	}
	return n * mult, true
}

// Markdown renders the reference of every registered component: connectors
// first, then operators, each with its options table.
func (r *Registry) Markdown() string {
	var b strings.Builder
	b.WriteString("## Connectors\n\n")
	for _, t := range r.connectorTypes() {
		r.specs[t].markdown(&b)
	}
	b.WriteString("## Operators\n\n")
	var ops []string
	for _, t := range r.order {
		if r.specs[t].Kind == KindOperator {
			ops = append(ops, t)
		}
	}
	for _, t := range ops {
		r.specs[t].markdown(&b)
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func (s *Spec) markdown(b *strings.Builder) {
	kind := string(s.Kind)
	if s.KindOf != nil {
		kind = "source or sink, by options"
	}
	fmt.Fprintf(b, "### `%s` (%s)\n\n", s.Type, kind)
	if s.Summary != "" {
		b.WriteString(strings.TrimSpace(s.Summary))
		b.WriteString("\n\n")
	}
	if s.Kind != KindOperator {
		ports := s.PortsDoc
		if ports == "" {
			ps := s.portsOf(NewConfig("", s.Type, nil))
			if len(ps) == 0 {
				ports = "none (sink)"
			} else {
				ports = "`" + strings.Join(ps, "`, `") + "`"
			}
		}
		fmt.Fprintf(b, "Output ports: %s.\n\n", ports)
	} else if s.PortsDoc != "" {
		fmt.Fprintf(b, "Output ports: %s.\n\n", s.PortsDoc)
	}
	if s.Shorthand != "" {
		fmt.Fprintf(b, "Shorthand: `%s: VALUE` sets `%s`.\n\n", s.Type, s.Shorthand)
	}
	if len(s.Fields) == 0 && s.Extra == nil {
		b.WriteString("No options.\n\n")
		return
	}
	b.WriteString("| Option | Type | Required | Default | Description |\n")
	b.WriteString("|---|---|---|---|---|\n")
	rows := append([]Field(nil), s.Fields...)
	if s.Extra != nil {
		rows = append(rows, *s.Extra)
	}
	for _, f := range rows {
		name := "`" + f.Name + "`"
		if len(f.Aliases) > 0 {
			name += " (alias `" + strings.Join(f.Aliases, "`, `") + "`)"
		}
		typ := string(f.Type)
		if f.Type == TypeEnum {
			typ = "`" + strings.Join(f.Enum, "` \\| `") + "`"
		}
		if f.Type == TypeNode {
			typ = "name of a `" + f.NodeType + "` connector"
		}
		req := "no"
		switch {
		case f.Required && f.RequiredWhen != nil:
			req = "if " + f.RequiredWhen.markdown()
		case f.Required:
			req = "yes"
		}
		doc := f.Doc
		if f.Env {
			doc += " `${NAME}` is replaced by environment variable NAME."
		}
		if f.OnlyWhen != nil {
			doc += " Only with " + f.OnlyWhen.markdown() + "."
		}
		def := ""
		if f.Default != "" {
			def = "`" + f.Default + "`"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", name, typ, req, def, strings.ReplaceAll(doc, "|", "\\|"))
	}
	b.WriteString("\n")
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
