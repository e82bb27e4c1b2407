package expr

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/flowrun/flowrun/internal/suggest"
	"github.com/flowrun/flowrun/pipeline"
)

// maxDepth bounds the nesting of parentheses, literals and unary operators,
// so that a hostile expression cannot exhaust the stack.
const maxDepth = 200

// Expr is a parsed expression. It is immutable and safe for concurrent use.
type Expr struct {
	src  string
	root node
}

// Parse parses src with the default Options (the real clock). The error,
// if any, is a *SyntaxError wrapping ErrSyntax that names the column of the
// problem.
func Parse(src string) (*Expr, error) {
	return ParseWith(src, Options{})
}

// ParseWith parses src; its functions use opts (clock, randomness, size
// bound). A regular expression given to matches is compiled here, and a
// time layout given as a literal is checked here. The error is a
// *SyntaxError wrapping ErrSyntax, or wraps ErrInvalidOptions.
func ParseWith(src string, opts Options) (*Expr, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	p := &parser{src: src, opts: &opts, deleteAt: -1}
	p.skipSpace()
	if p.pos == len(src) {
		return nil, p.errAt(p.pos, "empty expression")
	}
	n, err := p.parseExpr()
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos < len(src) {
		return nil, p.unexpected("expected an operator or the end of the expression")
	}
	if p.deleteAt >= 0 && !isDelete(n) {
		return nil, p.errAt(p.deleteAt, "delete() must be the whole expression, as the value of a set target (meta.tmp: delete())")
	}
	return &Expr{src: src, root: n}, nil
}

// IsDelete reports whether e is delete(), the value by which the set
// operator removes its target.
func (e *Expr) IsDelete() bool { return isDelete(e.root) }

func isDelete(n node) bool {
	c, ok := n.(*callNode)
	return ok && c.fn.name == "delete"
}

// String returns the source text of e.
func (e *Expr) String() string { return e.src }

// Eval evaluates e against ev. It reads ev's bytes and never modifies them.
// The error, if any, is an *EvalError wrapping ErrEval.
func (e *Expr) Eval(ev pipeline.Event) (Value, error) {
	v, err := e.root.eval(ev)
	if err != nil {
		return Value{}, e.locate(err)
	}
	return v, nil
}

// EvalBool evaluates e as a condition: the result must be true or false,
// anything else (including missing) is an error wrapping ErrNotBoolean.
func (e *Expr) EvalBool(ev pipeline.Event) (bool, error) {
	v, err := e.root.eval(ev)
	if err != nil {
		return false, e.locate(err)
	}
	if v.kind != Bool {
		return false, e.locate(notBool("condition", e.root, v))
	}
	return v.b, nil
}

func (e *Expr) locate(err error) error {
	if ee, ok := err.(*EvalError); ok {
		ee.Src = e.src
		ee.Line, ee.Column = position(e.src, ee.Offset)
	}
	return err
}

// Root is the part of an event a path starts from.
type Root uint8

// Roots of a path.
const (
	// RootData is the payload, written data or payload.
	RootData Root = iota + 1
	// RootMeta is the metadata object, written meta.
	RootMeta
)

// String returns "data" or "meta".
func (r Root) String() string {
	if r == RootMeta {
		return "meta"
	}
	return "data"
}

// Segment is one step of a path below its root.
type Segment struct {
	// Key is the object key, or the array index in decimal.
	Key string
	// Quoted is true for a bracketed string such as data["0"], which
	// always names an object key; other segments made of digits may index
	// an array.
	Quoted bool
}

// Path is a parsed path such as data.player.id or meta["odd key"].
type Path struct {
	// Root is the part of the event the path starts from.
	Root Root
	// Segments are the steps below Root; empty for the whole root.
	Segments []Segment
}

