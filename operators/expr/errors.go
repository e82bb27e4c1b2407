package expr

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Errors reported by Parse and by evaluation. Parse errors are
// *SyntaxError values wrapping ErrSyntax; evaluation errors are *EvalError
// values wrapping ErrEval and, when one applies, a more specific sentinel.
var (
	// ErrSyntax reports an expression that does not parse.
	ErrSyntax = errors.New("syntax error")
	// ErrEval reports any failure while evaluating an expression.
	ErrEval = errors.New("evaluation error")
	// ErrType reports an operand or argument of the wrong type, such as
	// comparing a string with a number or adding an object.
	ErrType = errors.New("type mismatch")
	// ErrMissing reports a missing value (a path that does not exist) used
	// where a value is required, such as in a concatenation.
	ErrMissing = errors.New("missing value")
	// ErrArithmetic reports a division by zero or a result that is not a
	// finite number.
	ErrArithmetic = errors.New("arithmetic error")
	// ErrNotBoolean reports a condition (EvalBool, &&, ||, !) whose value is
	// not true or false.
	ErrNotBoolean = errors.New("not a boolean")
	// ErrTooLarge reports a function result (string or array) larger than
	// Options.MaxStringBytes.
	ErrTooLarge = errors.New("result too large")
	// ErrInvalidOptions reports Options that Validate rejects.
	ErrInvalidOptions = errors.New("invalid expression options")
)

// position locates a byte offset of src as a 1-based line and column,
// counting characters (not bytes) within the line.
func position(src string, off int) (line, col int) {
	if off > len(src) {
		off = len(src)
	}
	line = 1 + strings.Count(src[:off], "\n")
	start := strings.LastIndexByte(src[:off], '\n') + 1
	return line, 1 + utf8.RuneCountInString(src[start:off])
}

// where renders a position as "column 14", or "line 2, column 3" for
// expressions spanning several lines.
func where(src string, line, col int) string {
	if strings.Contains(src, "\n") {
		return "line " + strconv.Itoa(line) + ", column " + strconv.Itoa(col)
	}
	return "column " + strconv.Itoa(col)
}

// SyntaxError is the error Parse returns for an invalid expression. It
// wraps ErrSyntax.
type SyntaxError struct {
	// Src is the expression that failed to parse.
	Src string
	// Offset is the byte offset of the problem in Src.
	Offset int
	// Line and Column locate the problem, 1-based; Column counts
	// characters within the line.
	Line, Column int
	// Msg describes the problem, such as "expected ')'".
	Msg string
}

// Error returns the message and position, such as
// "expected ')' at column 14".
func (e *SyntaxError) Error() string {
	return e.Msg + " at " + where(e.Src, e.Line, e.Column)
}

// Unwrap returns ErrSyntax.
func (e *SyntaxError) Unwrap() error { return ErrSyntax }

// Caret returns the offending source line with a caret under the problem
// and the message after it:
//
//	data.x == (1 + 2
//	                ^ expected ')'
func (e *SyntaxError) Caret() string {
	return caret(e.Src, e.Offset, e.Msg)
}

func caret(src string, off int, msg string) string {
	if off > len(src) {
		off = len(src)
	}
	start := strings.LastIndexByte(src[:off], '\n') + 1
	end := strings.IndexByte(src[off:], '\n')
	if end < 0 {
		end = len(src)
	} else {
		end += off
	}
	var b strings.Builder
	b.WriteString(src[start:end])
	b.WriteByte('\n')
	for _, r := range src[start:off] {
		if r == '\t' {
			b.WriteByte('\t')
		} else {
			b.WriteByte(' ')
		}
	}
	b.WriteString("^ ")
	b.WriteString(msg)
	return b.String()
}

// EvalError is the error Eval and EvalBool return when an expression cannot
// be evaluated against an event. It wraps ErrEval and Err.
type EvalError struct {
	// Src is the expression being evaluated.
	Src string
	// Offset is the byte offset in Src of the operator or function that
	// failed.
	Offset int
	// Line and Column locate Offset, 1-based.
	Line, Column int
	// Msg describes the problem, naming the operands involved.
	Msg string
	// Err is the specific sentinel (ErrType, ErrMissing, ErrArithmetic,
	// ErrNotBoolean), or nil.
	Err error
}

// Error returns the message and position, such as
// "cannot compare data.count (a string) with 3 (a number) at column 12".
func (e *EvalError) Error() string {
	return e.Msg + " at " + where(e.Src, e.Line, e.Column)
}

// Unwrap returns ErrEval and the specific sentinel.
func (e *EvalError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrEval}
	}
	return []error{ErrEval, e.Err}
}

// Caret renders the error like SyntaxError.Caret.
func (e *EvalError) Caret() string {
	return caret(e.Src, e.Offset, e.Msg)
}

// evalErr builds an EvalError at offset off; Expr fills in the source and
// position before returning it.
func evalErr(off int, sentinel error, msg string) error {
	return &EvalError{Offset: off, Msg: msg, Err: sentinel}
}
