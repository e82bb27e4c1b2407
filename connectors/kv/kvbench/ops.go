package kvbench

import (
	"strconv"
	"time"
)

// maxKeys bounds Config.Keys so every key fits keyDigits digits.
const (
	keyDigits = 10
	maxKeys   = 10_000_000_000
)

// kind is the operation an op performs.
type kind uint8

const (
	opPut kind = iota
	opGet
	opIncrement
	opCAS
	opScan
)

// op is one generated operation. Both sides draw the same sequence from a
// generator with the same seed, so they do identical work.
type op struct {
	kind    kind
	key     int    // key index in [0, Keys)
	version uint64 // put: the op number; cas: the version being replaced
}

// gen produces a workload's operations deterministically.
type gen struct {
	workload string
	keys     int
	rng      uint64
	n        uint64
	versions []uint32 // cas: the current version of each key
}

func newGen(workload string, keys int) *gen {
	g := &gen{workload: workload, keys: keys, rng: 0x9e3779b97f4a7c15}
	if workload == CAS {
		g.versions = make([]uint32, keys)
	}
	return g
}

// next returns a pseudo-random 64-bit number (splitmix64).
func (g *gen) next() uint64 {
	g.rng += 0x9e3779b97f4a7c15
	z := g.rng
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (g *gen) op() op {
	r := g.next()
	o := op{key: int(r % uint64(g.keys)), version: g.n}
	g.n++
	switch g.workload {
	case Put:
		o.kind = opPut
	case Get:
		o.kind = opGet
	case Mixed:
		o.kind = opGet
		if r>>63 == 1 {
			o.kind = opPut
		}
	case Increment:
		o.kind = opIncrement
	case CAS:
		o.kind = opCAS
		o.version = uint64(g.versions[o.key])
		g.versions[o.key]++
	case Scan:
		o.kind = opScan
	}
	return o
}

// scanRows is how many entries a scan starting at key index k reads: the
// scan runs to the end of the key space, so it always finds at least one.
func scanRows(keys, k int) int {
	return min(ScanLimit, keys-k)
}

// needsPreload reports whether a workload reads keys that must exist first.
func needsPreload(workload string) bool { return workload != Put }

// appendKey appends the key of index k: "k" and keyDigits zero-padded
// digits, so byte order is numeric order.
func appendKey(dst []byte, k int) []byte {
	dst = append(dst, 'k')
	var digits [keyDigits]byte
	for i := keyDigits - 1; i >= 0; i-- {
		digits[i] = byte('0' + k%10)
		k /= 10
	}
	return append(dst, digits[:]...)
}

// values builds stored values: JSON strings of exactly size bytes, a
// ten-digit version then filler from a fixed pseudo-random alphabet (so the
// values do not compress to nothing).
type values struct {
	filler []byte
}

func newValues(size int) values {
	f := make([]byte, size-12)
	x := uint32(2463534242)
	for i := range f {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		f[i] = 'a' + byte(x%26)
	}
	return values{filler: f}
}

func (v values) appendValue(dst []byte, version uint64) []byte {
	dst = append(dst, '"')
	var digits [10]byte
	for i := 9; i >= 0; i-- {
		digits[i] = byte('0' + version%10)
		version /= 10
	}
	dst = append(dst, digits[:]...)
	dst = append(dst, v.filler...)
	return append(dst, '"')
}

// preloadValue is what a preload stores at every key: version 0 for the
// string workloads, the number 0 for increment.
func (v values) preloadValue(dst []byte, workload string) []byte {
	if workload == Increment {
		return append(dst, '0')
	}
	return v.appendValue(dst, 0)
}

// incrementBy is the amount each increment adds.
const incrementBy = 1

func appendInt(dst []byte, n int64) []byte { return strconv.AppendInt(dst, n, 10) }

func opsPerSec(ops int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(ops) / d.Seconds()
}
