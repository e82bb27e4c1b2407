package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
)

// progressInterval is how often plain progress lines are written when
// stderr is not a terminal.
const progressInterval = 5 * time.Second

// progress describes long work for startProgress.
type progress struct {
	what  string        // "replay", "load"
	size  int64         // total input bytes, -1 when unknown
	bytes *atomic.Int64 // bytes read so far
	// items, when set, returns the events handled so far.
	items func() uint64
}

// startProgress reports progress on stderr until the returned function is
// called: a progress bar with rate and ETA on a terminal, otherwise one
// plain line every e.progressEvery. quiet turns both off.
func startProgress(e env, quiet bool, p progress) func() {
	if quiet {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	if e.stderrIsTerminal {
		bar := progressbar.NewOptions64(p.size,
			progressbar.OptionSetWriter(e.stderr),
			progressbar.OptionSetDescription(p.what),
			progressbar.OptionShowBytes(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
		go func() {
			defer wg.Done()
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					_ = bar.Set64(p.bytes.Load())
				case <-done:
					_ = bar.Finish()
					return
				}
			}
		}()
	} else {
		go func() {
			defer wg.Done()
			start := time.Now()
			t := time.NewTicker(e.progressEvery)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					fmt.Fprintln(e.stderr, progressLine(p, time.Since(start)))
				case <-done:
					return
				}
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}

// progressLine renders one plain progress line, e.g.
// "replay: 12.0 MiB read (40%), 120000 events, 24000 events/s, 2.4 MiB/s".
func progressLine(p progress, elapsed time.Duration) string {
	n := p.bytes.Load()
	secs := max(elapsed.Seconds(), 1e-9)
	line := fmt.Sprintf("%s: %s read", p.what, mib(n))
	if p.size > 0 {
		line += fmt.Sprintf(" (%.0f%%)", 100*float64(n)/float64(p.size))
	}
	if p.items != nil {
		items := p.items()
		line += fmt.Sprintf(", %d events, %.0f events/s", items, float64(items)/secs)
	}
	return line + fmt.Sprintf(", %s/s", mib(int64(float64(n)/secs)))
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
