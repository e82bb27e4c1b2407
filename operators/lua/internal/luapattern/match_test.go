package luapattern

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/yuin/gopher-lua/pm"
)

// all returns every match of p in src from offset, as Next produces them.
func all(t *testing.T, p string, src string, offset int) ([]*MatchData, error) {
	t.Helper()
	pat, err := Compile(p)
	if err != nil {
		return nil, err
	}
	var m Matcher
	var out []*MatchData
	for pos := offset; pos >= 0; {
		md, next, err := m.Next(pat, []byte(src), pos)
		if err != nil {
			return nil, err
		}
		if md == nil {
			break
		}
		out = append(out, md)
		pos = next
	}
	return out, nil
}

// TestSameMatchesAsGopherLua compares every match, capture by capture,
// with gopher-lua's own matcher.
func TestSameMatchesAsGopherLua(t *testing.T) {
	srcs := []string{"", "a", "hello world", "key=value; k2=v2", "((a)(b))", "aaa bbb  ccc", "x1y22z333", "THE (quick) fox", "abcabcabc"}
	pats := []string{"", "a", ".", "%a+", "%w*", "(%w+)=(%w+)", "^h", "^(%a+)", "o", "%s+", "()a()", "%b()", "(a)%1", "[%a_][%w_]*", "[^%s]+", "a-b", ".-c", "%d+$", "^$", "x?y", "(%d)(%d?)", "[a-c]+", "%f", "(", "[a", "%"}
	for _, src := range srcs {
		for _, p := range pats {
			want, werr := pm.Find(p, []byte(src), 0, -1)
			got, gerr := all(t, p, src, 0)
			if (werr != nil) != (gerr != nil) {
				t.Errorf("find %q in %q: error %v, gopher-lua %v", p, src, gerr, werr)
				continue
			}
			if werr != nil {
				continue
			}
			if fmt.Sprint(dump(got)) != fmt.Sprint(dumpPM(want)) {
				t.Errorf("find %q in %q: %v, gopher-lua %v", p, src, dump(got), dumpPM(want))
			}
		}
	}
}

func dump(ms []*MatchData) [][]int {
	var out [][]int
	for _, m := range ms {
		var c []int
		for i := 0; i < m.CaptureLength(); i++ {
			c = append(c, m.Capture(i), map[bool]int{true: 1}[m.IsPosCapture(i)])
		}
		out = append(out, c)
	}
	return out
}

func dumpPM(ms []*pm.MatchData) [][]int {
	var out [][]int
	for _, m := range ms {
		var c []int
		for i := 0; i < m.CaptureLength(); i++ {
			c = append(c, m.Capture(i), map[bool]int{true: 1}[m.IsPosCapture(i)])
		}
		out = append(out, c)
	}
	return out
}

// TestCheckStopsBacktracking: a pattern that backtracks exponentially is
// stopped by its check, promptly.
func TestCheckStopsBacktracking(t *testing.T) {
	errStop := errors.New("stop")
	pat, err := Compile(".-.-.-.-.-.-b")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	m := Matcher{Check: func() error {
		if time.Now().After(deadline) {
			return errStop
		}
		return nil
	}}
	start := time.Now()
	_, _, err = m.Next(pat, []byte(strings.Repeat("a", 200)), 0)
	if !errors.Is(err, errStop) {
		t.Fatalf("err = %v, want the check's error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stopped after %v", d)
	}
}

// TestBacktrackStackBounded: the backtracking stack is bounded, on the
// heap, where gopher-lua's matcher recursed on the goroutine stack.
func TestBacktrackStackBounded(t *testing.T) {
	pat, err := Compile(".*b")
	if err != nil {
		t.Fatal(err)
	}
	var m Matcher
	_, _, err = m.Next(pat, []byte(strings.Repeat("a", MaxBacktrack+10)), 0)
	if !errors.Is(err, ErrTooComplex) {
		t.Fatalf("err = %v, want ErrTooComplex", err)
	}
}
