package kv

import (
	"errors"
	"strings"
	"testing"
)

func TestCanonical(t *testing.T) {
	tests := []struct {
		in, want string
		err      error
	}{
		{`1`, `1`, nil},
		{` -0.50e+3 `, `-0.50e+3`, nil},
		{`"a\/b\u00e9\ud83d\ude00"`, `"a/bé😀"`, nil},
		{`"\u0000\u001f\u007f"`, `"\u0000\u001f` + "\x7f" + `"`, nil},
		{"\"bad \xff byte\"", `"bad ` + "\ufffd" + ` byte"`, nil},
		{`"lone \ud800"`, `"lone ` + "\ufffd" + `"`, nil},
		{`{"b":1,"a":{"z":[{"y":1,"x":2}],"\u0061a":0}}`, `{"a":{"aa":0,"z":[{"x":2,"y":1}]},"b":1}`, nil},
		{`{"a":1,"a":2}`, `{"a":2}`, nil},
		{`{"é":1,"z":2,"Z":3}`, `{"Z":3,"z":2,"é":1}`, nil},
		{"[ 1 ,\n\t2 ]", `[1,2]`, nil},
		{`[]`, `[]`, nil},
		{`{}`, `{}`, nil},
		{`"[{"`, `"[{"`, nil},
		{`["\"[["]`, `["\"[["]`, nil},
		{`{"a":}`, ``, ErrInvalidJSON},
		{`01`, ``, ErrInvalidJSON},
		{`1 2`, ``, ErrInvalidJSON},
		{`NaN`, ``, ErrInvalidJSON},
		{``, ``, ErrInvalidJSON},
		{strings.Repeat(`{"a":`, MaxDepth+1) + `1` + strings.Repeat(`}`, MaxDepth+1), ``, ErrInvalidJSON},
		{strings.Repeat(`[`, 1<<20), ``, ErrInvalidJSON},
	}
	for _, tt := range tests {
		got, err := appendCanonical(nil, []byte(tt.in))
		if !errors.Is(err, tt.err) {
			t.Errorf("canonical(%.40q) error = %v, want %v", tt.in, err, tt.err)
			continue
		}
		if err == nil && string(got) != tt.want {
			t.Errorf("canonical(%q) = %s, want %s", tt.in, got, tt.want)
		}
		if err == nil {
			again, err := appendCanonical(nil, got)
			if err != nil || string(again) != string(got) {
				t.Errorf("canonical is not idempotent on %s: %s, %v", got, again, err)
			}
		}
	}
}

func TestLayoutIsolation(t *testing.T) {
	spaces := []string{"", "a", "ab", "a\x00", "b", strings.Repeat("n", 200), strings.Repeat("n", 127), strings.Repeat("n", 128)}
	for _, ns := range spaces {
		l := newLayout(ns)
		for _, other := range spaces {
			if other == ns {
				continue
			}
			o := newLayout(other)
			for _, k := range []string{"", "a", "\x00", "\xff\xff", "ab"} {
				dk := o.dataKey(nil, k)
				if string(dk) >= string(l.data) && string(dk) < string(l.dataEnd) {
					t.Errorf("key %q of namespace %q falls in namespace %q's range", k, other, ns)
				}
				start, end := l.prefixRange(k)
				if string(dk) >= string(start) && string(dk) < string(end) {
					t.Errorf("prefix %q of namespace %q reaches namespace %q's key %q", k, ns, other, k)
				}
			}
		}
	}
}

func BenchmarkCanonical(b *testing.B) {
	raw := []byte(`{"user":{"name":"Ada","roles":["admin","dev"],"id":12345},"tags":{"z":1,"a":2},"score":3.25,"text":"hello \"world\" é"}`)
	b.SetBytes(int64(len(raw)))
	var dst []byte
	for b.Loop() {
		var err error
		dst, err = appendCanonical(dst[:0], raw)
		if err != nil {
			b.Fatal(err)
		}
	}
}
