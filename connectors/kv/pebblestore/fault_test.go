package pebblestore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

var errInjected = errors.New("injected WAL fault")

// walFault returns Pebble options injecting errInjected into writes or
// syncs of the write-ahead log (files ending in .log) while on is set.
func walFault(on *atomic.Bool, sync bool) func(*pebble.Options) {
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !on.Load() || !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		switch op.Kind {
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt:
			if !sync {
				return errInjected
			}
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if sync {
				return errInjected
			}
		}
		return nil
	})
	return func(o *pebble.Options) { o.FS = errorfs.Wrap(vfs.Default, inj) }
}

func processAll(t *testing.T, c *kv.Connector, evs ...pipeline.Event) []kvtest.Emitted {
	t.Helper()
	var rec kvtest.Recorder
	if err := c.Process(context.Background(), evs, &rec); err != nil {
		t.Fatalf("Process: %v", err)
	}
	return rec.Events
}

// TestWALFailureFailsTheGroup injects a failing WAL write or sync under a
// kv Connector on a real Pebble store. Every command of the group being
// committed must go to err with ErrCommit and none be reported done;
// Pebble keeps its WAL failed afterwards, so every later write fails too
// (the store fails stop rather than pretending), and the store reopens
// cleanly with every acknowledged write.
func TestWALFailureFailsTheGroup(t *testing.T) {
	for _, mode := range []string{"write", "sync"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			var on atomic.Bool
			s, err := pebblestore.Open(dir, pebblestore.Options{Pebble: walFault(&on, mode == "sync")})
			if err != nil {
				t.Fatal(err)
			}
			c, err := kv.New(s, kv.Options{ReclaimInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			if got := processAll(t, c, kvtest.Event(kvtest.M(`"put":"acked"`), `1`)); len(got) != 1 || got[0].Port != pipeline.PortOut {
				t.Fatalf("put before the fault: %v", kvtest.Strings(got))
			}

			on.Store(true)
			got := processAll(t, c,
				kvtest.Event(kvtest.MC(`"put":"lost"`, `1`), `2`),
				kvtest.Event(kvtest.MC(`"increment":"n"`, `2`), ``),
				kvtest.Event(kvtest.MC(`"get":"acked"`, `3`), ``),
				kvtest.Event(kvtest.MC(`"batch":[{"put":"b1","value":1},{"put":"b2","value":2}]`, `4`), ``),
				kvtest.Event(kvtest.MC(`"frobnicate":"x"`, `5`), ``),
			)
			if len(got) != 5 {
				t.Fatalf("got %d events: %v", len(got), kvtest.Strings(got))
			}
			for i, e := range got {
				msg := gjson.GetBytes(e.Event.Meta, "error").String()
				if e.Port != pipeline.PortErr {
					t.Errorf("event %d reported done although its group failed to commit: %s", i, e)
					continue
				}
				if i < 4 && (!strings.Contains(msg, kv.ErrCommit.Error()) || !strings.Contains(msg, errInjected.Error())) {
					t.Errorf("event %d: error %q does not report the failed commit", i, msg)
				}
				if want := string(rune('1' + i)); gjson.GetBytes(e.Event.Meta, "correlation").Raw != want {
					t.Errorf("event %d lost its correlation: %s", i, e.Event.Meta)
				}
			}

			// Pebble does not recover a failed WAL: later writes fail too.
			on.Store(false)
			got = processAll(t, c, kvtest.Event(kvtest.M(`"put":"later"`), `3`))
			if len(got) != 1 || got[0].Port != pipeline.PortErr {
				t.Fatalf("write after a WAL failure: %v (want err: the WAL stays failed)", kvtest.Strings(got))
			}
			// Reads bypassing the writer (a read-only batch) are refused
			// too: they may see writes that were never made durable.
			if r := processAll(t, c, kvtest.Event(kvtest.M(`"get":"acked"`), ``)); len(r) != 1 || r[0].Port != pipeline.PortErr {
				t.Fatalf("read-only batch after a WAL failure: %v (want err)", kvtest.Strings(r))
			}
			t.Logf("after the fault: %s", gjson.GetBytes(got[0].Event.Meta, "error").Str)
			if err := c.Close(context.Background()); err == nil {
				t.Error("Close after a WAL failure reported no error")
			}

			// Reopened, the store has every acknowledged write; with a
			// failed write (nothing reached the log) the refused ones are
			// absent. A failed sync may leave them in the log: their fate
			// is unknown, which is why they were reported as failed.
			s, err = pebblestore.Open(dir, pebblestore.Options{})
			if err != nil {
				t.Fatalf("reopen after a WAL failure: %v", err)
			}
			c, err = kv.New(s, kv.Options{ReclaimInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			got = processAll(t, c, kvtest.Event(kvtest.M(`"get_all":null`), ``))
			all := gjson.ParseBytes(got[0].Event.Data)
			if all.Get("acked").Raw != "1" {
				t.Errorf("acknowledged write lost: %s", all.Raw)
			}
			if mode == "write" && (all.Get("lost").Exists() || all.Get("n").Exists() || all.Get("b1").Exists() || all.Get("later").Exists()) {
				t.Errorf("a write refused with a failed WAL write is in the store: %s", all.Raw)
			}
			t.Logf("after reopen: %s", all.Raw)
		})
	}
}

// TestFailedCommitNotVisible checks that a write whose commit failed is not
// visible to later reads of the same process.
func TestFailedCommitNotVisible(t *testing.T) {
	dir := t.TempDir()
	var on atomic.Bool
	s, err := pebblestore.Open(dir, pebblestore.Options{Pebble: walFault(&on, false)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := kv.New(s, kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	on.Store(true)
	processAll(t, c, kvtest.Event(kvtest.M(`"put":"phantom"`), `1`))
	on.Store(false)
	got := processAll(t, c, kvtest.Event(kvtest.M(`"get":"phantom"`), ``))
	if len(got) == 1 && got[0].Port == pipeline.PortOut && string(got[0].Event.Data) == "1" {
		t.Fatalf("a put reported failed is visible: %s", got[0])
	}
}

// TestReadWaitsForWALSyncOfWhatItSaw holds every WAL sync, applies a put
// (its result waits for the sync) and then runs a read-only batch, which
// bypasses the writer. If the read saw the unsynced put, its result must
// wait for the sync as well: otherwise a crash could lose a write a result
// has already shown.
func TestReadWaitsForWALSyncOfWhatItSaw(t *testing.T) {
	var holding atomic.Bool
	gate := make(chan struct{})
	syncing := make(chan struct{}, 1)
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if !strings.HasSuffix(op.Path, ".log") {
			return nil
		}
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if holding.Load() {
				select {
				case syncing <- struct{}{}:
				default:
				}
				<-gate
			}
		}
		return nil
	})
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{
		Pebble: func(o *pebble.Options) { o.FS = errorfs.Wrap(vfs.Default, inj) }})
	if err != nil {
		t.Fatal(err)
	}
	c, err := kv.New(s, kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	holding.Store(true)
	put := make(chan []kvtest.Emitted, 1)
	go func() {
		var rec kvtest.Recorder
		_ = c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(`"put":"k"`), `1`)}, &rec)
		put <- rec.Events
	}()
	<-syncing
	time.Sleep(50 * time.Millisecond) // the put is applied by now (its sync is held)
	get := make(chan []kvtest.Emitted, 1)
	go func() {
		var rec kvtest.Recorder
		_ = c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(`"get":"k"`), ``)}, &rec)
		get <- rec.Events
	}()
	var early []kvtest.Emitted
	select {
	case early = <-get:
	case <-time.After(300 * time.Millisecond):
	}
	holding.Store(false)
	close(gate)
	if got := <-put; len(got) != 1 || got[0].Port != pipeline.PortOut {
		t.Fatalf("put: %v", kvtest.Strings(got))
	}
	if early != nil {
		if len(early) == 1 && string(early[0].Event.Data) == "1" {
			t.Fatalf("a read showed a write before its WAL sync: %v", kvtest.Strings(early))
		}
		t.Skipf("the read ran before the put was applied (%v): nothing to check", kvtest.Strings(early))
	}
	if got := <-get; len(got) != 1 || string(got[0].Event.Data) != "1" {
		t.Fatalf("read after the sync: %v", kvtest.Strings(got))
	}
}

