package lua

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"time"
)

// watchInterval is how long a script run goes unwatched, and then how
// often the watchdog looks at it. Short runs (nearly all) cost the
// watchdog one timer reset and stop; only a run longer than this pays for
// heap sampling.
const watchInterval = 5 * time.Millisecond

// Heap metrics the watchdog reads: the bytes of heap objects (live and not
// yet swept garbage), which grows as a script allocates, and the live heap
// as of the last finished GC.
const (
	metricHeapObjects = "/memory/classes/heap/objects:bytes"
	metricHeapLive    = "/gc/heap/live:bytes"
)

// watchdog enforces Timeout and MaxMemory on the run in progress of one
// Processor. gopher-lua has no allocation hooks or heap cap, so memory is
// watched from outside: once a run has lasted watchInterval, the watchdog
// samples the process heap every watchInterval; when it has grown by more
// than MaxMemory since the run's first sample, a forced GC tells garbage
// from live growth, and live growth over the limit cancels the run's
// context (the VM checks it before each instruction). The measure is
// process-wide: allocations by other goroutines during the run count too.
type watchdog struct {
	timeout time.Duration
	limit   uint64
	timer   *time.Timer

	mu     sync.Mutex
	gen    uint64 // run generation, bumped by begin
	start  time.Time
	cancel context.CancelCauseFunc // nil when no run is watched
	// Heap figures of the run, set by its first sample: the live heap,
	// and the level the cheap check measures growth from.
	sampled     bool
	base, floor uint64
}

func newWatchdog(timeout time.Duration, limit int64) *watchdog {
	w := &watchdog{timeout: timeout, limit: uint64(limit)}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// begin starts watching a run whose context cancel stops.
func (w *watchdog) begin(cancel context.CancelCauseFunc) {
	w.mu.Lock()
	w.gen++
	w.start = time.Now()
	w.cancel = cancel
	w.sampled = false
	w.mu.Unlock()
	w.timer.Reset(watchInterval)
}

// end stops watching the current run.
func (w *watchdog) end() {
	w.timer.Stop()
	w.mu.Lock()
	w.cancel = nil
	w.mu.Unlock()
}

// stop releases the timer; the watchdog is not used afterwards.
func (w *watchdog) stop() { w.end() }

// fire runs on the timer's goroutine while a run is in progress. It
// decides without the lock (a forced GC takes milliseconds) and acts under
// it only if the same run is still in progress.
func (w *watchdog) fire() {
	w.mu.Lock()
	watching, gen, start, sampled, base, floor := w.cancel != nil, w.gen, w.start, w.sampled, w.base, w.floor
	w.mu.Unlock()
	if !watching {
		return
	}
	var cause error
	if time.Since(start) > w.timeout {
		cause = fmt.Errorf("%w: the script ran longer than %v for this event (timeout)", ErrLimit, w.timeout)
	} else {
		s := []metrics.Sample{{Name: metricHeapObjects}, {Name: metricHeapLive}}
		metrics.Read(s)
		heap, live := sampleUint(s[0]), sampleUint(s[1])
		switch {
		case !sampled:
			sampled, base, floor = true, live, heap
		case heap > floor && heap-floor > w.limit:
			// Growth or garbage? Only a collection can tell; a long run
			// forces at most one per MaxMemory bytes it allocates.
			runtime.GC()
			metrics.Read(s)
			live = sampleUint(s[1])
			if live > base && live-base > w.limit {
				cause = fmt.Errorf("%w: %w: the process heap grew by %s while the script ran, limit is %s (max_memory)",
					ErrLimit, ErrMemoryLimit, sizeString(live-base), sizeString(w.limit))
			}
			floor = live
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gen != gen || w.cancel == nil {
		return // that run ended meanwhile
	}
	if cause != nil {
		w.cancel(cause)
		w.cancel = nil
		return
	}
	w.sampled, w.base, w.floor = sampled, base, floor
	w.timer.Reset(watchInterval)
}

func sampleUint(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

// sizeString formats n bytes for error messages ("70.0 MiB").
func sizeString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
