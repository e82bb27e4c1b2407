package kvbench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

// schedule is the open loop's timetable: event i of n is due at
// i/rate seconds after the start.
type schedule struct {
	rate int
	n    int
}

// at returns when event i is due, as an offset from the start: i/rate
// seconds rounded up to the nanosecond, so that due(at(i)) counts it.
func (s schedule) at(i int) time.Duration {
	r := int64(s.rate)
	return time.Duration((int64(i)*int64(time.Second) + r - 1) / r)
}

// due returns how many events are due at elapsed (events 0 to due-1), at
// most n.
func (s schedule) due(elapsed time.Duration) int {
	if elapsed < 0 {
		return 0
	}
	// Event i is due when i*1s/rate <= elapsed, i.e. i <= elapsed*rate/1s.
	d := int(int64(elapsed)/int64(time.Second)*int64(s.rate)+
		int64(elapsed)%int64(time.Second)*int64(s.rate)/int64(time.Second)) + 1
	return min(d, s.n)
}

// openLoop is the state of an open-loop run of the flowrun side. The source
// writes start before emitting anything; each event's completion writes
// its own lat entry only, so no lock is needed; the graph's end orders
// those writes before result reads them.
type openLoop struct {
	sched     schedule
	start     time.Time
	lat       []time.Duration // per event: completion - scheduled time
	completed atomic.Int64
}

func newOpenLoop(rate, n int) *openLoop {
	return &openLoop{sched: schedule{rate: rate, n: n}, lat: make([]time.Duration, n)}
}

// eventDone records the latency of event i from its scheduled time.
func (o *openLoop) eventDone(i int) {
	o.lat[i] = time.Since(o.start) - o.sched.at(i)
	o.completed.Add(1)
}

// result checks that every event completed and summarises the latencies.
func (o *openLoop) result() (sideResult, error) {
	if n := o.completed.Load(); n != int64(o.sched.n) {
		return sideResult{}, fmt.Errorf("%d of %d events completed", n, o.sched.n)
	}
	var last time.Duration
	for i, l := range o.lat {
		last = max(last, o.sched.at(i)+l)
	}
	q := quantiles(o.lat)
	return sideResult{elapsed: last, p50us: q.p50, p99us: q.p99, q: q}, nil
}

// latencyQuantiles are latency percentiles in microseconds.
type latencyQuantiles struct {
	p50, p90, p99, p999, max float64
}

// quantiles returns the percentiles of lat (each the smallest latency at
// or above which the share q of the values lies). It sorts a copy.
func quantiles(lat []time.Duration) latencyQuantiles {
	if len(lat) == 0 {
		return latencyQuantiles{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		i = min(max(i, 0), len(s)-1)
		return float64(s[i]) / float64(time.Microsecond)
	}
	return latencyQuantiles{p50: at(0.50), p90: at(0.90), p99: at(0.99), p999: at(0.999), max: at(1)}
}

// generateOpen emits the timed operations on schedule: whenever events are
// due it emits all of them (in groups of at most Batch, one Tracker per
// group) and flushes, without waiting for earlier events to complete. A
// late source (a Flush held back by a full graph) catches up by emitting
// everything due at once; latency still counts from each event's schedule.
func (f *flowSide) generateOpen(ctx context.Context, emit pipeline.SourceEmitter, g *gen, scanEnd []byte, perEvent int) error {
	o := f.open
	o.start = time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for next := 0; next < o.sched.n; {
		due := o.sched.due(time.Since(o.start))
		if due == next {
			timer.Reset(o.sched.at(next) - time.Since(o.start))
			select {
			case <-timer.C:
			case <-ctx.Done():
				return nil
			}
			continue
		}
		for next < due {
			n := min(f.cfg.Batch, due-next)
			var arena []byte
			select {
			case arena = <-f.free:
				arena = arena[:0]
			default:
				arena = make([]byte, 0, n*perEvent)
			}
			first := next
			tr := pipeline.NewTracker(n, func(i int, _ pipeline.Outcome) { o.eventDone(first + i) }, func() {
				select {
				case f.free <- arena:
				default:
				}
				f.p.add(n)
			})
			for i := range n {
				var ev pipeline.Event
				arena, ev = f.appendEvent(arena, g.op(), scanEnd)
				emit.Emit(pipeline.PortOut, tr.Track(i, ev))
			}
			next += n
			if err := emit.Flush(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}
