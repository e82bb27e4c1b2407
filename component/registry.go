package component

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/flowrun/flowrun/internal/suggest"
)

// Registry holds the component specs a flow file may use. It is a plain
// value: each NewRegistry call returns an independent, empty registry, and
// nothing is registered behind the caller's back.
type Registry struct {
	specs map[string]*Spec
	order []string
	// checkExpr compiles an expression, reporting why it is invalid.
	checkExpr func(src string) error
}

// NewRegistry returns a registry with no components.
func NewRegistry() *Registry {
	return &Registry{specs: map[string]*Spec{}}
}

// SetExprChecker sets the function that checks every TypeExpr value when a
// flow is loaded (the operators' expression compiler). Without one,
// expressions are checked only by the Check of the components using them.
func (r *Registry) SetExprChecker(check func(src string) error) { r.checkExpr = check }

// CheckExpr checks an expression with the checker set by SetExprChecker;
// nil when none is set.
func (r *Registry) CheckExpr(src string) error {
	if r.checkExpr == nil {
		return nil
	}
	return r.checkExpr(src)
}

// ErrBadSpec is wrapped by the errors of Register: a spec that cannot be
// used, a programming error of its package.
var ErrBadSpec = errors.New("bad component spec")

// Register adds specs, in order. It refuses (and adds none of the specs
// after) a spec whose type is empty or already registered, or that is
// incomplete or inconsistent.
func (r *Registry) Register(specs ...Spec) error {
	for _, s := range specs {
		if err := r.register(s); err != nil {
			return err
		}
	}
	return nil
}

// MustRegister is Register for built-in specs, whose errors are
// programming errors caught by every test: it panics on error.
func (r *Registry) MustRegister(specs ...Spec) {
	if err := r.Register(specs...); err != nil {
		panic(err)
	}
}

func (r *Registry) register(s Spec) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("register %q: %w: %s", s.Type, ErrBadSpec, fmt.Sprintf(format, args...))
	}
	switch {
	case s.Type == "":
		return bad("empty type")
	case r.specs[s.Type] != nil:
		return bad("type already registered")
	case s.Build == nil:
		return bad("no Build function")
	}
	for _, f := range s.Fields {
		if f.Type == TypeEnum && len(f.Enum) == 0 {
			return bad("enum field %q has no values", f.Name)
		}
		for _, w := range []*When{f.RequiredWhen, f.OnlyWhen} {
			if w != nil && (s.Field(w.Field) == nil || w.Field == f.Name || len(w.Values) == 0) {
				return bad("field %q has a condition on %q, which is not another field of the spec or lists no values", f.Name, w.Field)
			}
		}
		if f.Type == TypeMap && f.Default != "" {
			return bad("map field %q has a default", f.Name)
		}
		if f.Type == TypeNode && f.NodeType == "" {
			return bad("node field %q has no NodeType", f.Name)
		}
		if err := checkBounds(&f); err != nil {
			return bad("field %q: %v", f.Name, err)
		}
		if f.Default != "" {
			if _, err := r.ParseValue(&f, f.Default, false, ""); err != nil {
				return bad("field %q: default %q: %v", f.Name, f.Default, err)
			}
		}
	}
	r.specs[s.Type] = &s
	r.order = append(r.order, s.Type)
	return nil
}

// checkBounds reports bounds that do not parse, are set on a field type
// without order, or are crossed.
func checkBounds(f *Field) error {
	if f.Min == "" && f.Max == "" {
		return nil
	}
	switch f.Type {
	case TypeInt, TypeByteSize, TypeDuration:
	default:
		return fmt.Errorf("Min and Max apply to int, bytesize and duration fields, not %s", f.Type)
	}
	lo, hi, err := bounds(f)
	if err != nil {
		return err
	}
	if lo > hi {
		return fmt.Errorf("Min %s is above Max %s", f.Min, f.Max)
	}
	return nil
}

// bounds returns a field's Min and Max as numbers (int, bytes or
// nanoseconds); the extremes of int64 when unset.
func bounds(f *Field) (lo, hi int64, err error) {
	lo, hi = math.MinInt64, math.MaxInt64
	if f.Min != "" {
		if lo, err = number(f, f.Min); err != nil {
			return 0, 0, fmt.Errorf("Min: %w", err)
		}
	}
	if f.Max != "" {
		if hi, err = number(f, f.Max); err != nil {
			return 0, 0, fmt.Errorf("Max: %w", err)
		}
	}
	return lo, hi, nil
}

// number parses a bound or value of an int, bytesize or duration field.
func number(f *Field, text string) (int64, error) {
	switch f.Type {
	case TypeInt:
		return strconv.ParseInt(strings.ReplaceAll(text, "_", ""), 0, 64)
	case TypeByteSize:
		n, ok := parseByteSize(text)
		if !ok {
			return 0, fmt.Errorf("invalid size %q", text)
		}
		return n, nil
	case TypeDuration:
		d, err := time.ParseDuration(text)
		return int64(d), err
	}
	return 0, fmt.Errorf("%s has no order", f.Type)
}

// RangeText says in words which values a field's bounds allow: "at least
// 1", "at most 1s", "1 to 65535"; "" when it has none.
func (f *Field) RangeText() string {
	switch {
	case f.Min != "" && f.Max != "":
		return f.Min + " to " + f.Max
	case f.Min != "":
		return "at least " + f.Min
	case f.Max != "":
		return "at most " + f.Max
	}
	return ""
}

