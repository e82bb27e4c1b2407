// Package suggest proposes the likely intended word for a misspelt one,
// for error messages: "unknown option \"dri\" (did you mean \"dir\"?)".
package suggest

import (
	"fmt"
	"strings"
)

// DidYouMean returns ` (did you mean "x"?)` for the candidate closest to
// s, or "" when none is close enough to be a likely typo.
func DidYouMean(s string, candidates []string) string {
	best, bestDist, bestPrefix := "", 0, 0
	for _, c := range candidates {
		d := EditDistance(strings.ToLower(s), strings.ToLower(c))
		limit := max(1, (len(s)+1)/3)
		if d > limit {
			continue
		}
		// Typos rarely hit the first letters: on equal distance, prefer
		// the candidate sharing the longer prefix.
		p := commonPrefix(s, c)
		if best == "" || d < bestDist || (d == bestDist && p > bestPrefix) {
			best, bestDist, bestPrefix = c, d, p
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// EditDistance is the Levenshtein distance between a and b, counting an
// adjacent transposition as one edit. Strings longer than 64 runes are not
// compared: their distance is the longer length.
func EditDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	if len(ra) > 64 || len(rb) > 64 {
		return max(len(ra), len(rb)) // not worth comparing
	}
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
