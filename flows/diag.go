package flows

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/flowrun/flowrun/internal/suggest"
)

// ErrInvalidFlow is wrapped by the error Load returns when a flow file has
// at least one Error-severity diagnostic.
var ErrInvalidFlow = errors.New("invalid flow")

// Severity says whether a Diagnostic stops a flow from loading.
type Severity int

// Severities.
const (
	// Error diagnostics make Load fail.
	Error Severity = iota
	// Warning diagnostics point at likely mistakes that do not stop a flow.
	Warning
)

// String returns "error" or "warning".
func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// MarshalText encodes the severity as its word, "error" or "warning": the
// form `flowrun validate --json` prints.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes "error" or "warning".
func (s *Severity) UnmarshalText(text []byte) error {
	switch string(text) {
	case "error":
		*s = Error
	case "warning":
		*s = Warning
	default:
		return fmt.Errorf("unknown severity %q (want error or warning)", text)
	}
	return nil
}

// Diagnostic is one problem found in a flow file, located by file, line and
// column (1-based; 0 when unknown) and by the dotted path of the field
// concerned, such as "connectors.store.dir".
//
// Its JSON form, printed by `flowrun validate --json` one object per line,
// is stable: every field is always present, with these lower-case names:
//
//	{"file": "flow.yaml", "line": 4, "col": 3, "field": "connectors.store",
//	 "severity": "warning", "message": "..."}
//
// line and col are 0 when unknown, field is "" when the diagnostic concerns
// the whole file, and severity is "error" or "warning".
type Diagnostic struct {
	File     string   `json:"file"`
	Line     int      `json:"line"`
	Col      int      `json:"col"`
	Field    string   `json:"field"`
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
}

// String formats the diagnostic as
// "file:line:col: error: field: message", the form compilers use so that
// editors and terminals can jump to it. Unknown positions and an empty field
// are left out.
func (d Diagnostic) String() string {
	var b strings.Builder
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d", d.Line)
		if d.Col > 0 {
			fmt.Fprintf(&b, ":%d", d.Col)
		}
	}
	b.WriteString(": ")
	b.WriteString(d.Severity.String())
	b.WriteString(": ")
	if d.Field != "" {
		b.WriteString(d.Field)
		b.WriteString(": ")
	}
	b.WriteString(d.Message)
	return b.String()
}

// HasErrors reports whether any of diags has Error severity.
func HasErrors(diags []Diagnostic) bool {
	for _, d := range diags {
		if d.Severity == Error {
			return true
		}
	}
	return false
}

// invalidFlowError is the error Load returns for a flow with errors: it
// wraps ErrInvalidFlow and lists the error diagnostics.
type invalidFlowError struct {
	file  string
	diags []Diagnostic
}

func (e *invalidFlowError) Error() string {
	var b strings.Builder
	n := 0
	for _, d := range e.diags {
		if d.Severity == Error {
			n++
		}
	}
	fmt.Fprintf(&b, "%s: %v (%d error", e.file, ErrInvalidFlow, n)
	if n != 1 {
		b.WriteString("s")
	}
	b.WriteString(")")
	for _, d := range e.diags {
		if d.Severity == Error {
			b.WriteString("\n")
			b.WriteString(d.String())
		}
	}
	return b.String()
}

func (e *invalidFlowError) Unwrap() error { return ErrInvalidFlow }

// sortDiagnostics orders diagnostics by position, keeping the order in
// which they were found for equal positions.
func sortDiagnostics(diags []Diagnostic) {
	sort.SliceStable(diags, func(i, j int) bool {
		if diags[i].Line != diags[j].Line {
			return diags[i].Line < diags[j].Line
		}
		return diags[i].Col < diags[j].Col
	})
}

// didYouMean returns ` (did you mean "x"?)` for the candidate closest to
// s, or "" when none is close enough to be a likely typo.
func didYouMean(s string, candidates []string) string { return suggest.DidYouMean(s, candidates) }
