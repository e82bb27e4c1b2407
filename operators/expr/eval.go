package expr

import (
	"math"
	"strings"

	"github.com/flowrun/flowrun/pipeline"
	"github.com/tidwall/gjson"
)

// node is one element of a parsed expression.
type node interface {
	eval(ev pipeline.Event) (Value, error)
	source() string
	offset() int
}

// span records where a node is: off is the byte offset errors point at (an
// operator, a function name) and text the node's source, quoted in error
// messages.
type span struct {
	off  int
	text string
}

func (s span) source() string { return s.text }
func (s span) offset() int    { return s.off }

// describe names an operand for an error message: its source and its kind,
// such as `data.count (a string)`.
func describe(n node, v Value) string {
	return n.source() + " (" + v.kind.article() + ")"
}

func notBool(what string, n node, v Value) error {
	if v.kind == Missing {
		return evalErr(0, ErrNotBoolean, what+" must be true or false, but "+n.source()+" is missing")
	}
	return evalErr(0, ErrNotBoolean, what+" must be true or false, got "+describe(n, v))
}

type literalNode struct {
	span
	v Value
}

func (n *literalNode) eval(pipeline.Event) (Value, error) { return n.v, nil }

type pathNode struct {
	span
	root  Root
	gpath string
	whole bool
}

func (n *pathNode) eval(ev pipeline.Event) (Value, error) {
	src := ev.DataJSON()
	if n.root == RootMeta {
		src = ev.MetaJSON()
	}
	if n.whole {
		return fromResult(gjson.ParseBytes(src)), nil
	}
	return fromResult(gjson.GetBytes(src, n.gpath)), nil
}

type unaryNode struct {
	span
	op byte
	x  node
}

func (n *unaryNode) eval(ev pipeline.Event) (Value, error) {
	v, err := n.x.eval(ev)
	if err != nil {
		return Value{}, err
	}
	if n.op == '!' {
		if v.kind != Bool {
			err := notBool("operand of '!'", n.x, v)
			err.(*EvalError).Offset = n.off
			return Value{}, err
		}
		return boolValue(!v.b), nil
	}
	if v.kind != Number {
		return Value{}, operandErr(n.off, "cannot negate "+describe(n.x, v), v)
	}
	if v.isInt && v.i != math.MinInt64 {
		return intValue(-v.i), nil
	}
	return floatValue(-v.f), nil
}

// operandErr wraps ErrMissing when v is missing, ErrType otherwise.
func operandErr(off int, msg string, vs ...Value) error {
	for _, v := range vs {
		if v.kind == Missing {
			return evalErr(off, ErrMissing, msg)
		}
	}
	return evalErr(off, ErrType, msg)
}

type logicalNode struct {
	span
	or   bool
	l, r node
}

func (n *logicalNode) eval(ev pipeline.Event) (Value, error) {
	op := "&&"
	if n.or {
		op = "||"
	}
	l, err := n.l.eval(ev)
	if err != nil {
		return Value{}, err
	}
	if l.kind != Bool {
		return Value{}, n.wrongType(op, n.l, l)
	}
	if l.b == n.or {
		return l, nil // short circuit: true || _, false && _
	}
	r, err := n.r.eval(ev)
	if err != nil {
		return Value{}, err
	}
	if r.kind != Bool {
		return Value{}, n.wrongType(op, n.r, r)
	}
	return r, nil
}

func (n *logicalNode) wrongType(op string, x node, v Value) error {
	err := notBool("operand of '"+op+"'", x, v).(*EvalError)
	err.Offset = n.off
	return err
}

type compareNode struct {
	span
	op   string
	l, r node
}

func (n *compareNode) eval(ev pipeline.Event) (Value, error) {
	l, err := n.l.eval(ev)
	if err != nil {
		return Value{}, err
	}
	r, err := n.r.eval(ev)
	if err != nil {
		return Value{}, err
	}
	switch n.op {
	case "==":
		return boolValue(equal(l, r)), nil
	case "!=":
		return boolValue(!equal(l, r)), nil
	}
	var c int
	switch {
	case l.kind == Number && r.kind == Number:
		c = compareNumbers(l, r)
	case l.kind == String && r.kind == String:
		c = strings.Compare(l.s, r.s)
	default:
		return Value{}, operandErr(n.off, "cannot compare "+describe(n.l, l)+" with "+describe(n.r, r)+
			" using "+n.op+" (only two numbers or two strings are ordered)", l, r)
	}
	switch n.op {
	case "<":
		return boolValue(c < 0), nil
	case "<=":
		return boolValue(c <= 0), nil
	case ">":
		return boolValue(c > 0), nil
	default:
		return boolValue(c >= 0), nil
	}
}

type arithNode struct {
	span
	op   byte
	l, r node
}

