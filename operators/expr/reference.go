package expr

import (
	"strings"
	"time"
)

// The examples of the reference are evaluated against exampleEvent with
// the clock at exampleNow; docs_test.go checks each result.
var (
	exampleEvent = `{"data":{"user":{"name":" Ann ","id":42},"tags":["red","blue"],"count":3,"ts":1767323045678}}`
	exampleNow   = time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC)
)

// functionReference renders the table of functions as Markdown, one table
// per group, for docs/operators.md.
func functionReference() string {
	var b strings.Builder
	b.WriteString("Examples read the event `" + exampleEvent + "` with the clock at " +
		exampleNow.Format("2006-01-02T15:04:05.000Z07:00") + " (`now()` is " +
		itoa(exampleNow.UnixMilli()) + ").\n")
	for _, group := range []string{"values", "strings", "time"} {
		b.WriteString("\n#### " + strings.ToUpper(group[:1]) + group[1:] + "\n\n")
		b.WriteString("| Function | Arguments | Result | Description | Example |\n")
		b.WriteString("|----------|-----------|--------|-------------|---------|\n")
		for i := range funcTable {
			f := &funcTable[i]
			if f.group != group {
				continue
			}
			var args []string
			for j, p := range f.params {
				a := "`" + p.name + "` " + p.kinds.names(" or ", false)
				if j >= f.min {
					a += " (optional)"
				}
				if f.variadic && j == len(f.params)-1 {
					a += ", repeated"
				}
				args = append(args, a)
			}
			argText := strings.Join(args, "; ")
			if argText == "" {
				argText = "—"
			}
			example := "—"
			if f.example != "" {
				example = "`" + f.example + "` → `" + f.want + "`"
			}
			b.WriteString("| `" + f.signature() + "` | " + cell(argText) + " | " + f.result + " | " +
				cell(f.doc) + " | " + cell(example) + " |\n")
		}
	}
	return b.String()
}

// cell escapes the pipes of a Markdown table cell.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func itoa(i int64) string { return string(intValue(i).AppendJSON(nil)) }
