// Package flowtest runs the unit tests of flows: a test file beside a flow
// (flow_test.yaml beside flow.yaml) lists cases, each feeding events into
// the flow's source and stating what each sink must receive, as exact
// events or as conditions on fields. Every case runs on fresh, empty
// stores in a temporary directory, with the process's environment
// overlaid by the case's variables and, when the case says so, a fixed
// clock. `flowrun test` is its command; docs/flows.md ("Testing flows")
// describes the file format.
package flowtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flowrun/flowrun/internal/yamlnode"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/internal/suggest"
)

// ErrInvalidTestFile is wrapped by the error of Parse when the test file
// has errors; its diagnostics say where.
var ErrInvalidTestFile = errors.New("invalid test file")

// File is a parsed test file.
type File struct {
	// Path is the test file's path as given.
	Path string
	// Flow is the path of the flow under test: the file's flow option,
	// relative to the test file, or by default NAME.yaml beside
	// NAME_test.yaml.
	Flow string
	// Cases are the file's cases in file order.
	Cases []*Case
}

// Case is one test: steps run in order on the same fresh stores.
type Case struct {
	Name string
	Line int
	// Env overlays the process's environment for ${NAME} in the flow.
	Env map[string]string
	// Steps run one after another, each building and running the flow
	// to its end.
	Steps []*Step
}

// Step feeds events into one source of the flow and states what its
// sinks must receive.
type Step struct {
	Line int
	// Source is the source fed; empty: the flow's only source.
	Source string
	// Now, when set, fixes the clock during the step.
	Now *time.Time
	// Input is the events fed, as JSON lines {"data":...,"meta":...}.
	Input []byte
	// InputName names the input in messages ("flow_test.yaml:12" or the
	// input file's path).
	InputName string
	// Expect lists the sinks the step states something about, in file
	// order.
	Expect []*SinkExpect
	// IgnoreOtherSinks lets the sinks not in Expect receive anything;
	// by default they must receive nothing.
	IgnoreOtherSinks bool
}

// SinkExpect is what one sink must receive during a step.
type SinkExpect struct {
	Sink string
	Line int
	// Unordered accepts the events in any order.
	Unordered bool
	// Events are the expected events: exactly these many, each meeting
	// its conditions.
	Events []*Expectation
}

// Expectation is what one expected event must meet: every check holds.
type Expectation struct {
	Line   int
	Checks []Check
}

// Check is one condition on a field of an event.
type Check struct {
	// Path is the field: "data", "meta", "data.count", "meta.kv.op",
	// "data.items.0".
	Path string
	Line int
	// Matcher is what the field must satisfy.
	Matcher Matcher
}

// caseKeys are the keys of a case; stepKeys of a step (also allowed on a
// case without steps).
var (
	fileKeys = []string{"flow", "env", "now", "cases"}
	caseKeys = []string{"name", "env", "steps"}
	stepKeys = []string{"source", "now", "advance", "input", "input_file", "expect", "ignore_other_sinks"}
	sinkKeys = []string{"unordered", "events"}
)

// parser accumulates diagnostics while walking a test file.
type parser struct {
	file  string
	dir   string
	diags []flows.Diagnostic
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	d := flows.Diagnostic{File: p.file, Field: field, Severity: flows.Error, Message: fmt.Sprintf(format, args...)}
	if n != nil {
		d.Line, d.Col = n.Line, n.Column
	}
	p.diags = append(p.diags, d)
}

// ParseFile reads and parses the test file at path. Errors in the file
// are returned as diagnostics with their line and column, and the error
// wraps ErrInvalidTestFile.
func ParseFile(path string) (*File, []flows.Diagnostic, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		d := flows.Diagnostic{File: path, Severity: flows.Error, Message: fmt.Sprintf("read test file: %v", err)}
		return nil, []flows.Diagnostic{d}, fmt.Errorf("%w: %v", ErrInvalidTestFile, err)
	}
	return Parse(path, src)
}

