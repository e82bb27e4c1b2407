package flowtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"github.com/flowrun/flowrun/internal/yamlnode"
	"math/big"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Matcher is a condition on one field of an event. The field is absent
// when the event has no such path.
type Matcher interface {
	// Match returns "" when the field satisfies the condition, otherwise
	// what differs ("expected 3, got 2").
	Match(v any, present bool) string
}

// matcherKeys are the keys of a matcher mapping. A mapping whose keys are
// all matcher keys is a matcher; any other value is a literal the field
// must equal.
var matcherKeys = []string{"equals", "contains", "exists", "matches", "gt", "gte", "lt", "lte"}

// parseMatcher reads a field's condition.
func parseMatcher(n *yaml.Node) (Matcher, error) {
	if n.Kind == yaml.MappingNode && len(n.Content) > 0 {
		isMatcher := true
		for i := 0; i < len(n.Content); i += 2 {
			if !contains(matcherKeys, n.Content[i].Value) {
				isMatcher = false
			}
		}
		if isMatcher {
			var all allOf
			for i := 0; i+1 < len(n.Content); i += 2 {
				m, err := parseOne(n.Content[i].Value, yamlnode.Deref(n.Content[i+1]))
				if err != nil {
					return nil, fmt.Errorf("%s: %w", n.Content[i].Value, err)
				}
				all = append(all, m)
			}
			if len(all) == 1 {
				return all[0], nil
			}
			return all, nil
		}
	}
	v, err := toJSONValue(n)
	if err != nil {
		return nil, err
	}
	return equals{v}, nil
}

func parseOne(key string, n *yaml.Node) (Matcher, error) {
	switch key {
	case "equals":
		v, err := toJSONValue(n)
		return equals{v}, err
	case "contains":
		v, err := toJSONValue(n)
		return containsM{v}, err
	case "exists":
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			return nil, fmt.Errorf("expected true or false, got %s", yamlnode.Describe(n))
		}
		return exists(b), nil
	case "matches":
		if n.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("expected a regular expression, got %s", yamlnode.Describe(n))
		}
		re, err := regexp.Compile(n.Value)
		if err != nil {
			return nil, err
		}
		return matches{re}, nil
	default: // gt, gte, lt, lte
		r, ok := new(big.Rat).SetString(n.Value)
		if n.Kind != yaml.ScalarNode || !ok || (n.Tag != "!!int" && n.Tag != "!!float") {
			return nil, fmt.Errorf("expected a number, got %s", yamlnode.Describe(n))
		}
		return compare{op: key, n: r}, nil
	}
}

type allOf []Matcher

func (a allOf) Match(v any, present bool) string {
	var out []string
	for _, m := range a {
		if d := m.Match(v, present); d != "" {
			out = append(out, d)
		}
	}
	return strings.Join(out, "; ")
}

type equals struct{ want any }

func (e equals) Match(v any, present bool) string {
	if !present {
		return fmt.Sprintf("expected %s, field absent", show(e.want))
	}
	diffs := diffValues("", e.want, v, nil)
	switch {
	case len(diffs) == 0:
		return ""
	case len(diffs) == 1 && diffs[0].path == "":
		return diffs[0].text
	}
	var out []string
	for i, d := range diffs {
		if i == 5 {
			out = append(out, fmt.Sprintf("and %d more", len(diffs)-5))
			break
		}
		out = append(out, d.path+": "+d.text)
	}
	return strings.Join(out, "; ")
}

type containsM struct{ want any }

func (c containsM) Match(v any, present bool) string {
	if !present {
		return fmt.Sprintf("expected a value containing %s, field absent", show(c.want))
	}
	switch got := v.(type) {
	case string:
		if s, ok := c.want.(string); ok && strings.Contains(got, s) {
			return ""
		}
	case []any:
		for _, x := range got {
			if len(diffValues("", c.want, x, nil)) == 0 {
				return ""
			}
		}
	case map[string]any:
		if s, ok := c.want.(string); ok {
			if _, ok := got[s]; ok {
				return ""
			}
		}
	}
	return fmt.Sprintf("expected a value containing %s, got %s", show(c.want), show(v))
}

