package pebblestore

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/flowrun/flowrun/connectors/kv"
)

// hangBound bounds waits for things that must happen: it only turns a
// hang into a failure, and is never a measure of speed.
const hangBound = 30 * time.Second

func isWALSync(op errorfs.Op) bool {
	if !strings.HasSuffix(op.Path, ".log") {
		return false
	}
	switch op.Kind {
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		return true
	}
	return false
}

// TestViewWaitsForWALSyncOfWhatItRead calls View directly while the WAL
// sync of a put is held: the put is applied (its batch is visible in the
// database, which the test checks there) but not durable. A View that
// reads it must not return before that sync has completed, or a read
// result could show a write that a crash then loses.
func TestViewWaitsForWALSyncOfWhatItRead(t *testing.T) {
	var holding, released atomic.Bool
	gate := make(chan struct{})
	syncing := make(chan struct{}, 1)
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if holding.Load() && isWALSync(op) {
			select {
			case syncing <- struct{}{}:
			default:
			}
			<-gate
		}
		return nil
	})
	s, err := Open(t.TempDir(), Options{Pebble: func(o *pebble.Options) { o.FS = errorfs.Wrap(vfs.Default, inj) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := sync0(func() { released.Store(true); close(gate) })
	defer release()

	holding.Store(true)
	put := make(chan error, 1)
	go func() {
		errs := []error{nil}
		err := s.Update(context.Background(), []kv.TxnFunc{set("k", "1", 0)}, errs)
		put <- errors.Join(err, errs[0])
	}()
	select {
	case <-syncing:
	case <-time.After(hangBound):
		t.Fatal("the put's WAL sync never started")
	}
	// The sync is held; wait until the put is visible in the database.
	for deadline := time.Now().Add(hangBound); ; {
		v, closer, err := s.db.Get([]byte("k"))
		if err == nil {
			_ = v
			closer.Close()
			break
		}
		if !errors.Is(err, pebble.ErrNotFound) || time.Now().After(deadline) {
			t.Fatalf("the put never became visible: %v", err)
		}
		time.Sleep(time.Millisecond)
	}

	type outcome struct {
		err           error
		afterReleased bool
	}
	read := make(chan got, 1)
	view := make(chan outcome, 1)
	go func() {
		var g got
		errs := []error{nil}
		err := s.View(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error {
			err := get("k", &g)(tx)
			read <- g
			return err
		}}, errs)
		view <- outcome{errors.Join(err, errs[0]), released.Load()}
	}()
	if g := <-read; g.value != "1" {
		t.Fatalf("View read %+v, want the applied put", g)
	}
	// With the rule, View cannot return now whatever the scheduling; a
	// View without it returns at once, and is caught here (or below).
	select {
	case o := <-view:
		t.Fatalf("View returned (err %v) a read of a write whose WAL sync is still held", o.err)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case o := <-view:
		if o.err != nil {
			t.Fatalf("View after the sync: %v", o.err)
		}
		if !o.afterReleased {
			t.Fatal("View returned before the WAL sync of what it read was released")
		}
	case <-time.After(hangBound):
		t.Fatal("View never returned after the sync")
	}
	if err := <-put; err != nil {
		t.Fatalf("put: %v", err)
	}
}

// sync0 returns f made safe to call more than once (the first call runs).
func sync0(f func()) func() {
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			f()
		}
	}
}

// TestFailedStoreStaysFailed fails one put's WAL write or sync, then lets
// the file system work again: the store must refuse every later command,
// through every entry point, with ErrFailed, reads included (the failed
// put was applied to the memtable before its failure was known, and a read
// could show it), until it is reopened.
func TestFailedStoreStaysFailed(t *testing.T) {
	errInjected := errors.New("injected WAL fault")
	for _, kind := range []string{"sync", "write"} {
		t.Run(kind, func(t *testing.T) {
			var on atomic.Bool
			inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
				if !on.Load() || !strings.HasSuffix(op.Path, ".log") {
					return nil
				}
				switch {
				case kind == "sync" && isWALSync(op),
					kind == "write" && (op.Kind == errorfs.OpFileWrite || op.Kind == errorfs.OpFileWriteAt):
					return errInjected
				}
				return nil
			})
			dir := t.TempDir()
			s, err := Open(dir, Options{Pebble: func(o *pebble.Options) { o.FS = errorfs.Wrap(vfs.Default, inj) }})
			if err != nil {
				t.Fatal(err)
			}
			update(t, s, set("acked", "1", 0))
			on.Store(true)
			errs := []error{nil}
			if err := s.Update(context.Background(), []kv.TxnFunc{set("phantom", "1", 0)}, errs); err == nil {
				t.Fatal("the put with a failing WAL succeeded")
			}
			on.Store(false)

			var g got
			// A later write is refused with ErrFailed too, though it
			// also fails its own sync on the WAL Pebble keeps failed.
			later := []struct {
				name string
				run  func() error
			}{
				{"Update read", func() error {
					return s.Update(context.Background(), []kv.TxnFunc{get("phantom", &g)}, []error{nil})
				}},
				{"Update read of an acknowledged key", func() error {
					return s.Update(context.Background(), []kv.TxnFunc{get("acked", &g)}, []error{nil})
				}},
				{"Update write", func() error {
					return s.Update(context.Background(), []kv.TxnFunc{set("later", "1", 0)}, []error{nil})
				}},
				{"Submit read", func() error {
					return s.Submit(context.Background(), []kv.TxnFunc{get("phantom", &g)}, []error{nil})()
				}},
				{"View", func() error {
					return s.View(context.Background(), []kv.TxnFunc{get("phantom", &g)}, []error{nil})
				}},
			}
			for _, l := range later {
				err := l.run()
				if !errors.Is(err, ErrFailed) {
					t.Errorf("%s after the failure: %v, want ErrFailed", l.name, err)
				}
			}
			_ = s.Close()

			s = openTest(t, dir)
			defer s.Close()
			update(t, s, get("acked", &g))
			if g.value != "1" {
				t.Fatalf("acknowledged write after reopening: %+v", g)
			}
		})
	}
}