// ParsePath parses src as a path alone (the target syntax of the set
// operator): a root (data, payload or meta) followed by .key, [index] or
// ["key"] segments. The error is a *SyntaxError.
func ParsePath(src string) (Path, error) {
	p := &parser{src: src}
	p.skipSpace()
	start := p.pos
	name := p.ident()
	root := rootOf(name)
	if root == 0 {
		if name == "" {
			return Path{}, p.errAt(start, "expected a path starting with data, payload or meta")
		}
		return Path{}, p.errAt(start, "a path starts with data, payload or meta, not '"+name+"'")
	}
	path, err := p.parsePathSegments(root)
	if err != nil {
		return Path{}, err
	}
	p.skipSpace()
	if p.pos < len(src) {
		return Path{}, p.unexpected("expected '.', '[' or the end of the path")
	}
	return path, nil
}

// String returns the path in canonical form, such as data.items.0 or
// meta["odd key"].
func (p Path) String() string {
	var b strings.Builder
	b.WriteString(p.Root.String())
	for _, s := range p.Segments {
		if !s.Quoted && isPlainSegment(s.Key) {
			b.WriteByte('.')
			b.WriteString(s.Key)
			continue
		}
		b.WriteByte('[')
		b.Write(appendString(nil, s.Key))
		b.WriteByte(']')
	}
	return b.String()
}

// GJSON returns the gjson path selecting p's segments within its root, with
// gjson's special characters escaped; it is empty for a bare root.
func (p Path) GJSON() string {
	var b strings.Builder
	for i, s := range p.Segments {
		if i > 0 {
			b.WriteByte('.')
		}
		for j := 0; j < len(s.Key); j++ {
			c := s.Key[j]
			if c < utf8.RuneSelf && !isWordByte(c) && c != '-' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}

func isPlainSegment(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isWordByte(s[i]) {
			return false
		}
	}
	return true
}

func rootOf(name string) Root {
	switch name {
	case "data", "payload":
		return RootData
	case "meta":
		return RootMeta
	}
	return 0
}

type parser struct {
	src   string
	pos   int
	depth int
	opts  *Options
	// deleteAt is the offset of a delete() call, -1 when there is none.
	deleteAt int
}

func (p *parser) errAt(off int, msg string) error {
	line, col := position(p.src, off)
	return &SyntaxError{Src: p.src, Offset: off, Line: line, Column: col, Msg: msg}
}

// unexpected reports the character at the current position, or the end of
// input, followed by what was expected.
func (p *parser) unexpected(expected string) error {
	if p.pos >= len(p.src) {
		return p.errAt(p.pos, "unexpected end of expression, "+expected)
	}
	r, _ := utf8.DecodeRuneInString(p.src[p.pos:])
	return p.errAt(p.pos, "unexpected "+strconv.QuoteRune(r)+", "+expected+wordOpHint(p.src[p.pos:]))
}

// wordOpHint returns a hint when rest starts with and, or or not as a
// word, which the language spells &&, || and !.
func wordOpHint(rest string) string {
	end := 0
	for end < len(rest) && isWordByte(rest[end]) {
		end++
	}
	switch strings.ToLower(rest[:end]) {
	case "and":
		return " (write '&&' instead of '" + rest[:end] + "')"
	case "or":
		return " (write '||' instead of '" + rest[:end] + "')"
	case "not":
		return " (write '!' instead of '" + rest[:end] + "')"
	}
	return ""
}

func (p *parser) skipSpace() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peekOp reports whether the input continues with op, after spaces.
func (p *parser) peekOp(op string) bool {
	p.skipSpace()
	return strings.HasPrefix(p.src[p.pos:], op)
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return p.errAt(p.pos, "expression nested too deeply (limit "+strconv.Itoa(maxDepth)+")")
	}
	return nil
}

func (p *parser) leave() { p.depth-- }

func (p *parser) text(start int) string { return strings.TrimSpace(p.src[start:p.pos]) }

// parseExpr parses a full expression: an or, optionally followed by
// ? a : b, the conditional, which binds least tightly and nests to the
// right (c1 ? a : c2 ? b : c).
func (p *parser) parseExpr() (node, error) {
	start := p.pos
	cond, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if !p.peekOp("?") {
		return cond, nil
	}
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	opPos := p.pos
	p.pos++
	a, err := p.parseExpr()
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos >= len(p.src) || p.src[p.pos] != ':' {
		return nil, p.expected("':' of the conditional 'condition ? a : b'")
	}
	p.pos++
	b, err := p.parseExpr()
	if err != nil {
		return nil, err
	}
	return &condNode{span: span{opPos, p.text(start)}, cond: cond, a: a, b: b}, nil
}

