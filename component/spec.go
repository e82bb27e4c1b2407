package component

import (
	"context"
	"strings"
	"time"

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
	// KindDuplex is a source and a sink under one name: it emits events on
	// its output ports and receives the events linked into its "in" port
	// (an HTTP server emits requests and answers them with the events that
	// come back). Its Component has both Source and Processor set; the
	// graph runs them as two nodes, NAME and NAME/in (see DuplexSink), so
	// that links from its outputs back to its input form no cycle.
	KindDuplex Kind = "duplex"
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
	// checked when the flow is loaded (see Registry.SetExprChecker).
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
	// TypeMap is a mapping of names to strings, written as a YAML
	// mapping whose values are scalars (HTTP headers); ${NAME} is
	// expanded in each value. It has no default.
	TypeMap FieldType = "map"
	// TypeNode names another connector of the same flow, of type
	// Field.NodeType. The loader checks that it exists and has that type,
	// and builds it first so the component can reach it through Env.Use.
	TypeNode FieldType = "node"
)

// Field describes one option of a component: how it is validated and how it
// is documented.
//
// Every value except those of TypeExpr and Verbatim fields may name
// environment variables as ${NAME}; they are replaced when the flow is
// loaded, before the value is checked, and naming an unset variable is an
// error ($${NAME} stands for the text ${NAME}).
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
	// Verbatim marks a value that is source code (a Lua script): it is
	// taken as written, ${NAME} included.
	Verbatim bool
	// Default is the value used when the option is not set, written as it
	// would be in the flow file ("" for none).
	Default string
	// Min and Max bound a TypeInt, TypeByteSize or TypeDuration value,
	// written as in the flow file ("1", "64KiB", "1ms"); "" for no bound.
	// Register refuses a bound that does not parse. Give every limit a
	// Min of 1 (or 1ms) when its constructor takes zero for "default":
	// a zero written in a flow file must not silently mean something else.
	Min, Max string
	// Doc is a one-sentence description for the reference.
	Doc string
	// Enum lists the valid values of a TypeEnum field.
	Enum []string
	// Aliases are other accepted keys for the option.
	Aliases []string
	// NodeType is the connector type a TypeNode field must name ("kv").
	NodeType string
}

// Expands reports whether ${NAME} is replaced in the field's values.
func (f *Field) Expands() bool { return f.Type != TypeExpr && !f.Verbatim }

// When is a condition on another option of the same component: it holds
// for a config in which that option's value (given or default) is one of
// Values.
type When struct {
	// Field names the option tested; it must be a field of the spec.
	Field string
	// Values are the values for which the condition holds.
	Values []string
}

// Holds reports whether the condition holds for c. An option that was
// given an invalid value has no value, so no condition on it holds.
func (w *When) Holds(c *Config) bool {
	v, ok := c.values[w.Field].(string)
	return ok && contains(w.Values, v)
}

