package loadgen

import (
	"testing"
	"time"
)

func TestSchedule(t *testing.T) {
	s := Schedule{Rate: 3, N: 7}
	for _, c := range []struct {
		elapsed time.Duration
		due     int
	}{
		{-time.Millisecond, 0},
		{0, 1},
		{333 * time.Millisecond, 1},
		{333333334 * time.Nanosecond, 2},
		{time.Second, 4},
		{1999 * time.Millisecond, 6},
		{2 * time.Second, 7},
		{time.Hour, 7}, // a late source is owed everything, at most n
	} {
		if got := s.Due(c.elapsed); got != c.due {
			t.Errorf("due(%v) = %d, want %d", c.elapsed, got, c.due)
		}
	}
	for i, want := range []time.Duration{0, 333333334, 666666667, time.Second} {
		if got := s.At(i); got != want {
			t.Errorf("at(%d) = %v, want %v", i, got, want)
		}
	}
	// due and at agree: event i is due exactly from at(i).
	s = Schedule{Rate: 7919, N: 100_000}
	for i := 1; i < 20_000; i += 37 {
		if d := s.Due(s.At(i)); d != i+1 {
			t.Fatalf("due(at(%d)) = %d, want %d", i, d, i+1)
		}
		if d := s.Due(s.At(i) - 1); d != i {
			t.Fatalf("due(at(%d)-1) = %d, want %d", i, d, i)
		}
	}
}

func TestQuantiles(t *testing.T) {
	lat := make([]time.Duration, 1000)
	for i := range lat {
		lat[len(lat)-1-i] = time.Duration(i+1) * time.Microsecond // 1..1000 µs, reversed
	}
	q := Percentiles(lat)
	if want := (Quantiles{P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000}); q != want {
		t.Errorf("quantiles = %+v, want %+v", q, want)
	}
	if lat[0] != 1000*time.Microsecond {
		t.Error("quantiles sorted its argument in place")
	}
	if q := Percentiles(nil); q != (Quantiles{}) {
		t.Errorf("Percentiles(nil) = %+v", q)
	}
}

// TestHistogramMatchesPercentiles records the same latencies in a
// Histogram and a slice: every percentile agrees to three significant
// digits (the histogram reports the top of the range a value falls in).
func TestHistogramMatchesPercentiles(t *testing.T) {
	tests := []struct {
		name string
		lat  func(i int) time.Duration
	}{
		{"spread", func(i int) time.Duration { return time.Duration(1+(i*7919)%200_000) * time.Microsecond }},
		{"tail", func(i int) time.Duration {
			if i%100 == 0 {
				return 25*time.Millisecond + time.Duration(i)*time.Microsecond
			}
			return 900*time.Microsecond + time.Duration(i%300)*time.Microsecond
		}},
		{"sub-microsecond", func(i int) time.Duration { return time.Duration(i%999) * time.Nanosecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHistogram()
			var lat []time.Duration
			for i := range 100_000 {
				d := tt.lat(i)
				h.Record(d)
				lat = append(lat, max(d, time.Microsecond))
			}
			if h.Count() != int64(len(lat)) {
				t.Fatalf("count %d, want %d", h.Count(), len(lat))
			}
			got, want := h.Quantiles(), Percentiles(lat)
			for _, c := range []struct {
				name      string
				got, want float64
			}{{"p50", got.P50, want.P50}, {"p90", got.P90, want.P90}, {"p99", got.P99, want.P99}, {"p999", got.P999, want.P999}, {"max", got.Max, want.Max}} {
				// Whole microseconds against the exact value, within the
				// histogram's 0.1% (plus the microsecond it counts in).
				if c.got < c.want-1 || c.got > c.want*1.001+1 {
					t.Errorf("%s = %v µs, want %v µs within 0.1%%", c.name, c.got, c.want)
				}
			}
		})
	}
	if q := NewHistogram().Quantiles(); q != (Quantiles{}) {
		t.Errorf("empty histogram: %+v, want zeros", q)
	}
}
