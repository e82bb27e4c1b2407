package component

import (
	"fmt"
	"strings"
)

// Markdown renders the reference of every registered component: connectors
// first, then operators, each with its options table.
func (r *Registry) Markdown() string {
	var b strings.Builder
	b.WriteString("## Connectors\n\n")
	for _, t := range r.ConnectorTypes() {
		r.specs[t].markdown(&b)
	}
	b.WriteString("## Operators\n\n")
	for _, t := range r.Types(KindOperator) {
		r.specs[t].markdown(&b)
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func (s *Spec) markdown(b *strings.Builder) {
	kind := string(s.Kind)
	if s.KindOf != nil {
		kind = "source or sink, by options"
		if s.KindDoc != "" {
			kind = s.KindDoc
		}
	}
	fmt.Fprintf(b, "### `%s` (%s)\n\n", s.Type, kind)
	if s.Summary != "" {
		b.WriteString(strings.TrimSpace(s.Summary))
		b.WriteString("\n\n")
	}
	if s.Kind != KindOperator {
		ports := s.PortsDoc
		if ports == "" {
			ps := s.PortsFor(NewConfig("", s.Type, nil))
			if len(ps) == 0 {
				ports = "none (sink)"
			} else {
				ports = "`" + strings.Join(ps, "`, `") + "`"
			}
		}
		fmt.Fprintf(b, "Output ports: %s.\n\n", ports)
	} else if s.PortsDoc != "" {
		fmt.Fprintf(b, "Output ports: %s.\n\n", s.PortsDoc)
	}
	if s.OnePerFlow != "" {
		b.WriteString("At most one per flow.\n\n")
	}
	if s.Shorthand != "" {
		fmt.Fprintf(b, "Shorthand: `%s: VALUE` sets `%s`.\n\n", s.Type, s.Shorthand)
	}
	if len(s.Fields) == 0 && s.Extra == nil {
		b.WriteString("No options.\n\n")
		return
	}
	b.WriteString("| Option | Type | Required | Default | Description |\n")
	b.WriteString("|---|---|---|---|---|\n")
	rows := append([]Field(nil), s.Fields...)
	if s.Extra != nil {
		rows = append(rows, *s.Extra)
	}
	for _, f := range rows {
		name := "`" + f.Name + "`"
		if len(f.Aliases) > 0 {
			name += " (alias `" + strings.Join(f.Aliases, "`, `") + "`)"
		}
		typ := string(f.Type)
		if f.Type == TypeEnum {
			typ = "`" + strings.Join(f.Enum, "` \\| `") + "`"
		}
		if f.Type == TypeNode {
			typ = "name of a `" + f.NodeType + "` connector"
		}
		req := "no"
		switch {
		case f.Required && f.RequiredWhen != nil:
			req = "if " + f.RequiredWhen.markdown()
		case f.Required:
			req = "yes"
		}
		doc := f.Doc
		if r := f.RangeText(); r != "" {
			doc += " Range: " + r + "."
		}
		if f.Verbatim {
			doc += " Taken as written: `${NAME}` is not replaced."
		}
		if f.OnlyWhen != nil {
			doc += " Only with " + f.OnlyWhen.markdown() + "."
		}
		def := ""
		if f.Default != "" {
			def = "`" + f.Default + "`"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", name, typ, req, def, strings.ReplaceAll(doc, "|", "\\|"))
	}
	b.WriteString("\n")
}