// Describe says when the condition holds, in words: `backend is etcd`,
// with " (the default)" when c does not set the option.
func (w *When) Describe(c *Config) string {
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

// Operator is a step of a pipeline, as the operators package runs it. It
// is declared here, where it is used, so that this package needs none of
// the operators' code.
type Operator interface {
	Apply(ev pipeline.Event, emit func(port string, ev pipeline.Event)) error
	Ports() []string
}

// Component is what a Spec builds: exactly one of Source, Processor and
// Operator is set, according to the kind.
type Component struct {
	// Source is set for KindSource and KindDuplex.
	Source pipeline.Source
	// Processor is set for KindSink, KindProcessor and KindDuplex (its
	// sink side, which must have no output ports).
	Processor pipeline.Processor
	// Operator is set for KindOperator.
	Operator Operator
	// Side, optional beside a Processor, feeds the output ports named in
	// SidePorts with events the Processor does not make while handling a
	// slice of events (the kv connector's expired keys): the flow's links from those
	// ports leave from Side, which runs as a source of the graph. Links
	// from the other ports leave from the Processor.
	Side      pipeline.Source
	SidePorts []string
}

// Spec declares a component type: its options, its ports, how to check a
// config and how to build it. The same spec validates configs and renders
// the reference docs, so the two cannot drift apart.
type Spec struct {
	// Type is the name used in flow files ("kv", "filter").
	Type string
	// Kind is the component's role. KindOf overrides it per config.
	Kind Kind
	// KindOf, when set, gives the kind for a validated config (the file
	// connector is a source or a sink depending on its mode).
	KindOf func(c *Config) Kind
	// KindDoc describes the kind in the reference when KindOf is set.
	// Default "source or sink, by options".
	KindDoc string
	// Summary is a short paragraph for the reference.
	Summary string
	// OnePerFlow, when set, allows at most one connector of the type per
	// flow, and says why in the words of "(\"in\" already reads stdin)":
	// "reads stdin".
	OnePerFlow string
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
	// OptionalPorts are output ports a flow may leave unlinked without a
	// warning: side channels whose events are expected to be dropped
	// unless someone wants them. The loader warns about every other
	// output port that is not linked.
	OptionalPorts []string
	// Check runs, when the flow is loaded (so for flowrun validate and
	// flowrun run alike), every check of a config that does not open
	// anything: what Build would refuse, or take for something else, once
	// the field checks have passed (both of script and file given, a Lua
	// script that does not compile, a file that cannot be read). It must
	// have no side effects. An error naming one option should be made
	// with OptionError so that it is reported at that option. Nil: no
	// checks beyond the fields'.
	Check func(c *Config) error
	// Build creates the component from a config that passed the field
	// checks and Check. It opens what the component needs (files, stores,
	// connections) and is called only when the flow is built.
	Build func(ctx context.Context, env *Env, c *Config) (Component, error)
}

// DuplexSink returns the name of the graph node that runs the sink side
// of the KindDuplex connector node: "NODE/in". Flow names cannot contain
// '/', so it names no other node.
func DuplexSink(node string) string { return node + "/" + pipeline.PortIn }

// StaticPorts returns a Spec.Ports function that always returns ports.
func StaticPorts(ports ...string) func(*Config) []string {
	return func(*Config) []string { return append([]string(nil), ports...) }
}

// KindFor returns the kind of the component c configures.
func (s *Spec) KindFor(c *Config) Kind {
	if s.KindOf != nil {
		return s.KindOf(c)
	}
	return s.Kind
}

// PortsFor returns the output ports of the component c configures.
func (s *Spec) PortsFor(c *Config) []string {
	if s.Ports == nil {
		return nil
	}
	return s.Ports(c)
}

// Field returns the field whose name or alias is key, or nil.
func (s *Spec) Field(key string) *Field {
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

// Keys returns every accepted option key: names and aliases.
func (s *Spec) Keys() []string {
	var keys []string
	for _, f := range s.Fields {
		keys = append(keys, f.Name)
		keys = append(keys, f.Aliases...)
	}
	return keys
}

// OptionError is an error of Spec.Check about one option.
type OptionError struct {
	// Option is the field's name.
	Option string
	// Err says what is wrong.
	Err error
}

// Error returns "OPTION: ERR".
func (e *OptionError) Error() string { return e.Option + ": " + e.Err.Error() }

// Unwrap returns Err.
func (e *OptionError) Unwrap() error { return e.Err }

// OptionErr returns an *OptionError about option (nil when err is nil).
func OptionErr(option string, err error) error {
	if err == nil {
		return nil
	}
	return &OptionError{Option: option, Err: err}
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
	// Node is the name of the node in the flow ("store"; the pipeline's
	// name for an operator).
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
// TypeByteSize; []string for TypeStrings; map[string]string for
// TypeMap). Field defaults are not applied:
// use SetDefault, as the loader does.
func NewConfig(node, typ string, values map[string]any, extra ...Entry) *Config {
	c := &Config{Node: node, Type: typ, Extra: extra, values: map[string]any{}, set: map[string]bool{}}
	for k, v := range values {
		c.Set(k, v)
	}
	return c
}

// Set sets option name to v, as given in the flow file.
func (c *Config) Set(name string, v any) {
	c.values[name] = v
	c.set[name] = true
}

// SetDefault gives option name the value v without marking it as set.
func (c *Config) SetDefault(name string, v any) {
	c.values[name] = v
}

// Has reports whether the option was set in the flow file (rather than
// taken from its default).
func (c *Config) Has(name string) bool { return c != nil && c.set[name] }

// String returns a string, expr, path, enum or node option ("" when unset
// and without default). Paths are already resolved against the flow file's
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

// Map returns a map option (nil when unset).
func (c *Config) Map(name string) map[string]string {
	if c == nil {
		return nil
	}
	m, _ := c.values[name].(map[string]string)
	return m
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

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