// Parse parses a test file already in memory; path names it in
// diagnostics, and relative paths in it are resolved against its
// directory.
func Parse(path string, src []byte) (f *File, diags []flows.Diagnostic, err error) {
	p := &parser{file: path, dir: filepath.Dir(path)}
	defer func() {
		if r := recover(); r != nil {
			p.errorf(nil, "", "internal error while reading the test file: %v", r)
		}
		if len(p.diags) > 0 {
			sort.SliceStable(p.diags, func(i, j int) bool {
				if p.diags[i].Line != p.diags[j].Line {
					return p.diags[i].Line < p.diags[j].Line
				}
				return p.diags[i].Col < p.diags[j].Col
			})
			f, diags = nil, p.diags
			err = fmt.Errorf("%w %s: %d error(s), first: %s", ErrInvalidTestFile, path, len(p.diags), p.diags[0])
		}
	}()
	f = p.parse(src)
	return f, nil, nil
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) parse(src []byte) *File {
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		d := flows.Diagnostic{File: p.file, Severity: flows.Error, Message: err.Error()}
		if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
			d.Line, _ = strconv.Atoi(m[1])
			d.Message = m[2]
		}
		p.diags = append(p.diags, d)
		return nil
	}
	if len(doc.Content) == 0 {
		p.errorf(nil, "", "empty test file: expected a mapping with cases")
		return nil
	}
	root := yamlnode.Deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "", "expected a mapping with flow, env, now and cases, got %s", yamlnode.Describe(root))
		return nil
	}
	f := &File{Path: p.file}
	base := filepath.Base(p.file)
	flowName := strings.TrimSuffix(strings.TrimSuffix(base, ".yaml"), "_test") + ".yaml"
	if strings.HasSuffix(base, ".yml") {
		flowName = strings.TrimSuffix(strings.TrimSuffix(base, ".yml"), "_test") + ".yml"
	}
	f.Flow = filepath.Join(p.dir, flowName)
	var env map[string]string
	var now *time.Time
	var cases *yaml.Node
	var flowNode *yaml.Node = root
	p.eachPair(root, "", fileKeys, func(key string, k, v *yaml.Node) {
		switch key {
		case "flow":
			if s, ok := p.str(v, key); ok {
				f.Flow = p.resolve(s)
				flowNode = v
			}
		case "env":
			env = p.env(v, key)
		case "now":
			now = p.time(v, key)
		case "cases":
			cases = v
		}
	})
	if cases == nil {
		p.errorf(root, "cases", "missing: a test file lists its cases under cases")
		return f
	}
	if _, err := os.Stat(f.Flow); err != nil {
		p.errorf(flowNode, "flow", "flow file %s: %v (name it with flow: PATH)", f.Flow, errors.Unwrap(err))
	}
	cases = yamlnode.Deref(cases)
	if cases.Kind != yaml.SequenceNode {
		p.errorf(cases, "cases", "expected a list of cases, got %s", yamlnode.Describe(cases))
		return f
	}
	names := map[string]int{}
	for i, cn := range cases.Content {
		field := fmt.Sprintf("cases[%d]", i)
		c := p.parseCase(yamlnode.Deref(cn), field, env, now)
		if c == nil {
			continue
		}
		if line, dup := names[c.Name]; dup {
			p.errorf(cn, field+".name", "case %q is already defined at line %d", c.Name, line)
		}
		names[c.Name] = c.Line
		f.Cases = append(f.Cases, c)
	}
	if len(cases.Content) == 0 {
		p.errorf(cases, "cases", "no cases")
	}
	return f
}