// checkRange refuses a value outside the field's bounds.
func checkRange(f *Field, n int64, text string) error {
	if f.Min == "" && f.Max == "" {
		return nil
	}
	lo, hi, err := bounds(f)
	if err != nil {
		return err // refused by Register
	}
	if n >= lo && n <= hi {
		return nil
	}
	msg := fmt.Sprintf("%s is %s, out of range: must be %s", f.Name, text, f.RangeText())
	if n <= 0 && lo > 0 {
		msg += " (a limit cannot be switched off; leave the option out for its default)"
	}
	return errors.New(msg)
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

// ConnectorTypes returns the registered types that are not operators, in
// registration order.
func (r *Registry) ConnectorTypes() []string {
	var out []string
	for _, t := range r.order {
		if r.specs[t].Kind != KindOperator {
			out = append(out, t)
		}
	}
	return out
}

// ParseValue checks the text of a value against a field (its type and
// bounds) and returns its Go value: string for string, expr, path, enum and
// node fields, int, bool, time.Duration, int64 for bytesize and []string
// for strings. A relative path is resolved against baseDir. ${NAME} must
// already be expanded (see ExpandEnv). The error is a message for the
// user, without position.
func (r *Registry) ParseValue(f *Field, text string, isNull bool, baseDir string) (any, error) {
	switch f.Type {
	case TypeString:
		return text, nil
	case TypeInt:
		if isNull {
			return nil, errors.New("expected an integer, got null")
		}
		n, err := strconv.ParseInt(strings.ReplaceAll(text, "_", ""), 0, 64)
		if err != nil || n > math.MaxInt32 || n < math.MinInt32 {
			return nil, fmt.Errorf("expected an integer, got %q", text)
		}
		if err := checkRange(f, n, text); err != nil {
			return nil, err
		}
		return int(n), nil
	case TypeBool:
		switch strings.ToLower(text) {
		case "true", "yes", "on":
			return true, nil
		case "false", "no", "off":
			return false, nil
		}
		return nil, fmt.Errorf("expected true or false, got %q", text)
	case TypeDuration:
		d, err := time.ParseDuration(text)
		if err != nil {
			return nil, fmt.Errorf("expected a duration such as \"5ms\" or \"1m30s\", got %q", text)
		}
		if d < 0 {
			return nil, fmt.Errorf("duration must not be negative, got %q", text)
		}
		if err := checkRange(f, int64(d), text); err != nil {
			return nil, err
		}
		return d, nil
	case TypeByteSize:
		n, ok := parseByteSize(text)
		if !ok {
			return nil, fmt.Errorf("expected a size such as 4096, \"64KiB\" or \"16MiB\", got %q", text)
		}
		if err := checkRange(f, n, text); err != nil {
			return nil, err
		}
		return n, nil
	case TypeExpr:
		if isNull || strings.TrimSpace(text) == "" {
			return nil, errors.New("expected an expression, got nothing")
		}
		return text, nil
	case TypePath:
		if isNull || text == "" {
			return nil, errors.New("expected a path, got nothing")
		}
		if !filepath.IsAbs(text) && baseDir != "" {
			text = filepath.Join(baseDir, text)
		}
		return text, nil
	case TypeNode:
		if isNull || !ValidName(text) {
			return nil, fmt.Errorf("expected the name of a %s connector of this flow, got %q", f.NodeType, text)
		}
		return text, nil
	case TypeEnum:
		for _, e := range f.Enum {
			if text == e {
				return text, nil
			}
		}
		return nil, fmt.Errorf("invalid value %q (want one of %s)%s", text, strings.Join(f.Enum, ", "), suggest.DidYouMean(text, f.Enum))
	case TypeMap:
		return nil, fmt.Errorf("expected a mapping of names to strings (such as {Name: value}), got %q", text)
	case TypeStrings:
		var list []string
		for _, s := range strings.Split(text, ",") {
			if s = strings.TrimSpace(s); s != "" {
				list = append(list, s)
			}
		}
		if len(list) == 0 {
			return nil, errors.New("expected a list or a comma-separated string, got nothing")
		}
		return list, nil
	}
	return nil, fmt.Errorf("field has unknown type %q", f.Type)
}

// ParseByteSize parses a size as a TypeByteSize option is written: "4096",
// "64KiB", "16 MiB", "1GB".
func ParseByteSize(s string) (int64, bool) { return parseByteSize(s) }

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

// envRe matches ${NAME}, and $${...} which stands for ${...} itself.
var envRe = regexp.MustCompile(`\$?\$\{([^}]*)\}`)

var envNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// ErrEnv is wrapped by the errors of ExpandEnv.
var ErrEnv = errors.New("environment variable")

// ExpandEnv replaces each ${NAME} of s by the value of the environment
// variable NAME, and each $${...} by ${...}. The error, wrapping ErrEnv,
// explains the first name that is malformed or unset.
func ExpandEnv(s string) (string, error) { return ExpandEnvFunc(s, os.LookupEnv) }

// ExpandEnvFunc is ExpandEnv reading variables with lookup instead of
// os.LookupEnv (a test gives variables of its own this way).
func ExpandEnvFunc(s string, lookup func(name string) (string, bool)) (string, error) {
	var err error
	out := envRe.ReplaceAllStringFunc(s, func(m string) string {
		if strings.HasPrefix(m, "$$") {
			return m[1:]
		}
		name := m[2 : len(m)-1]
		if err != nil {
			return m
		}
		if !envNameRe.MatchString(name) {
			err = fmt.Errorf("invalid %w name %q in %q", ErrEnv, name, s)
			return m
		}
		v, ok := lookup(name)
		if !ok {
			err = fmt.Errorf("%w %s is not set (named in %q)", ErrEnv, name, s)
		}
		return v
	})
	return out, err
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// ValidName reports whether s can name a flow, node or port: link syntax
// relies on names having no '/', spaces or "->".
func ValidName(s string) bool { return len(s) <= 128 && nameRe.MatchString(s) }
