package loadgen

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram counts latencies in constant memory, to three significant
// digits, from 1 µs to an hour (longer ones count as an hour), so that a
// long open-loop run keeps no per-event figure: an array of per-event
// latencies (8 bytes each, 64 MB for 8 million events) would also raise
// the heap goal the garbage collector paces itself by, and with it
// lengthen the gaps between the collections whose cost the run measures.
// One goroutine at a time may use it.
type Histogram struct {
	h *hdrhistogram.Histogram
}

// histogramMax is the longest latency a Histogram tells apart, in
// microseconds.
const histogramMax = int64(time.Hour / time.Microsecond)

// NewHistogram returns an empty Histogram.
func NewHistogram() *Histogram {
	return &Histogram{h: hdrhistogram.New(1, histogramMax, 3)}
}

// Record counts one latency; one below 1 µs counts as 1 µs.
func (h *Histogram) Record(d time.Duration) {
	us := min(max(int64(d/time.Microsecond), 1), histogramMax)
	_ = h.h.RecordValue(us) // in range by construction
}

// Count returns how many latencies were recorded.
func (h *Histogram) Count() int64 { return h.h.TotalCount() }

// Quantiles returns the percentiles of what was recorded, as Percentiles
// does for a slice (each to three significant digits); all zero when
// nothing was.
func (h *Histogram) Quantiles() Quantiles {
	if h.h.TotalCount() == 0 {
		return Quantiles{}
	}
	at := func(q float64) float64 { return float64(h.h.ValueAtQuantile(q)) }
	return Quantiles{P50: at(50), P90: at(90), P99: at(99), P999: at(99.9), Max: float64(h.h.Max())}
}