func (p *parser) parseOr() (node, error) {
	start := p.pos
	l, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for {
		if p.peekOp("|") && !p.peekOp("||") {
			return nil, p.errAt(p.pos, "expected '||'")
		}
		if !p.peekOp("||") {
			return l, nil
		}
		opPos := p.pos
		p.pos += 2
		r, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		l = &logicalNode{span: span{opPos, p.text(start)}, or: true, l: l, r: r}
	}
}

func (p *parser) parseAnd() (node, error) {
	start := p.pos
	l, err := p.parseEquality()
	if err != nil {
		return nil, err
	}
	for {
		if p.peekOp("&") && !p.peekOp("&&") {
			return nil, p.errAt(p.pos, "expected '&&'")
		}
		if !p.peekOp("&&") {
			return l, nil
		}
		opPos := p.pos
		p.pos += 2
		r, err := p.parseEquality()
		if err != nil {
			return nil, err
		}
		l = &logicalNode{span: span{opPos, p.text(start)}, l: l, r: r}
	}
}

// equalityOp returns the equality operator at the current position.
func (p *parser) equalityOp() string {
	p.skipSpace()
	rest := p.src[p.pos:]
	switch {
	case strings.HasPrefix(rest, "=="):
		return "=="
	case strings.HasPrefix(rest, "!="):
		return "!="
	case strings.HasPrefix(rest, "="):
		return "="
	}
	return ""
}

func (p *parser) relationalOp() string {
	p.skipSpace()
	rest := p.src[p.pos:]
	for _, op := range []string{"<=", ">=", "<", ">"} {
		if strings.HasPrefix(rest, op) {
			return op
		}
	}
	return ""
}

func (p *parser) parseEquality() (node, error) {
	start := p.pos
	l, err := p.parseRelational()
	if err != nil {
		return nil, err
	}
	op := p.equalityOp()
	if op == "" {
		return l, nil
	}
	if op == "=" {
		return nil, p.errAt(p.pos, "use '==' to compare")
	}
	opPos := p.pos
	p.pos += len(op)
	r, err := p.parseRelational()
	if err != nil {
		return nil, err
	}
	if next := p.equalityOp(); next == "==" || next == "!=" {
		return nil, p.errAt(p.pos, "comparisons cannot be chained, combine them with && or use parentheses")
	}
	return &compareNode{span: span{opPos, p.text(start)}, op: op, l: l, r: r}, nil
}

func (p *parser) parseRelational() (node, error) {
	start := p.pos
	l, err := p.parseAdditive()
	if err != nil {
		return nil, err
	}
	op := p.relationalOp()
	if op == "" {
		return l, nil
	}
	opPos := p.pos
	p.pos += len(op)
	r, err := p.parseAdditive()
	if err != nil {
		return nil, err
	}
	if p.relationalOp() != "" {
		return nil, p.errAt(p.pos, "comparisons cannot be chained, combine them with &&")
	}
	return &compareNode{span: span{opPos, p.text(start)}, op: op, l: l, r: r}, nil
}

func (p *parser) parseAdditive() (node, error) {
	start := p.pos
	l, err := p.parseMultiplicative()
	if err != nil {
		return nil, err
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.src) || (p.src[p.pos] != '+' && p.src[p.pos] != '-') {
			return l, nil
		}
		op := p.src[p.pos]
		opPos := p.pos
		p.pos++
		r, err := p.parseMultiplicative()
		if err != nil {
			return nil, err
		}
		l = &arithNode{span: span{opPos, p.text(start)}, op: op, l: l, r: r}
	}
}

func (p *parser) parseMultiplicative() (node, error) {
	start := p.pos
	l, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.src) || strings.IndexByte("*/%", p.src[p.pos]) < 0 {
			return l, nil
		}
		op := p.src[p.pos]
		opPos := p.pos
		p.pos++
		r, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		l = &arithNode{span: span{opPos, p.text(start)}, op: op, l: l, r: r}
	}
}

