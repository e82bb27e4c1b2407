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

// TestCanonicalFastPath checks that canonical returns its input unchanged
// exactly when it is canonical already, and otherwise what appendCanonical
// returns.
func TestCanonicalFastPath(t *testing.T) {
	tests := []struct {
		in    string
		alias bool // canonical already: returned as is
	}{
		{`"plain"`, true},
		{`"tab\tquote\"back\\slash\n"`, true},
		{`"é😀"`, true},
		{`-0.5e+3`, true},
		{`0`, true},
		{`true`, true},
		{`null`, true},
		{`[1,"a",{"a":[],"b":{}}]`, true},
		{`{"a":1,"b":2}`, true},
		{`{"b":1,"a":2}`, false},
		{`{"a":1,"a":2}`, false},
		{`{"\u0061":1}`, false},
		{`{"a\"b":1}`, false},
		{`"\/"`, false},
		{`"\u00e9"`, false},
		{"\"\x7f\"", true},
		{"\"\x01\"", false},
		{"\"bad \xff\"", false},
		{` 1`, false},
		{`1 `, false},
		{`[1, 2]`, false},
		{`01`, false},
		{`1.`, false},
		{`-`, false},
		{`1e`, false},
		{`[1,]`, false},
		{`{"a"}`, false},
		{`tru`, false},
		{`"open`, false},
		{``, false},
		// Long enough for plainWords to skip whole words before and after
		// the byte that matters.
		{`"` + strings.Repeat("abcdefgh", 12) + `"`, true},
		{`"` + strings.Repeat("a", 37) + `\"` + strings.Repeat("b", 40) + `"`, true},
		{`"` + strings.Repeat("a", 40) + "\x7f" + strings.Repeat("b", 40) + `"`, true},
		{`"` + strings.Repeat("a", 41) + "é" + strings.Repeat("b", 40) + `"`, true},
		{`"` + strings.Repeat("a", 42) + "\x01" + strings.Repeat("b", 40) + `"`, false},
		{`"` + strings.Repeat("a", 43) + "\xff" + strings.Repeat("b", 40) + `"`, false},
		{`"` + strings.Repeat("a", 44) + `\u0041` + strings.Repeat("b", 40) + `"`, false},
		{`"` + strings.Repeat("a", 64), false}, // never closed
		{strings.Repeat(`[`, MaxDepth) + strings.Repeat(`]`, MaxDepth), true},
		{strings.Repeat(`[`, MaxDepth+1) + strings.Repeat(`]`, MaxDepth+1), false},
	}
	for _, tt := range tests {
		raw := []byte(tt.in)
		got, err := canonical(raw)
		want, wantErr := appendCanonical(nil, raw)
		if !errors.Is(err, wantErr) && (err == nil) != (wantErr == nil) || string(got) != string(want) {
			t.Errorf("canonical(%.40q) = %s, %v; appendCanonical gives %s, %v", tt.in, got, err, want, wantErr)
		}
		aliased := len(got) > 0 && &got[0] == &raw[0]
		if aliased != tt.alias {
			t.Errorf("canonical(%.40q) returned its input: %v, want %v", tt.in, aliased, tt.alias)
		}
	}
}

// FuzzCanonical checks that the fast path never disagrees with the general
// one.
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5e-3,"x\\n"],"b":null}`, `"\u00e9"`, `{"b":1,"a":2}`, `[true,false]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		got, err := canonical(raw)
		want, wantErr := appendCanonical(nil, raw)
		if (err == nil) != (wantErr == nil) || string(got) != string(want) {
			t.Fatalf("canonical(%q) = %q, %v; appendCanonical gives %q, %v", raw, got, err, want, wantErr)
		}
	})
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

// TestPlainWords compares plainWords with a byte at a time reading of the
// same rule, for every byte value that matters at every position of a
// word.
func TestPlainWords(t *testing.T) {
	plain := func(c byte) bool { return c >= 0x20 && c < 0x80 && c != '"' && c != '\\' }
	want := func(b []byte) int {
		n := 0
		for n+8 <= len(b) {
			for _, c := range b[n : n+8] {
				if !plain(c) {
					return n
				}
			}
			n += 8
		}
		return n
	}
	for _, c := range []byte{0x00, 0x01, 0x1f, 0x20, '"', '\\', '!', '#', '[', ']', 0x7e, 0x7f, 0x80, 0xc3, 0xff} {
		for length := range 25 {
			for pos := range length {
				b := []byte(strings.Repeat("x", length))
				b[pos] = c
				if got, w := plainWords(b), want(b); got != w {
					t.Errorf("plainWords(%q) = %d, want %d", b, got, w)
				}
			}
		}
	}
}

// TestScanCanonicalStringPlainBytes checks strings whose plain bytes end
// at every position around a word boundary, followed by each kind of byte
// that ends a run of plain bytes.
func TestScanCanonicalStringPlainBytes(t *testing.T) {
	for n := range 40 {
		plain := strings.Repeat("a", n)
		for _, tc := range []struct {
			in   string
			want bool
		}{
			{`"` + plain + `"`, true},
			{`"` + plain + `\n"`, true},
			{`"` + plain + "é\"", true},
			{`"` + plain + `\u0041"`, false},
			{`"` + plain + "\x01\"", false},
			{`"` + plain + "\xff\"", false},
			{`"` + plain, false},
		} {
			got, ok := scanCanonicalString([]byte(tc.in + `,1`))
			if ok != tc.want || ok && got != len(tc.in) {
				t.Fatalf("scanCanonicalString(%q) = %d, %v; want %d, %v", tc.in, got, ok, len(tc.in), tc.want)
			}
		}
	}
}
