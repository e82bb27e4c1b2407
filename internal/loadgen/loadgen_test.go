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
