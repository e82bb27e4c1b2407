package kvbench

import (
	"context"
	"fmt"
	"time"
)

// Defaults for SweepOptions.
const (
	DefaultSweepStart = 1000
	DefaultSweepMax   = 10_000_000
	// sweepMaxTrials bounds a sweep whatever the measurements say.
	sweepMaxTrials = 20
)

// SweepOptions configures Sweep.
type SweepOptions struct {
	// P99 is the bound: a rate passes when its p99 latency is at most P99.
	// Required.
	P99 time.Duration
	// Start is the first rate tried, in events/s. Default
	// DefaultSweepStart.
	Start int
	// Max is the highest rate tried. Default DefaultSweepMax.
	Max int
	// Trial, when set, is called after each trial with its result and
	// whether it passed.
	Trial func(r Result, pass bool)
}

// SweepResult is the outcome of Sweep for one workload.
type SweepResult struct {
	// Workload is the workload name.
	Workload string `json:"workload"`
	// P99BoundUs is the bound on p99 latency, in microseconds.
	P99BoundUs float64 `json:"sweep_p99_us"`
	// Rate is the highest rate tried whose p99 stayed within the bound,
	// in events/s; 0 when none did.
	Rate int `json:"rate"`
	// Trials is the number of runs made.
	Trials int `json:"trials"`
	// Best is the result of the run at Rate; nil (omitted) when Rate is 0.
	Best *Result `json:"best,omitempty"`
}

// Sweep finds the highest open-loop rate of cfg's single workload whose
// p99 latency stays within opts.P99: it doubles the rate from opts.Start
// while trials pass (halving while they fail), then bisects between the
// highest pass and the lowest failure until they are within 10% of each
// other. Each trial is a Run of cfg.Duration.
func Sweep(ctx context.Context, cfg Config, opts SweepOptions) (SweepResult, error) {
	if len(cfg.Workloads) != 1 {
		return SweepResult{}, fmt.Errorf("%w: a sweep runs one workload, got %d", ErrBadConfig, len(cfg.Workloads))
	}
	if opts.P99 <= 0 {
		return SweepResult{}, fmt.Errorf("%w: sweep p99 bound must be positive", ErrBadConfig)
	}
	if opts.Start <= 0 {
		opts.Start = DefaultSweepStart
	}
	if opts.Max <= 0 {
		opts.Max = DefaultSweepMax
	}
	sr := SweepResult{Workload: cfg.Workloads[0], P99BoundUs: float64(opts.P99) / float64(time.Microsecond)}
	best, trials, err := search(opts.Start, opts.Max, func(rate int) (bool, error) {
		c := cfg
		c.Rate = rate
		rs, err := Run(ctx, c)
		if err != nil {
			return false, err
		}
		r := rs[0]
		pass := r.P99us <= sr.P99BoundUs
		if pass && (sr.Best == nil || rate > sr.Best.Rate) {
			sr.Best = &r
		}
		if opts.Trial != nil {
			opts.Trial(r, pass)
		}
		return pass, nil
	})
	sr.Rate, sr.Trials = best, trials
	return sr, err
}

// search returns the highest rate in [1, maxRate] for which pass holds,
// assuming pass is monotone (true up to some rate, false above), to within
// 10%, and the number of calls made: it doubles from start while pass
// holds (halves while it fails), then bisects. It stops after
// sweepMaxTrials calls whatever the answers.
func search(start, maxRate int, pass func(rate int) (bool, error)) (int, int, error) {
	lo, hi := 0, 0 // highest pass, lowest failure (0: none yet)
	rate := min(start, maxRate)
	for trials := 0; trials < sweepMaxTrials; {
		ok, err := pass(rate)
		trials++
		if err != nil {
			return lo, trials, err
		}
		if ok {
			lo = rate
		} else {
			hi = rate
		}
		switch {
		case hi == 0 && lo == maxRate, hi == 1:
			return lo, trials, nil
		case hi == 0:
			rate = min(2*rate, maxRate)
		case lo == 0:
			rate = max(rate/2, 1)
		case hi-lo <= max(lo/10, 1):
			return lo, trials, nil
		default:
			rate = lo + (hi-lo)/2
		}
	}
	return lo, sweepMaxTrials, nil
}
