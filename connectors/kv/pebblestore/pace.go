package pebblestore

import (
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// This file paces Pebble's background work. A memtable flush or a
// compaction runs on one goroutine, flat out, for tens of milliseconds; on
// a machine of few cores it takes a whole processor from the flow for that
// long, and the events arriving meanwhile queue behind it (the tail
// latency of an open-loop load well below saturation). Pacing makes each
// such goroutine sleep for Pace.Rest after every Pace.Work spent writing
// its sstable, so the same work is spread over a longer time and the
// flow's goroutines get the processor in between: RocksDB's rate limiter
// for flush and compaction writes does the same in bytes per second.
// While Pebble stalls writes (memtables or L0 full), nothing sleeps: the
// background work is then what the flow waits for.

// Pace bounds the share of a processor each of Pebble's flushes and
// compactions takes: after writing for Work it sleeps for Rest, a share of
// Work/(Work+Rest). The zero Pace does not pace.
type Pace struct {
	// Work is how long a flush or compaction writes before it rests.
	Work time.Duration
	// Rest is how long it then sleeps; 0 turns pacing off.
	Rest time.Duration
}

// on reports whether p paces at all.
func (p Pace) on() bool { return p.Work > 0 && p.Rest > 0 }

// pacer paces the sstable files of one store.
type pacer struct {
	pace    Pace
	stalled atomic.Int32 // Pebble's write stalls in progress
	rests   atomic.Int64 // sleeps so far
	sleep   func(time.Duration)
	now     func() time.Time
}

func newPacer(p Pace) *pacer {
	return &pacer{pace: p, sleep: time.Sleep, now: time.Now}
}

// listener tells the pacer when Pebble stalls writes.
func (p *pacer) listener() pebble.EventListener {
	return pebble.EventListener{
		WriteStallBegin: func(pebble.WriteStallBeginInfo) { p.stalled.Add(1) },
		WriteStallEnd:   func() { p.stalled.Add(-1) },
	}
}

// wrap returns f paced when it is an sstable written by a flush or a
// compaction; other files (the WAL, the manifest) are never paced.
func (p *pacer) wrap(category vfs.DiskWriteCategory) func(vfs.File, error) (vfs.File, error) {
	return func(f vfs.File, err error) (vfs.File, error) {
		if err != nil || p == nil || !p.pace.on() || !background(category) {
			return f, err
		}
		return &pacedFile{File: f, p: p}, nil
	}
}

// background reports whether category is that of a flush's or a
// compaction's output.
func background(category vfs.DiskWriteCategory) bool {
	switch category {
	case "pebble-memtable-flush", "pebble-compaction":
		return true
	}
	return false
}

// pacedFile is one sstable being written by a flush or compaction; its
// writes come from one goroutine (Pebble's sstable writer).
type pacedFile struct {
	vfs.File
	p     *pacer
	since time.Time // start of the current stretch of work
}

func (f *pacedFile) Write(b []byte) (int, error) {
	f.rest()
	return f.File.Write(b)
}

func (f *pacedFile) WriteAt(b []byte, off int64) (int, error) {
	f.rest()
	return f.File.WriteAt(b, off)
}

// rest sleeps once the current stretch of work has lasted Pace.Work,
// unless Pebble is stalling writes.
func (f *pacedFile) rest() {
	now := f.p.now()
	switch {
	case f.since.IsZero():
		f.since = now
	case now.Sub(f.since) >= f.p.pace.Work:
		if f.p.stalled.Load() == 0 {
			f.p.rests.Add(1)
			f.p.sleep(f.p.pace.Rest)
			now = f.p.now()
		}
		f.since = now
	}
}
