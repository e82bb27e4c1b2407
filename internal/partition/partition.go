// Package partition maps keys to the partitions of a partitioned flow and
// partitions to the subjects that carry their input.
//
// The partition of a key is XXH64(key, seed 0) mod count. XXH64 is a
// published, fixed function (github.com/Cyan4973/xxHash), so a key's
// partition is the same in every version, process and machine for a given
// count; golden values in the tests pin it. The count is fixed for the
// life of a flow's state: changing it moves almost every key.
package partition

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// MaxCount is the largest partition count: partition numbers are written
// with three digits in subjects and stream names, so that they sort.
const MaxCount = 1000

// ErrCount reports a partition count outside [1, MaxCount].
var ErrCount = errors.New("partition count out of range")

// CheckCount reports whether n is a usable partition count.
func CheckCount(n int) error {
	if n < 1 || n > MaxCount {
		return fmt.Errorf("%w: %d, must be within 1 and %d", ErrCount, n, MaxCount)
	}
	return nil
}

// Of returns the partition of key among count partitions, in [0, count).
// count must satisfy CheckCount. The key is hashed as given: a kv key
// before it is namespaced.
func Of(key []byte, count int) int {
	return int(xxhash.Sum64(key) % uint64(count))
}

// OfString is Of for a string key, without copying it.
func OfString(key string, count int) int {
	return int(xxhash.Sum64String(key) % uint64(count))
}

// Token returns partition p as it appears in subjects and names: three
// digits ("017").
func Token(p int) string {
	return fmt.Sprintf("%03d", p)
}

// Subject returns the subject carrying partition p's input for a flow
// whose input subject is base: base + ".p." + Token(p)
// ("orders.in.p.017").
func Subject(base string, p int) string {
	return base + ".p." + Token(p)
}

// ParseSubject returns the partition a subject made by Subject(base, p)
// carries, refusing any other subject and partitions not below count.
func ParseSubject(base, subject string, count int) (int, error) {
	tok, ok := strings.CutPrefix(subject, base+".p.")
	if !ok || len(tok) != 3 {
		return 0, fmt.Errorf("subject %q is not a partition subject of %q (%s.p.NNN)", subject, base, base)
	}
	p, err := strconv.Atoi(tok)
	if err != nil || p < 0 {
		return 0, fmt.Errorf("subject %q is not a partition subject of %q (%s.p.NNN)", subject, base, base)
	}
	if p >= count {
		return 0, fmt.Errorf("subject %q names partition %d, the flow has %d", subject, p, count)
	}
	return p, nil
}
