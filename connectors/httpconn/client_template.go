package httpconn

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrTemplate reports a URL or header template that cannot be rendered for
// an event: a placeholder whose value is missing, not a string, number or
// boolean, or not allowed where it stands.
var ErrTemplate = errors.New("template cannot be rendered")

// escaping says how a placeholder's value is written into the result.
type escaping uint8

const (
	escHeader escaping = iota // as is; control characters refused
	escPath                   // url.PathEscape; "." and ".." refused
	escQuery                  // url.QueryEscape
)

// segment is a literal text or a placeholder of a template.
type segment struct {
	lit  string
	expr *expr.Expr // nil for a literal
	esc  escaping
}

// template is a parsed URL or header value: literal text and {EXPR}
// placeholders.
type template struct {
	src  string
	segs []segment
}

// parseTemplate parses src; url selects URL escaping (path up to the
// first literal '?', query after it) instead of header values.
func parseTemplate(src string, isURL bool, eo expr.Options) (*template, error) {
	t := &template{src: src}
	var lit strings.Builder
	esc := escHeader
	if isURL {
		esc = escPath
	}
	flush := func() {
		if lit.Len() > 0 {
			t.segs = append(t.segs, segment{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '{' && strings.HasPrefix(src[i:], "{{"):
			lit.WriteByte('{')
			i += 2
		case c == '}' && strings.HasPrefix(src[i:], "}}"):
			lit.WriteByte('}')
			i += 2
		case c == '}':
			return nil, fmt.Errorf("column %d: a lone '}' (write '}}' for a literal brace)", i+1)
		case c == '{':
			end, err := placeholderEnd(src, i)
			if err != nil {
				return nil, err
			}
			e, err := expr.ParseWith(strings.TrimSpace(src[i+1:end]), eo)
			if err != nil {
				return nil, fmt.Errorf("placeholder at column %d: %w", i+1, err)
			}
			flush()
			t.segs = append(t.segs, segment{expr: e, esc: esc})
			i = end + 1
		default:
			if isURL && (c == '?' || c == '#') {
				esc = escQuery
			}
			lit.WriteByte(c)
			i++
		}
	}
	flush()
	return t, nil
}

// placeholderEnd returns the index of the '}' closing the placeholder
// opened at src[start], skipping braces inside quoted strings and nested
// object literals.
func placeholderEnd(src string, start int) (int, error) {
	depth := 0
	for i := start; i < len(src); i++ {
		switch c := src[i]; c {
		case '"', '\'':
			for i++; i < len(src) && src[i] != c; i++ {
				if src[i] == '\\' {
					i++
				}
			}
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				if i == start+1 {
					return 0, fmt.Errorf("column %d: an empty placeholder {} (write '{{}}' for literal braces)", start+1)
				}
				return i, nil
			}
		}
	}
	return 0, fmt.Errorf("column %d: placeholder is not closed by '}'", start+1)
}

// literal reports whether t has no placeholder.
func (t *template) literal() bool {
	for _, s := range t.segs {
		if s.expr != nil {
			return false
		}
	}
	return true
}

// render writes t for ev. Errors wrap ErrTemplate.
func (t *template) render(ev pipeline.Event) (string, error) {
	if len(t.segs) == 1 && t.segs[0].expr == nil {
		return t.segs[0].lit, nil
	}
	var b strings.Builder
	for _, s := range t.segs {
		if s.expr == nil {
			b.WriteString(s.lit)
			continue
		}
		v, err := s.expr.Eval(ev)
		if err != nil {
			return "", fmt.Errorf("{%s}: %w: %w", s.expr, ErrTemplate, err)
		}
		var text string
		switch v.Kind() {
		case expr.String:
			text, _ = v.Str()
		case expr.Number, expr.Bool:
			text = v.String()
		case expr.Missing:
			return "", fmt.Errorf("{%s}: %w: the value is missing", s.expr, ErrTemplate)
		default:
			return "", fmt.Errorf("{%s}: %w: the value is %s, want a string, number or boolean", s.expr, ErrTemplate, v.Kind())
		}
		switch s.esc {
		case escPath:
			if text == "." || text == ".." || text == "" {
				return "", fmt.Errorf("{%s}: %w: the value %q cannot be a path segment", s.expr, ErrTemplate, text)
			}
			b.WriteString(url.PathEscape(text))
		case escQuery:
			b.WriteString(url.QueryEscape(text))
		default:
			if !httpguts.ValidHeaderFieldValue(text) {
				return "", fmt.Errorf("{%s}: %w: the value holds a control character", s.expr, ErrTemplate)
			}
			b.WriteString(text)
		}
	}
	return b.String(), nil
}

// urlTemplate is a parsed ClientOptions.URL with its fixed scheme and host.
type urlTemplate struct {
	*template
	scheme, host string
}

// parseURLTemplate parses a URL template and checks that its scheme and
// host (with port) are literal: placeholders may stand only after the
// authority, so no event can redirect a request to another server.
func parseURLTemplate(src string, eo expr.Options) (*urlTemplate, error) {
	t, err := parseTemplate(src, true, eo)
	if err != nil {
		return nil, err
	}
	// The literal text before the first placeholder must hold the whole
	// scheme://host[:port] and the character ending it.
	prefix := ""
	if len(t.segs) > 0 && t.segs[0].expr == nil {
		prefix = t.segs[0].lit
	}
	if t.literal() {
		prefix += "/"
	}
	u, err := url.Parse(prefix)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", src, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: the URL must start with http:// or https:// (placeholders cannot set the scheme)", src)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q: the URL has no host (placeholders cannot set the host)", src)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%q: credentials in the URL are refused (use basic_auth or bearer_token)", src)
	}
	authority := strings.TrimPrefix(prefix, u.Scheme+"://")
	if !strings.ContainsAny(authority, "/?#") {
		return nil, fmt.Errorf("%q: a placeholder may not stand in the scheme or host: end the host with '/' before the first placeholder", src)
	}
	return &urlTemplate{template: t, scheme: u.Scheme, host: u.Host}, nil
}

// render renders the URL for ev and checks, as a second line of defence
// behind the escaping, that it kept the configured scheme and host.
func (t *urlTemplate) render(ev pipeline.Event) (*url.URL, error) {
	s, err := t.template.render(ev)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	if u.Scheme != t.scheme || u.Host != t.host {
		return nil, fmt.Errorf("%w: the URL %s/... does not keep the configured %s://%s", ErrTemplate, u.Scheme+"://"+u.Host, t.scheme, t.host)
	}
	return u, nil
}
