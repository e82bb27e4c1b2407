package component

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func noopBuild(context.Context, *Env, *Config) (Component, error) { return Component{}, nil }

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true},
		{"64KiB", 64 << 10, true},
		{"16 MiB", 16 << 20, true},
		{"1GB", 1e9, true},
		{"1_000", 1000, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"-1", 0, false},
		{"1.5MiB", 0, false},
		{"99999999999999GiB", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseByteSize(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestExpandEnv(t *testing.T) {
	t.Setenv("FLOWRUN_TEST_A", "x")
	t.Setenv("FLOWRUN_TEST_EMPTY", "")
	for _, tc := range []struct{ in, want, msg string }{
		{"plain", "plain", ""},
		{"${FLOWRUN_TEST_A}/${FLOWRUN_TEST_A}", "x/x", ""},
		{"$FLOWRUN_TEST_A", "$FLOWRUN_TEST_A", ""}, // only the braced form
		{"a${FLOWRUN_TEST_EMPTY}b", "ab", ""},
		{"${FLOWRUN_TEST_UNSET_VARIABLE}", "", "environment variable FLOWRUN_TEST_UNSET_VARIABLE is not set"},
		{"${1X}", "", "invalid environment variable name \"1X\""},
		{"${}", "", "invalid environment variable name \"\""},
		{"$${FLOWRUN_TEST_UNSET_VARIABLE}", "${FLOWRUN_TEST_UNSET_VARIABLE}", ""}, // $$ escapes
		{"a$${x}${FLOWRUN_TEST_A}", "a${x}x", ""},
	} {
		got, err := ExpandEnv(tc.in)
		if tc.msg != "" {
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !errors.Is(err, ErrEnv) {
				t.Errorf("ExpandEnv(%q): error %v, want ErrEnv containing %q", tc.in, err, tc.msg)
			}
			continue
		}
		if got != tc.want || err != nil {
			t.Errorf("ExpandEnv(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// A condition on an option the spec does not have is a programming error
// caught at registration.
func TestRegisterCheckedConditions(t *testing.T) {
	r := NewRegistry()
	for _, f := range []Field{
		{Name: "dir", Type: TypeString, Required: true, RequiredWhen: &When{Field: "nope", Values: []string{"x"}}},
		{Name: "dir", Type: TypeString, OnlyWhen: &When{Field: "dir", Values: []string{"x"}}},
		{Name: "dir", Type: TypeString, OnlyWhen: &When{Field: "mode"}},
	} {
		err := r.Register(Spec{Type: "t", Build: noopBuild, Fields: []Field{f, {Name: "mode", Type: TypeString}}})
		if err == nil || !strings.Contains(err.Error(), "condition") {
			t.Errorf("register with condition %+v: %v, want refused", f.RequiredWhen, err)
		}
	}
}

// Bounds are checked when a value is parsed, with a message naming the
// option and the range; a bound that does not parse, or a default outside
// the bounds, is refused at registration.
func TestFieldBounds(t *testing.T) {
	r := NewRegistry()
	for _, tc := range []struct {
		f    Field
		text string
		want any    // nil: refused
		msg  string // part of the refusal
	}{
		{Field{Name: "max_group", Type: TypeInt, Min: "1"}, "-3", nil, "max_group is -3, out of range: must be at least 1"},
		{Field{Name: "max_group", Type: TypeInt, Min: "1"}, "0", nil, "a limit cannot be switched off"},
		{Field{Name: "max_group", Type: TypeInt, Min: "1"}, "1", 1, ""},
		{Field{Name: "n", Type: TypeInt, Min: "1", Max: "10"}, "11", nil, "n is 11, out of range: must be 1 to 10"},
		{Field{Name: "n", Type: TypeInt, Min: "1", Max: "10"}, "10", 10, ""},
		{Field{Name: "size", Type: TypeByteSize, Min: "1", Max: "1GiB"}, "2GiB", nil, "size is 2GiB, out of range: must be 1 to 1GiB"},
		{Field{Name: "size", Type: TypeByteSize, Min: "1", Max: "1GiB"}, "1KiB", int64(1024), ""},
		{Field{Name: "wait", Type: TypeDuration, Max: "1s"}, "2s", nil, "must be at most 1s"},
		{Field{Name: "wait", Type: TypeDuration, Min: "1ms"}, "0s", nil, "must be at least 1ms"},
		{Field{Name: "wait", Type: TypeDuration, Min: "1ms"}, "5ms", 5 * time.Millisecond, ""},
	} {
		got, err := r.ParseValue(&tc.f, tc.text, false, "")
		if tc.want == nil {
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("%s = %s: %v, %v; want refused with %q", tc.f.Name, tc.text, got, err, tc.msg)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s = %s: %v, %v; want %v", tc.f.Name, tc.text, got, err, tc.want)
		}
	}
	for _, f := range []Field{
		{Name: "a", Type: TypeInt, Min: "x"},
		{Name: "a", Type: TypeInt, Min: "5", Max: "1"},
		{Name: "a", Type: TypeString, Min: "1"},
		{Name: "a", Type: TypeInt, Min: "1", Default: "0"},
	} {
		if err := r.Register(Spec{Type: "t" + f.Min + f.Max + f.Default + string(f.Type), Build: noopBuild, Fields: []Field{f}}); !errors.Is(err, ErrBadSpec) {
			t.Errorf("register field %+v: %v, want ErrBadSpec", f, err)
		}
	}
}

func TestEnvUseUnknownNode(t *testing.T) {
	env := &Env{}
	if _, _, err := env.Use("store"); !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("Use of a node not built: %v, want ErrNodeUnavailable", err)
	}
}

// Resources are keyed by identity: two keys of one type hold two values,
// and Shared creates a value once.
func TestResources(t *testing.T) {
	res := NewResources()
	a, b := NewKey[*int]("a"), NewKey[*int]("a")
	made := 0
	newInt := func() *int { made++; return new(int) }
	x := a.Shared(res, newInt)
	if y := a.Shared(res, newInt); y != x || made != 1 {
		t.Fatalf("Shared made %d values, returned %p then %p", made, x, y)
	}
	if _, ok := b.Get(res); ok {
		t.Fatal("a value stored under one key is found under another key of the same name")
	}
	z := new(int)
	b.Put(res, z)
	if got, _ := b.Get(res); got != z {
		t.Fatal("Get does not return what Put stored")
	}
	if got, _ := a.Get(NewResources()); got != nil {
		t.Fatal("resources are shared between Resources values")
	}
}