func (p *parser) parseCase(n *yaml.Node, field string, fileEnv map[string]string, fileNow *time.Time) *Case {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "expected a case (a mapping with name and input or steps), got %s", yamlnode.Describe(n))
		return nil
	}
	c := &Case{Line: n.Line, Env: map[string]string{}}
	for k, v := range fileEnv {
		c.Env[k] = v
	}
	now := fileNow
	var stepsNode, nowNode *yaml.Node
	hasStepKey := false
	p.eachPair(n, field, append(append([]string{}, caseKeys...), stepKeys...), func(key string, k, v *yaml.Node) {
		switch key {
		case "name":
			c.Name, _ = p.str(v, field+".name")
		case "env":
			for name, val := range p.env(v, field+".env") {
				c.Env[name] = val
			}
		case "now":
			nowNode = v
		case "steps":
			stepsNode = yamlnode.Deref(v)
		default:
			hasStepKey = true
		}
	})
	if c.Name == "" {
		p.errorf(n, field+".name", "missing: every case has a name")
	}
	if stepsNode != nil && hasStepKey {
		p.errorf(n, field, "a case has either steps or input/expect, not both")
		return c
	}
	if stepsNode == nil {
		// The case is its only step, which reads now itself.
		if s := p.parseStep(n, field, now); s != nil {
			c.Steps = append(c.Steps, s)
		}
		return c
	}
	if nowNode != nil {
		now = p.time(nowNode, field+".now")
	}
	if stepsNode.Kind != yaml.SequenceNode || len(stepsNode.Content) == 0 {
		p.errorf(stepsNode, field+".steps", "expected a non-empty list of steps, got %s", yamlnode.Describe(stepsNode))
		return c
	}
	for i, sn := range stepsNode.Content {
		sf := fmt.Sprintf("%s.steps[%d]", field, i)
		sn = yamlnode.Deref(sn)
		if sn.Kind != yaml.MappingNode {
			p.errorf(sn, sf, "expected a step (a mapping with input and expect), got %s", yamlnode.Describe(sn))
			continue
		}
		p.eachPair(sn, sf, stepKeys, func(string, *yaml.Node, *yaml.Node) {})
		s := p.parseStep(sn, sf, now)
		if s == nil {
			continue
		}
		if s.Now != nil {
			now = s.Now
		}
		c.Steps = append(c.Steps, s)
	}
	return c
}