// TestResultWaitsForWALSync holds every WAL sync until released and checks
// that, with sync on, a write's result is not emitted before its sync has
// completed, while with sync off (NoSync) it is emitted without waiting.
func TestResultWaitsForWALSync(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoSync=%t", noSync), func(t *testing.T) {
			var holding atomic.Bool
			gate := make(chan struct{})
			var synced atomic.Int64
			inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
				if !strings.HasSuffix(op.Path, ".log") {
					return nil
				}
				switch op.Kind {
				case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
					if holding.Load() {
						<-gate
					}
					synced.Add(1)
				}
				return nil
			})
			s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{NoSync: noSync,
				Pebble: func(o *pebble.Options) { o.FS = errorfs.Wrap(vfs.Default, inj) }})
			if err != nil {
				t.Fatal(err)
			}
			c, err := kv.New(s, kv.Options{ReclaimInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(context.Background())
			holding.Store(true)
			done := make(chan []kvtest.Emitted, 1)
			go func() {
				var rec kvtest.Recorder
				_ = c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(`"put":"k"`), `1`)}, &rec)
				done <- rec.Events
			}()
			var got []kvtest.Emitted
			select {
			case got = <-done:
				if !noSync {
					t.Fatalf("result emitted while its WAL sync was still held: %v", kvtest.Strings(got))
				}
			case <-time.After(300 * time.Millisecond):
				if noSync {
					t.Fatal("with NoSync the result waited for a WAL sync")
				}
			}
			holding.Store(false)
			close(gate)
			if got == nil {
				got = <-done
			}
			if synced.Load() == 0 && !noSync {
				t.Error("no WAL sync was seen")
			}
			if len(got) != 1 || got[0].Port != pipeline.PortOut {
				t.Fatalf("after the sync: %v", kvtest.Strings(got))
			}
		})
	}
}