func (p *parser) parseUnary() (node, error) {
	p.skipSpace()
	if p.pos >= len(p.src) {
		return nil, p.unexpected("expected a value")
	}
	c := p.src[p.pos]
	if c != '!' && c != '-' {
		return p.parsePrimary()
	}
	start := p.pos
	if c == '-' && p.pos+1 < len(p.src) && isDigit(p.src[p.pos+1]) {
		// A signed literal, so that -9223372036854775808 stays an integer.
		return p.parseNumber()
	}
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	p.pos++
	x, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	return &unaryNode{span: span{start, p.text(start)}, op: c, x: x}, nil
}

func (p *parser) parsePrimary() (node, error) {
	p.skipSpace()
	if p.pos >= len(p.src) {
		return nil, p.unexpected("expected a value")
	}
	start := p.pos
	c := p.src[p.pos]
	switch {
	case c == '(':
		if err := p.enter(); err != nil {
			return nil, err
		}
		defer p.leave()
		p.pos++
		n, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.src) || p.src[p.pos] != ')' {
			return nil, p.expected("')'")
		}
		p.pos++
		return n, nil
	case c == '"' || c == '\'':
		s, err := p.parseString()
		if err != nil {
			return nil, err
		}
		return &literalNode{span: span{start, p.text(start)}, v: stringValue(s)}, nil
	case isDigit(c):
		return p.parseNumber()
	case c == '{':
		return p.parseObject()
	case c == '[':
		return p.parseArray()
	case isIdentStart(c):
		name := p.ident()
		switch name {
		case "true", "false":
			return &literalNode{span: span{start, name}, v: boolValue(name == "true")}, nil
		case "null":
			return &literalNode{span: span{start, name}, v: nullValue()}, nil
		}
		if root := rootOf(name); root != 0 {
			path, err := p.parsePathSegments(root)
			if err != nil {
				return nil, err
			}
			return &pathNode{span: span{start, p.text(start)}, root: root, gpath: path.GJSON(), whole: len(path.Segments) == 0}, nil
		}
		if p.peekOp("(") {
			return p.parseCall(start, name)
		}
		if hint := wordOpHint(name); hint != "" {
			return nil, p.errAt(start, "unknown name '"+name+"'"+hint)
		}
		return nil, p.errAt(start, "unknown name '"+name+"' (paths start with data, payload or meta; strings need quotes)")
	}
	return nil, p.unexpected("expected a value")
}

// expected reports a missing token at the current position, naming what
// was found instead.
func (p *parser) expected(what string) error {
	if p.pos >= len(p.src) {
		return p.errAt(p.pos, "expected "+what)
	}
	r, _ := utf8.DecodeRuneInString(p.src[p.pos:])
	return p.errAt(p.pos, "expected "+what+", found "+strconv.QuoteRune(r)+wordOpHint(p.src[p.pos:]))
}

func (p *parser) ident() string {
	start := p.pos
	if p.pos < len(p.src) && isIdentStart(p.src[p.pos]) {
		p.pos++
		for p.pos < len(p.src) && isWordByte(p.src[p.pos]) {
			p.pos++
		}
	}
	return p.src[start:p.pos]
}

// parsePathSegments reads .key, [index] and ["key"] segments directly after
// a root name; no space is allowed inside a path.
func (p *parser) parsePathSegments(root Root) (Path, error) {
	path := Path{Root: root}
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case '.':
			p.pos++
			start := p.pos
			for p.pos < len(p.src) && isWordByte(p.src[p.pos]) {
				p.pos++
			}
			if p.pos == start {
				return Path{}, p.expected("a key after '.' (use [\"...\"] for keys with other characters)")
			}
			path.Segments = append(path.Segments, Segment{Key: p.src[start:p.pos]})
		case '[':
			p.pos++
			p.skipSpace()
			if p.pos >= len(p.src) {
				return Path{}, p.expected("an index or a quoted key after '['")
			}
			switch c := p.src[p.pos]; {
			case c == '"' || c == '\'':
				keyPos := p.pos
				key, err := p.parseString()
				if err != nil {
					return Path{}, err
				}
				if key == "" {
					return Path{}, p.errAt(keyPos, "empty key in path")
				}
				path.Segments = append(path.Segments, Segment{Key: key, Quoted: true})
			case isDigit(c):
				start := p.pos
				for p.pos < len(p.src) && isDigit(p.src[p.pos]) {
					p.pos++
				}
				path.Segments = append(path.Segments, Segment{Key: p.src[start:p.pos]})
			default:
				return Path{}, p.expected("an index or a quoted key after '['")
			}
			p.skipSpace()
			if p.pos >= len(p.src) || p.src[p.pos] != ']' {
				return Path{}, p.expected("']'")
			}
			p.pos++
		default:
			return path, nil
		}
	}
	return path, nil
}