func (n *arithNode) eval(ev pipeline.Event) (Value, error) {
	l, err := n.l.eval(ev)
	if err != nil {
		return Value{}, err
	}
	r, err := n.r.eval(ev)
	if err != nil {
		return Value{}, err
	}
	if l.kind == Number && r.kind == Number {
		return n.numeric(l, r)
	}
	if n.op == '+' && (l.kind == String || r.kind == String) {
		return n.concat(l, r)
	}
	if n.op == '+' {
		return Value{}, operandErr(n.off, "cannot add "+describe(n.l, l)+" and "+describe(n.r, r)+
			" ('+' adds two numbers or joins a string with a string, number or boolean)", l, r)
	}
	return Value{}, operandErr(n.off, "'"+string(n.op)+"' needs two numbers, got "+
		describe(n.l, l)+" and "+describe(n.r, r), l, r)
}

// concat joins two operands of which at least one is a string; numbers and
// booleans are rendered as JSON text.
func (n *arithNode) concat(l, r Value) (Value, error) {
	for i, v := range [2]Value{l, r} {
		switch v.kind {
		case String, Number, Bool:
			continue
		}
		x := n.l
		if i == 1 {
			x = n.r
		}
		if v.kind == Missing {
			return Value{}, evalErr(n.off, ErrMissing, "cannot concatenate "+x.source()+": it is missing")
		}
		return Value{}, evalErr(n.off, ErrType, "cannot concatenate "+describe(x, v)+
			" (only strings, numbers and booleans; use string() for JSON text)")
	}
	b := make([]byte, 0, 32)
	b = l.appendText(b)
	b = r.appendText(b)
	return stringValue(string(b)), nil
}

func (n *arithNode) numeric(l, r Value) (Value, error) {
	if l.isInt && r.isInt {
		a, b := l.i, r.i
		switch n.op {
		case '+':
			if s := a + b; (s > a) == (b > 0) {
				return intValue(s), nil
			}
		case '-':
			if s := a - b; (s < a) == (b > 0) {
				return intValue(s), nil
			}
		case '*':
			if a == 0 || b == 0 {
				return intValue(0), nil
			}
			if p := a * b; p/b == a && !(a == -1 && b == math.MinInt64) && !(b == -1 && a == math.MinInt64) {
				return intValue(p), nil
			}
		case '/':
			if b == 0 {
				return Value{}, n.divZero()
			}
			if a%b == 0 && !(a == math.MinInt64 && b == -1) {
				return intValue(a / b), nil
			}
		case '%':
			if b == 0 {
				return Value{}, n.divZero()
			}
			return intValue(a % b), nil
		}
		// Overflow or inexact quotient: fall through to float64.
	}
	var f float64
	switch n.op {
	case '+':
		f = l.f + r.f
	case '-':
		f = l.f - r.f
	case '*':
		f = l.f * r.f
	case '/':
		if r.f == 0 {
			return Value{}, n.divZero()
		}
		f = l.f / r.f
	case '%':
		if r.f == 0 {
			return Value{}, n.divZero()
		}
		f = math.Mod(l.f, r.f)
	}
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return Value{}, evalErr(n.off, ErrArithmetic, n.text+" is not a finite number")
	}
	return floatValue(f), nil
}

func (n *arithNode) divZero() error {
	return evalErr(n.off, ErrArithmetic, "division by zero in "+n.text)
}

type objectNode struct {
	span
	keys []string // JSON-encoded
	vals []node
}

// eval builds the object; members whose value is missing are left out, as
// JSON.stringify leaves out undefined.
func (n *objectNode) eval(ev pipeline.Event) (Value, error) {
	b := make([]byte, 0, 64)
	b = append(b, '{')
	first := true
	for i, vn := range n.vals {
		v, err := vn.eval(ev)
		if err != nil {
			return Value{}, err
		}
		if v.kind == Missing {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, n.keys[i]...)
		b = append(b, ':')
		b = v.AppendJSON(b)
	}
	b = append(b, '}')
	return Value{kind: Object, s: string(b)}, nil
}

type arrayNode struct {
	span
	elems []node
}

// eval builds the array; missing elements become null.
func (n *arrayNode) eval(ev pipeline.Event) (Value, error) {
	b := make([]byte, 0, 64)
	b = append(b, '[')
	for i, en := range n.elems {
		v, err := en.eval(ev)
		if err != nil {
			return Value{}, err
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = v.AppendJSON(b)
	}
	b = append(b, ']')
	return Value{kind: Array, s: string(b)}, nil
}

// condNode is the conditional cond ? a : b; only the chosen branch is
// evaluated.
type condNode struct {
	span
	cond, a, b node
}

func (n *condNode) eval(ev pipeline.Event) (Value, error) {
	c, err := n.cond.eval(ev)
	if err != nil {
		return Value{}, err
	}
	if c.kind != Bool {
		err := notBool("condition of '?'", n.cond, c).(*EvalError)
		err.Offset = n.off
		return Value{}, err
	}
	if c.b {
		return n.a.eval(ev)
	}
	return n.b.eval(ev)
}