type exists bool

func (e exists) Match(v any, present bool) string {
	switch {
	case bool(e) && !present:
		return "expected the field to exist, it is absent"
	case !bool(e) && present:
		return fmt.Sprintf("expected the field to be absent, got %s", show(v))
	}
	return ""
}

type matches struct{ re *regexp.Regexp }

func (m matches) Match(v any, present bool) string {
	if s, ok := v.(string); ok && present && m.re.MatchString(s) {
		return ""
	}
	if !present {
		return fmt.Sprintf("expected a string matching %q, field absent", m.re)
	}
	return fmt.Sprintf("expected a string matching %q, got %s", m.re, show(v))
}

type compare struct {
	op string
	n  *big.Rat
}

var compareWords = map[string]string{"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

func (c compare) Match(v any, present bool) string {
	if num, ok := v.(json.Number); ok && present {
		if r, ok := new(big.Rat).SetString(string(num)); ok {
			k := r.Cmp(c.n)
			if (c.op == "gt" && k > 0) || (c.op == "gte" && k >= 0) || (c.op == "lt" && k < 0) || (c.op == "lte" && k <= 0) {
				return ""
			}
		}
	}
	if !present {
		return fmt.Sprintf("expected a number %s %s, field absent", compareWords[c.op], c.n.RatString())
	}
	return fmt.Sprintf("expected a number %s %s, got %s", compareWords[c.op], c.n.RatString(), show(v))
}

// splitPath splits a field path into its parts; it must start with data
// or meta.
func splitPath(path string) ([]string, error) {
	parts := strings.Split(path, ".")
	if parts[0] != "data" && parts[0] != "meta" {
		return nil, fmt.Errorf("field %q: a field path starts with data or meta (data.count, meta.kv.op)", path)
	}
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("field %q: empty part in the path", path)
		}
	}
	return parts, nil
}

// lookup returns the value at path in ev ({"data": ..., "meta": ...}).
func lookup(ev map[string]any, path string) (any, bool) {
	parts, _ := splitPath(path)
	var cur any = ev
	for _, p := range parts {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[p]
			if !ok {
				return nil, false
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			cur = c[i]
		default:
			return nil, false
		}
	}
	return cur, true
}

// valueDiff is one difference between an expected and a got value.
type valueDiff struct{ path, text string }

// diffValues compares JSON values: objects by key whatever their order,
// numbers by value (1 equals 1.0).
func diffValues(path string, want, got any, out []valueDiff) []valueDiff {
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		for _, k := range sortedKeys(w) {
			gv, ok := g[k]
			if !ok {
				out = append(out, valueDiff{join(k), fmt.Sprintf("expected %s, field absent", show(w[k]))})
				continue
			}
			out = diffValues(join(k), w[k], gv, out)
		}
		for _, k := range sortedKeys(g) {
			if _, ok := w[k]; !ok {
				out = append(out, valueDiff{join(k), fmt.Sprintf("unexpected field, got %s", show(g[k]))})
			}
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			break
		}
		for i := range w {
			out = diffValues(join(strconv.Itoa(i)), w[i], g[i], out)
		}
		return out
	case json.Number:
		if g, ok := got.(json.Number); ok {
			a, aok := new(big.Rat).SetString(string(w))
			b, bok := new(big.Rat).SetString(string(g))
			if aok && bok && a.Cmp(b) == 0 {
				return out
			}
		}
	default:
		if want == got {
			return out
		}
	}
	return append(out, valueDiff{path, fmt.Sprintf("expected %s, got %s", show(want), show(got))})
}

// show formats a JSON value compactly.
func show(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// decodeJSON decodes b keeping numbers exact.
func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}
