package pebblestore

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/flowrun/flowrun/connectors/kv"
)

// fakeClock is the pacer's clock and sleep: each write advances it by
// step, each sleep by the time slept.
type fakeClock struct {
	t      time.Time
	slept  []time.Duration
	onTick time.Duration
}

func (c *fakeClock) now() time.Time { c.t = c.t.Add(c.onTick); return c.t }
func (c *fakeClock) sleep(d time.Duration) {
	c.slept = append(c.slept, d)
	c.t = c.t.Add(d)
}

func TestPacedFileRests(t *testing.T) {
	for _, tc := range []struct {
		name     string
		category vfs.DiskWriteCategory
		pace     Pace
		stalled  bool
		writes   int
		step     time.Duration // clock advance per write
		want     int           // sleeps
	}{
		{"flush rests every 2ms", "pebble-memtable-flush", Pace{2 * time.Millisecond, time.Millisecond}, false, 100, 100 * time.Microsecond, 4},
		{"compaction rests too", "pebble-compaction", Pace{time.Millisecond, time.Millisecond}, false, 100, 100 * time.Microsecond, 9},
		{"the WAL never rests", "pebble-wal", Pace{time.Millisecond, time.Millisecond}, false, 100, 100 * time.Microsecond, 0},
		{"the manifest never rests", "pebble-manifest", Pace{time.Millisecond, time.Millisecond}, false, 100, 100 * time.Microsecond, 0},
		{"nothing rests during a write stall", "pebble-memtable-flush", Pace{time.Millisecond, time.Millisecond}, true, 100, 100 * time.Microsecond, 0},
		{"no rest, no pacing", "pebble-compaction", Pace{time.Millisecond, 0}, false, 100, 100 * time.Microsecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(0, 0), onTick: 0}
			p := newPacer(tc.pace)
			p.now, p.sleep = clock.now, clock.sleep
			if tc.stalled {
				l := p.listener()
				l.WriteStallBegin(pebble.WriteStallBeginInfo{})
			}
			fs := vfs.NewMem()
			f, err := p.wrap(tc.category)(fs.Create("f", tc.category))
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < tc.writes; i++ {
				clock.t = clock.t.Add(tc.step)
				if _, err := f.Write([]byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			if len(clock.slept) != tc.want {
				t.Fatalf("slept %d times (%v), want %d", len(clock.slept), clock.slept, tc.want)
			}
			for _, d := range clock.slept {
				if d != tc.pace.Rest {
					t.Fatalf("slept %v, want the rest %v", d, tc.pace.Rest)
				}
			}
			if st, err := f.Stat(); err != nil || st.Size() != int64(tc.writes) {
				t.Fatalf("file has %v bytes (%v), want every write", st, err)
			}
		})
	}
}

// TestPacedStoreFlushes checks a paced store still flushes and compacts:
// what it writes is all there after a reopen, through sstables.
func TestPacedStoreFlushes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	opts := Options{MemTableBytes: 1 << 20, Pace: Pace{Work: 100 * time.Microsecond, Rest: 100 * time.Microsecond}}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000 // 100-byte values, 2 MB: memtables of 1 MiB flushed
	val := strings.Repeat("v", 100)
	for i := 0; i < n; i += 1000 {
		fns := make([]kv.TxnFunc, 0, 1000)
		for j := i; j < i+1000; j++ {
			fns = append(fns, set(fmt.Sprintf("k%06d", j), val, 0))
		}
		for _, err := range update(t, s, fns...) {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if m := s.db.Metrics(); m.Flush.Count == 0 {
		t.Fatalf("no flush happened: %+v", m.Flush)
	}
	if s.pacer == nil || s.pacer.rests.Load() == 0 {
		t.Fatal("the flushes did not rest")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < n; i += 997 {
		var g got
		update(t, s, get(fmt.Sprintf("k%06d", i), &g))
		if g != (got{val, 0, true}) {
			t.Fatalf("k%06d after reopen: %+v", i, g)
		}
	}
}

func TestUnpacedStore(t *testing.T) {
	s, err := Open(t.TempDir(), Options{NoPace: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.pacer != nil {
		t.Fatal("NoPace store has a pacer")
	}
}
