package kvbench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flowrun/flowrun/internal/loadgen"
	"github.com/flowrun/flowrun/pipeline"
)

// openLoop is the state of an open-loop run of the flowrun side. The source
// writes start before emitting anything. Events complete on the goroutines
// of the nodes that release them last, so their figures are counted under
// mu; the graph's end orders those counts before result reads them.
type openLoop struct {
	sched loadgen.Schedule
	start time.Time
	// flushBlocked sums the time Flush calls waited (the source's own).
	flushBlocked time.Duration
	diag         diagCollector

	mu        sync.Mutex
	lat       *loadgen.Histogram // completion - scheduled time
	lag       *loadgen.Histogram // handed to the graph - scheduled time
	svc       *loadgen.Histogram // completion - handed to the graph
	last      time.Duration      // the latest completion, from start
	completed int
}

func newOpenLoop(rate, n int) *openLoop {
	return &openLoop{sched: loadgen.Schedule{Rate: rate, N: n}, lat: loadgen.NewHistogram(), lag: loadgen.NewHistogram(), svc: loadgen.NewHistogram()}
}

// eventDone counts event i, handed to the graph at sent (from start), as
// complete now.
func (o *openLoop) eventDone(i int, sent time.Duration) {
	done := time.Since(o.start)
	at := o.sched.At(i)
	o.mu.Lock()
	o.lat.Record(done - at)
	o.lag.Record(sent - at)
	o.svc.Record(done - sent)
	o.last = max(o.last, done)
	o.completed++
	o.mu.Unlock()
}

// result checks that every event completed and summarises the latencies.
func (o *openLoop) result() (sideResult, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.completed != o.sched.N {
		return sideResult{}, fmt.Errorf("%d of %d events completed", o.completed, o.sched.N)
	}
	q := o.lat.Quantiles()
	return sideResult{elapsed: o.last, p50us: q.P50, p99us: q.P99, q: q, diag: o.diag.result(o)}, nil
}

// generateOpen emits the timed operations on schedule: whenever events are
// due it emits all of them (in groups of at most Batch, one Tracker per
// group) and flushes, without waiting for earlier events to complete, then
// sleeps until the next event is due but at least Config.Tick. A
// late source (a Flush held back by a full graph) catches up by emitting
// everything due at once; latency still counts from each event's schedule.
func (f *flowSide) generateOpen(ctx context.Context, emit pipeline.SourceEmitter, g *gen, scanEnd []byte, perEvent int) error {
	o := f.open
	o.diag.start()
	o.start = time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	emitted := false
	for next := 0; next < o.sched.N; {
		due := o.sched.Due(time.Since(o.start))
		if due == next || emitted {
			// Asleep at least Tick since the last emit, even when more fell
			// due while it flushed: those wait for the next wake.
			timer.Reset(max(o.sched.At(next)-time.Since(o.start), f.cfg.Tick))
			select {
			case <-timer.C:
			case <-ctx.Done():
				return nil
			}
			emitted = false
			continue
		}
		emitted = true
		for next < due {
			n := min(f.cfg.Batch, due-next)
			var arena []byte
			select {
			case arena = <-f.free:
				arena = arena[:0]
			default:
			}
			if cap(arena) < n*perEvent {
				// Room for the largest group, so that every spare fits
				// the next group (one that grows by copying leaves its
				// first events in the old array).
				arena = make([]byte, 0, f.cfg.Batch*perEvent)
			}
			first := next
			var sent time.Duration // set before the flush that lets any complete
			tr := pipeline.NewTracker(n, func(i int, _ pipeline.Outcome) { o.eventDone(first+i, sent) }, func() {
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
			sent = time.Since(o.start)
			next += n
			if err := emit.Flush(ctx); err != nil {
				return err
			}
			o.flushBlocked += time.Since(o.start) - sent
		}
	}
	return nil
}