func (p *parser) parseCall(start int, name string) (node, error) {
	fn, ok := lookupFunc(name)
	if !ok {
		if hint := wordOpHint(name); hint != "" {
			return nil, p.errAt(start, "unknown function '"+name+"'"+hint)
		}
		return nil, p.errAt(start, "unknown function '"+name+"'"+suggest.DidYouMean(name, funcNames)+
			"; functions: "+strings.Join(funcNames, ", "))
	}
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	p.skipSpace()
	p.pos++ // '('
	var args []node
	p.skipSpace()
	if p.pos < len(p.src) && p.src[p.pos] == ')' {
		p.pos++
	} else {
		for {
			a, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			args = append(args, a)
			p.skipSpace()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.src) && p.src[p.pos] == ')' {
				p.pos++
				break
			}
			return nil, p.expected("',' or ')'")
		}
	}
	if msg := fn.checkArity(len(args)); msg != "" {
		return nil, p.errAt(start, msg)
	}
	n := &callNode{span: span{start, p.text(start)}, fn: fn, args: args, opts: p.opts}
	if fn.name == "delete" && p.deleteAt < 0 {
		p.deleteAt = start
	}
	if fn.prepare != nil {
		if err := fn.prepare(p, n); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (p *parser) parseObject() (node, error) {
	start := p.pos
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	p.pos++ // '{'
	n := &objectNode{}
	seen := map[string]bool{}
	p.skipSpace()
	if p.pos < len(p.src) && p.src[p.pos] == '}' {
		p.pos++
		n.span = span{start, p.text(start)}
		return n, nil
	}
	for {
		p.skipSpace()
		keyPos := p.pos
		var key string
		switch {
		case p.pos < len(p.src) && (p.src[p.pos] == '"' || p.src[p.pos] == '\''):
			k, err := p.parseString()
			if err != nil {
				return nil, err
			}
			key = k
		case p.pos < len(p.src) && isIdentStart(p.src[p.pos]):
			key = p.ident()
		default:
			return nil, p.expected("a key (a string or a name)")
		}
		if seen[key] {
			return nil, p.errAt(keyPos, "duplicate key "+strconv.Quote(key))
		}
		seen[key] = true
		p.skipSpace()
		if p.pos >= len(p.src) || p.src[p.pos] != ':' {
			return nil, p.expected("':'")
		}
		p.pos++
		v, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		n.keys = append(n.keys, string(appendString(nil, key)))
		n.vals = append(n.vals, v)
		p.skipSpace()
		if p.pos < len(p.src) && p.src[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.pos < len(p.src) && p.src[p.pos] == '}' {
			p.pos++
			n.span = span{start, p.text(start)}
			return n, nil
		}
		return nil, p.expected("',' or '}'")
	}
}

func (p *parser) parseArray() (node, error) {
	start := p.pos
	if err := p.enter(); err != nil {
		return nil, err
	}
	defer p.leave()
	p.pos++ // '['
	n := &arrayNode{}
	p.skipSpace()
	if p.pos < len(p.src) && p.src[p.pos] == ']' {
		p.pos++
		n.span = span{start, p.text(start)}
		return n, nil
	}
	for {
		v, err := p.parseExpr()
		if err != nil {
			return nil, err
		}
		n.elems = append(n.elems, v)
		p.skipSpace()
		if p.pos < len(p.src) && p.src[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.pos < len(p.src) && p.src[p.pos] == ']' {
			p.pos++
			n.span = span{start, p.text(start)}
			return n, nil
		}
		return nil, p.expected("',' or ']'")
	}
}

// parseNumber reads a JSON number, with an optional leading minus sign.
func (p *parser) parseNumber() (node, error) {
	start := p.pos
	if p.src[p.pos] == '-' {
		p.pos++
	}
	end, msg := scanNumber(p.src, p.pos)
	if msg != "" {
		return nil, p.errAt(end, msg)
	}
	p.pos = end
	if p.pos < len(p.src) && (isWordByte(p.src[p.pos]) || p.src[p.pos] == '.') {
		return nil, p.unexpected("expected an operator after the number")
	}
	text := p.src[start:p.pos]
	v := numberFromText(text)
	if f, _ := v.Float(); !v.isInt && (f > maxFinite || f < -maxFinite) {
		return nil, p.errAt(start, "number "+text+" is out of range")
	}
	return &literalNode{span: span{start, text}, v: v}, nil
}

const maxFinite = 1.7976931348623157e308

// scanNumber scans the unsigned part of a JSON number starting at i and
// returns its end, or the offset and description of the first problem.
func scanNumber(s string, i int) (int, string) {
	if i >= len(s) || !isDigit(s[i]) {
		return i, "expected a digit"
	}
	if s[i] == '0' {
		i++
		if i < len(s) && isDigit(s[i]) {
			return i, "leading zeros are not allowed in numbers"
		}
	} else {
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i < len(s) && s[i] == '.' {
		i++
		if i >= len(s) || !isDigit(s[i]) {
			return i, "expected a digit after the decimal point"
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || !isDigit(s[i]) {
			return i, "expected a digit in the exponent"
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	return i, ""
}

// isJSONNumber reports whether s is exactly one JSON number.
func isJSONNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	end, msg := scanNumber(s, i)
	return msg == "" && end == len(s)
}

// parseString reads a string quoted with " or ', with JSON escapes (and \'
// in either kind).
func (p *parser) parseString() (string, error) {
	start := p.pos
	q := p.src[p.pos]
	p.pos++
	var b []byte
	seg := p.pos
	for {
		if p.pos >= len(p.src) {
			return "", p.errAt(start, "unterminated string")
		}
		c := p.src[p.pos]
		switch {
		case c == q:
			var s string
			if b == nil {
				s = p.src[seg:p.pos]
			} else {
				s = string(append(b, p.src[seg:p.pos]...))
			}
			p.pos++
			return s, nil
		case c < 0x20:
			return "", p.errAt(p.pos, "control character in string (write \\n, \\t or \\u00XX)")
		case c == '\\':
			b = append(b, p.src[seg:p.pos]...)
			escPos := p.pos
			p.pos++
			if p.pos >= len(p.src) {
				return "", p.errAt(start, "unterminated string")
			}
			e := p.src[p.pos]
			p.pos++
			switch e {
			case '"', '\\', '/', '\'':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := p.hex4()
				if !ok {
					return "", p.errAt(escPos, "invalid \\u escape, expected 4 hex digits")
				}
				if r >= 0xD800 && r < 0xDC00 && strings.HasPrefix(p.src[p.pos:], "\\u") {
					save := p.pos
					p.pos += 2
					if lo, ok := p.hex4(); ok && lo >= 0xDC00 && lo < 0xE000 {
						r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
					} else {
						p.pos = save
					}
				}
				b = utf8.AppendRune(b, r) // lone surrogates become U+FFFD
			default:
				return "", p.errAt(escPos, "invalid escape '\\"+string(rune(e))+"' in string")
			}
			seg = p.pos
		default:
			p.pos++
		}
	}
}

func (p *parser) hex4() (rune, bool) {
	if p.pos+4 > len(p.src) {
		return 0, false
	}
	v, err := strconv.ParseUint(p.src[p.pos:p.pos+4], 16, 32)
	if err != nil || strings.ContainsAny(p.src[p.pos:p.pos+4], "+-_") {
		return 0, false
	}
	p.pos += 4
	return rune(v), true
}

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c == '_' || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isWordByte(c byte) bool   { return isIdentStart(c) || isDigit(c) }
