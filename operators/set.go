package operators

import (
	"fmt"
	"strings"

	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// Assignment sets one target of an event to the value of an expression.
type Assignment struct {
	// Target is the path to set, rooted at data (alias payload) or meta:
	// "data.total", "meta.kv", "data.items.0", `data["odd key"]`, or "data"
	// / "meta" alone to replace the whole payload or metadata (meta must
	// stay an object). Missing parent objects are created.
	Target string
	// Expr is the expression whose value is stored at Target, such as
	// `{"increment": "warnings_" + data.steam_id}`. A missing value is an
	// error; wrap it in default(...) to supply a fallback. The expression
	// delete() removes Target instead (nothing happens when it is absent),
	// for instance meta.kv before a sink; data and meta alone cannot be
	// deleted.
	Expr string
}

// SetOptions configure a set.
type SetOptions struct {
	// Fields are applied in order, each seeing the event as changed by the
	// previous ones. At least one is required.
	Fields []Assignment
	// Expr configures the expressions: the clock of now(), the size bound
	// of string functions. The zero value gives the real clock and the
	// defaults of expr.Options.
	Expr expr.Options
}

type assignment struct {
	target string // as written, for messages
	path   expr.Path
	sjson  string // sjson path; "" for a whole root
	// parents are the gjson paths of the target's proper ancestors below
	// the root, checked before setting so that a scalar on the way is
	// reported instead of silently replaced.
	parents []string
	value   *expr.Expr
	del     bool // value is delete()
}

type set struct{ fields []assignment }

// NewSet returns an operator that emits on "out" each event with its
// targets set to the values of their expressions. The emitted event has
// new data and meta slices (only those changed); the input is never
// modified.
func NewSet(opts SetOptions) (Operator, error) {
	if len(opts.Fields) == 0 {
		return nil, fmt.Errorf("set: %w: at least one field is required", ErrInvalidOption)
	}
	s := &set{}
	for _, f := range opts.Fields {
		path, err := expr.ParsePath(f.Target)
		if err != nil {
			return nil, fmt.Errorf("set: target %q: %w: %w", f.Target, ErrInvalidOption, err)
		}
		if f.Expr == "" {
			return nil, fmt.Errorf("set: target %q: %w: an expression is required", f.Target, ErrInvalidOption)
		}
		value, err := expr.ParseWith(f.Expr, opts.Expr)
		if err != nil {
			return nil, fmt.Errorf("set: target %q: %w: %w", f.Target, ErrInvalidExpression, err)
		}
		a := assignment{target: f.Target, path: path, sjson: sjsonPath(path.Segments), value: value, del: value.IsDelete()}
		if a.del && len(path.Segments) == 0 {
			return nil, fmt.Errorf("set: target %q: %w: %s itself cannot be deleted; delete its fields, or set it to %s",
				f.Target, ErrInvalidOption, path.Root, map[expr.Root]string{expr.RootData: "null", expr.RootMeta: "{}"}[path.Root])
		}
		for i := 1; i < len(path.Segments); i++ {
			a.parents = append(a.parents, expr.Path{Root: path.Root, Segments: path.Segments[:i]}.GJSON())
		}
		s.fields = append(s.fields, a)
	}
	return s, nil
}

// sjsonPath builds the sjson path of segments: special characters are
// escaped, and bracketed string keys get sjson's ':' prefix so that a key
// made of digits names an object member instead of an array index.
func sjsonPath(segs []expr.Segment) string {
	var b strings.Builder
	for i, s := range segs {
		if i > 0 {
			b.WriteByte('.')
		}
		if s.Quoted {
			b.WriteByte(':')
		}
		for j := 0; j < len(s.Key); j++ {
			c := s.Key[j]
			if c < 0x80 && !(c == '_' || c == '-' || (c >= '0' && c <= '9') || (c|0x20 >= 'a' && c|0x20 <= 'z')) {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}

func (s *set) Apply(ev pipeline.Event, emit func(string, pipeline.Event)) error {
	cur := ev
	for i := range s.fields {
		a := &s.fields[i]
		next, err := a.apply(cur)
		if err != nil {
			return fmt.Errorf("set %s: %w", a.target, err)
		}
		cur = next
	}
	emit(pipeline.PortOut, ev.Derive(cur.Data, cur.Meta))
	return nil
}

// apply returns cur with the assignment applied, sharing the slice it did
// not change.
func (a *assignment) apply(cur pipeline.Event) (pipeline.Event, error) {
	if a.del {
		return a.delete(cur)
	}
	v, err := a.value.Eval(cur)
	if err != nil {
		return cur, err
	}
	if v.Kind() == expr.Missing {
		return cur, fmt.Errorf("%w: the value of %s is missing (use default(...) for a fallback)", ErrTarget, a.value)
	}
	raw := v.AppendJSON(nil)
	isMeta := a.path.Root == expr.RootMeta
	if a.sjson == "" {
		if isMeta {
			if v.Kind() != expr.Object {
				return cur, fmt.Errorf("%w: meta must be an object, the value is %s", ErrTarget, kindName(v.Kind()))
			}
			return cur.Derive(cur.Data, raw), nil
		}
		return cur.Derive(raw, cur.Meta), nil
	}
	doc := cur.DataJSON()
	if isMeta {
		doc = cur.MetaJSON()
	}
	if err := a.checkParents(doc); err != nil {
		return cur, err
	}
	if !isMeta && isNull(doc) {
		doc = []byte("{}") // a payload of null grows into an object
	}
	out, err := sjson.SetRawBytes(doc, a.sjson, raw)
	if err != nil {
		return cur, fmt.Errorf("%w: %w", ErrTarget, err)
	}
	if isMeta {
		return cur.Derive(cur.Data, out), nil
	}
	return cur.Derive(out, cur.Meta), nil
}

// delete returns cur without the target; cur itself when it has no such
// field.
func (a *assignment) delete(cur pipeline.Event) (pipeline.Event, error) {
	isMeta := a.path.Root == expr.RootMeta
	doc := cur.DataJSON()
	if isMeta {
		doc = cur.MetaJSON()
	}
	if !gjson.GetBytes(doc, a.path.GJSON()).Exists() {
		return cur, nil
	}
	out, err := sjson.DeleteBytes(doc, a.sjson)
	if err != nil {
		return cur, fmt.Errorf("%w: %w", ErrTarget, err)
	}
	if isMeta {
		return cur.Derive(cur.Data, out), nil
	}
	return cur.Derive(out, cur.Meta), nil
}

// checkParents rejects a root or ancestor that exists but is neither an
// object, an array nor null, which sjson would silently replace; null grows
// into an object.
func (a *assignment) checkParents(doc []byte) error {
	root := gjson.ParseBytes(doc)
	if !root.IsObject() && !root.IsArray() && root.Type != gjson.Null {
		return fmt.Errorf("%w: %s is %s, not an object or array", ErrTarget, a.path.Root, describeResult(root))
	}
	for i, p := range a.parents {
		r := gjson.GetBytes(doc, p)
		if r.Exists() && !r.IsObject() && !r.IsArray() && r.Type != gjson.Null {
			parent := expr.Path{Root: a.path.Root, Segments: a.path.Segments[:i+1]}
			return fmt.Errorf("%w: %s is %s, not an object or array", ErrTarget, parent, describeResult(r))
		}
	}
	return nil
}

func isNull(doc []byte) bool {
	return gjson.ParseBytes(doc).Type == gjson.Null
}

func describeResult(r gjson.Result) string {
	switch r.Type {
	case gjson.Null:
		return "null"
	case gjson.True, gjson.False:
		return "a boolean"
	case gjson.Number:
		return "a number"
	case gjson.String:
		return "a string"
	}
	return "not valid JSON"
}

func kindName(k expr.Kind) string {
	switch k {
	case expr.Array, expr.Object:
		return "an " + k.String()
	case expr.Null, expr.Missing:
		return k.String()
	}
	return "a " + k.String()
}

func (s *set) Ports() []string { return nil }
func (s *set) String() string  { return "set" }