// parseStep reads the step keys of n (a step, or a case without steps);
// now is the clock the step starts from.
func (p *parser) parseStep(n *yaml.Node, field string, now *time.Time) *Step {
	s := &Step{Line: n.Line, Now: now}
	var advance *yaml.Node
	var input, inputFile, expect *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch k.Value {
		case "source":
			s.Source, _ = p.str(v, field+".source")
		case "now":
			s.Now = p.time(v, field+".now")
		case "advance":
			advance = v
		case "input":
			input = v
		case "input_file":
			inputFile = v
		case "expect":
			expect = v
		case "ignore_other_sinks":
			s.IgnoreOtherSinks = p.bool(v, field+".ignore_other_sinks")
		}
	}
	if advance != nil {
		d, err := time.ParseDuration(advance.Value)
		switch {
		case err != nil || advance.Kind != yaml.ScalarNode:
			p.errorf(advance, field+".advance", "expected a duration such as 31s or 25h, got %s", yamlnode.Describe(advance))
		case s.Now == nil:
			p.errorf(advance, field+".advance", "advance moves a fixed clock: set now on the case, the file or an earlier step")
		default:
			t := s.Now.Add(d)
			s.Now = &t
		}
	}
	switch {
	case input != nil && inputFile != nil:
		p.errorf(inputFile, field+".input_file", "a step has input or input_file, not both")
	case input != nil:
		s.Input = p.events(yamlnode.Deref(input), field+".input")
		s.InputName = fmt.Sprintf("%s:%d", p.file, input.Line)
	case inputFile != nil:
		if name, ok := p.str(inputFile, field+".input_file"); ok {
			path := p.resolve(name)
			b, err := os.ReadFile(path)
			if err != nil {
				p.errorf(inputFile, field+".input_file", "%v", err)
			}
			s.Input, s.InputName = b, path
		}
	default:
		p.errorf(n, field+".input", "missing: a step feeds events with input or input_file")
	}
	if expect == nil {
		p.errorf(n, field+".expect", "missing: say what each sink receives (an empty mapping: nothing)")
		return s
	}
	expect = yamlnode.Deref(expect)
	if expect.Kind == yaml.ScalarNode && yamlnode.IsNull(expect) {
		return s
	}
	if expect.Kind != yaml.MappingNode {
		p.errorf(expect, field+".expect", "expected a mapping from sink names to their events, got %s", yamlnode.Describe(expect))
		return s
	}
	for i := 0; i+1 < len(expect.Content); i += 2 {
		k, v := expect.Content[i], yamlnode.Deref(expect.Content[i+1])
		sf := field + ".expect." + k.Value
		se := &SinkExpect{Sink: k.Value, Line: k.Line}
		list := v
		if v.Kind == yaml.MappingNode {
			list = nil
			p.eachPair(v, sf, sinkKeys, func(key string, _, vv *yaml.Node) {
				switch key {
				case "unordered":
					se.Unordered = p.bool(vv, sf+".unordered")
				case "events":
					list = yamlnode.Deref(vv)
				}
			})
			if list == nil {
				p.errorf(v, sf+".events", "missing: the sink's expected events")
				continue
			}
		}
		if !(list.Kind == yaml.SequenceNode || yamlnode.IsNull(list)) {
			p.errorf(list, sf, "expected a list of events (or a mapping with unordered and events), got %s", yamlnode.Describe(list))
			continue
		}
		for j, en := range list.Content {
			if e := p.expectation(yamlnode.Deref(en), fmt.Sprintf("%s[%d]", sf, j)); e != nil {
				se.Events = append(se.Events, e)
			}
		}
		s.Expect = append(s.Expect, se)
	}
	return s
}

// events converts a YAML list of {data, meta} into JSON lines.
func (p *parser) events(n *yaml.Node, field string) []byte {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "expected a list of events {data: ..., meta: ...}, got %s", yamlnode.Describe(n))
		return nil
	}
	var buf bytes.Buffer
	for i, en := range n.Content {
		ef := fmt.Sprintf("%s[%d]", field, i)
		en = yamlnode.Deref(en)
		if en.Kind != yaml.MappingNode {
			p.errorf(en, ef, "expected an event {data: ..., meta: ...}, got %s", yamlnode.Describe(en))
			continue
		}
		ev := map[string]any{"data": nil}
		p.eachPair(en, ef, []string{"data", "meta"}, func(key string, _, v *yaml.Node) {
			val, err := toJSONValue(v)
			if err != nil {
				p.errorf(v, ef+"."+key, "%v", err)
				return
			}
			if key == "meta" {
				if _, ok := val.(map[string]any); !ok && val != nil {
					p.errorf(v, ef+".meta", "expected a mapping, got %s", yamlnode.Describe(v))
					return
				}
			}
			ev[key] = val
		})
		b, err := json.Marshal(ev)
		if err != nil {
			p.errorf(en, ef, "%v", err)
			continue
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// expectation reads one expected event: a mapping from field paths to
// literal values or matchers.
func (p *parser) expectation(n *yaml.Node, field string) *Expectation {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "expected an event's conditions, such as {data: 3} or {data.count: 3, meta.error: {contains: \"not found\"}}, got %s", yamlnode.Describe(n))
		return nil
	}
	e := &Expectation{Line: n.Line}
	if len(n.Content) == 0 {
		p.errorf(n, field, "no conditions: give data and meta for an exact event, or conditions on fields")
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], yamlnode.Deref(n.Content[i+1])
		path := k.Value
		if _, err := splitPath(path); err != nil {
			p.errorf(k, field, "%v", err)
			continue
		}
		m, err := parseMatcher(v)
		if err != nil {
			p.errorf(v, field+"."+path, "%v", err)
			continue
		}
		e.Checks = append(e.Checks, Check{Path: path, Line: k.Line, Matcher: m})
	}
	return e
}

