// Package loadgen holds what flowrun's open-loop benchmarks share: the
// timetable that says when each event is due, and the percentiles of the
// latencies measured from it.
package loadgen

import (
	"math"
	"slices"
	"time"
)

// Schedule is an open loop's timetable: event i of N is due at i/Rate
// seconds after the start.
type Schedule struct {
	Rate int
	N    int
}

// At returns when event i is due, as an offset from the start: i/Rate
// seconds rounded up to the nanosecond, so that Due(At(i)) counts it.
func (s Schedule) At(i int) time.Duration {
	r := int64(s.Rate)
	return time.Duration((int64(i)*int64(time.Second) + r - 1) / r)
}

// Due returns how many events are due at elapsed (events 0 to Due-1), at
// most N.
func (s Schedule) Due(elapsed time.Duration) int {
	if elapsed < 0 {
		return 0
	}
	// Event i is due when i*1s/Rate <= elapsed, i.e. i <= elapsed*Rate/1s.
	d := int(int64(elapsed)/int64(time.Second)*int64(s.Rate)+
		int64(elapsed)%int64(time.Second)*int64(s.Rate)/int64(time.Second)) + 1
	return min(d, s.N)
}

// Quantiles are latency percentiles in microseconds.
type Quantiles struct {
	P50, P90, P99, P999, Max float64
}

// Percentiles returns the percentiles of lat (each the smallest latency at
// or above which the share q of the values lies). It sorts a copy.
func Percentiles(lat []time.Duration) Quantiles {
	if len(lat) == 0 {
		return Quantiles{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		i = min(max(i, 0), len(s)-1)
		return float64(s[i]) / float64(time.Microsecond)
	}
	return Quantiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: at(1)}
}