func (p *parser) resolve(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(p.dir, name)
}

// eachPair calls fn for each key of the mapping n, reporting keys not in
// known and keys given twice.
func (p *parser) eachPair(n *yaml.Node, field string, known []string, fn func(key string, k, v *yaml.Node)) {
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		sub := k.Value
		if field != "" {
			sub = field + "." + k.Value
		}
		if seen[k.Value] {
			p.errorf(k, sub, "given twice")
			continue
		}
		seen[k.Value] = true
		if !contains(known, k.Value) {
			if hint := suggest.DidYouMean(k.Value, known); hint != "" {
				p.errorf(k, sub, "unknown key %q%s", k.Value, hint)
			} else {
				p.errorf(k, sub, "unknown key %q (known: %s)", k.Value, strings.Join(known, ", "))
			}
			continue
		}
		fn(k.Value, k, v)
	}
}

func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	n = yamlnode.Deref(n)
	if n.Kind != yaml.ScalarNode || yamlnode.IsNull(n) {
		p.errorf(n, field, "expected a string, got %s", yamlnode.Describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) bool(n *yaml.Node, field string) bool {
	n = yamlnode.Deref(n)
	var b bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
		p.errorf(n, field, "expected true or false, got %s", yamlnode.Describe(n))
	}
	return b
}

func (p *parser) env(n *yaml.Node, field string) map[string]string {
	n = yamlnode.Deref(n)
	out := map[string]string{}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "expected a mapping of variable names to values, got %s", yamlnode.Describe(n))
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], yamlnode.Deref(n.Content[i+1])
		if v.Kind != yaml.ScalarNode {
			p.errorf(v, field+"."+k.Value, "expected a string, got %s", yamlnode.Describe(v))
			continue
		}
		out[k.Value] = v.Value
	}
	return out
}

// time reads a fixed clock: RFC 3339 or Unix milliseconds.
func (p *parser) time(n *yaml.Node, field string) *time.Time {
	n = yamlnode.Deref(n)
	if n.Kind == yaml.ScalarNode {
		if ms, err := strconv.ParseInt(n.Value, 10, 64); err == nil {
			t := time.UnixMilli(ms).UTC()
			return &t
		}
		if t, err := time.Parse(time.RFC3339Nano, n.Value); err == nil {
			return &t
		}
	}
	p.errorf(n, field, "expected a time, RFC 3339 (2026-01-01T00:00:00Z) or Unix milliseconds, got %s", yamlnode.Describe(n))
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// toJSONValue converts a YAML value to the value encoding/json would
// decode from its JSON form (numbers as json.Number), keeping integers
// exact. Timestamps and other tagged scalars stay strings.
func toJSONValue(n *yaml.Node) (any, error) {
	n = yamlnode.Deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := yamlnode.Deref(n.Content[i])
			if k.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a JSON object's keys are strings, got %s", k.Line, yamlnode.Describe(k))
			}
			v, err := toJSONValue(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			m[k.Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			v, err := toJSONValue(c)
			if err != nil {
				return nil, err
			}
			s = append(s, v)
		}
		return s, nil
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil, nil
		case "!!bool":
			var b bool
			err := n.Decode(&b)
			return b, err
		case "!!int", "!!float":
			var v any
			if err := n.Decode(&v); err != nil {
				return nil, err
			}
			b, err := json.Marshal(v)
			if f, ok := v.(float64); ok && (math.IsInf(f, 0) || math.IsNaN(f)) || err != nil {
				return nil, fmt.Errorf("%s is not a JSON number", n.Value)
			}
			return json.Number(b), nil
		}
		return n.Value, nil
	}
	return nil, fmt.Errorf("unsupported YAML value at line %d", n.Line)
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
