package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/flowrun/flowrun/connectors/kv"
)

// diskFault describes where an injected filesystem error hits.
type diskFault struct {
	name  string
	errno syscall.Errno
	// hits reports whether op is one the fault fails.
	hits func(op errorfs.Op) bool
}

func opIn(op errorfs.Op, kinds ...errorfs.OpKind) bool {
	for _, k := range kinds {
		if op.Kind == k {
			return true
		}
	}
	return false
}

var diskFaults = []diskFault{
	{"WAL write", syscall.ENOSPC, func(op errorfs.Op) bool {
		return strings.HasSuffix(op.Path, ".log") && opIn(op, errorfs.OpFileWrite, errorfs.OpFileWriteAt)
	}},
	{"WAL sync", syscall.ENOSPC, func(op errorfs.Op) bool {
		return strings.HasSuffix(op.Path, ".log") && opIn(op, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo)
	}},
	{"WAL rotation", syscall.ENOSPC, func(op errorfs.Op) bool {
		return strings.HasSuffix(op.Path, ".log") && opIn(op, errorfs.OpCreate, errorfs.OpReuseForWrite)
	}},
	{"memtable flush", syscall.ENOSPC, func(op errorfs.Op) bool {
		return strings.HasSuffix(op.Path, ".sst") && opIn(op, errorfs.OpCreate, errorfs.OpFileWrite, errorfs.OpFileWriteAt)
	}},
	{"MANIFEST write", syscall.ENOSPC, func(op errorfs.Op) bool {
		return strings.HasPrefix(filepath.Base(op.Path), "MANIFEST-") && opIn(op, errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync)
	}},
	{"read-only filesystem", syscall.EROFS, func(op errorfs.Op) bool {
		return op.Kind.ReadOrWrite() == errorfs.OpIsWrite && !opIn(op, errorfs.OpFileClose, errorfs.OpRemove, errorfs.OpRemoveAll, errorfs.OpLock)
	}},
}

// TestDiskFaultsFailTheStore injects a full disk (ENOSPC) or a read-only
// filesystem (EROFS) through vfs/errorfs at each point where Pebble writes:
// the WAL's writes, syncs and rotation, a memtable flush, the MANIFEST, and
// everything at once. Small memtables make the store rotate its WAL, flush
// and write its MANIFEST every few puts. Pebble panics or exits on several
// of these errors; the store must instead fail the command that met the
// error with it (errors.Is the errno), fail every later command the same
// way, close, and reopen with every acknowledged write.
func TestDiskFaultsFailTheStore(t *testing.T) {
	for _, f := range diskFaults {
		t.Run(f.name, func(t *testing.T) { testDiskFault(t, f) })
	}
}

func testDiskFault(t *testing.T, f diskFault) {
	dir := t.TempDir()
	var on atomic.Bool
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if on.Load() && f.hits(op) {
			return &fs.PathError{Op: "injected", Path: op.Path, Err: f.errno}
		}
		return nil
	})
	var logged atomic.Int64
	opts := Options{
		Logger:        slog.New(countingHandler{&logged}),
		MemTableBytes: 256 << 10,
		Pebble:        func(o *pebble.Options) { o.FS = errorfs.Wrap(vfs.Default, inj) },
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	value := strings.Repeat("v", 20<<10)
	acked := map[string]bool{}
	// put writes key, failing the test if it hangs (a write stall that
	// never ends is one way a store on a full disk goes wrong).
	put := func(key string) error {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			errs := make([]error, 1)
			if err := s.Update(context.Background(), []kv.TxnFunc{set(key, value, 0)}, errs); err != nil {
				done <- err
				return
			}
			done <- errs[0]
		}()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			t.Fatalf("put %s did not return", key)
			return nil
		}
	}
	for i := range 20 {
		key := fmt.Sprintf("before-%d", i)
		if err := put(key); err != nil {
			t.Fatalf("put %s before the fault: %v", key, err)
		}
		acked[key] = true
	}

	on.Store(true)
	var first error
	for i := 0; i < 400 && first == nil; i++ {
		key := fmt.Sprintf("during-%d", i)
		if err := put(key); err != nil {
			first = err
		} else {
			acked[key] = true
		}
	}
	if first == nil {
		t.Fatal("no put failed: the fault was never hit")
	}
	t.Logf("first failure: %v", first)
	if !errors.Is(first, f.errno) || !strings.Contains(first.Error(), f.errno.Error()) {
		t.Errorf("failure %q does not name the cause %q", first, f.errno.Error())
	}
	// Every later command fails the same way, reads included, even once
	// the fault is gone: the store stays failed until it is reopened.
	on.Store(false)
	for i := range 3 {
		if err := put(fmt.Sprintf("after-%d", i)); !errors.Is(err, f.errno) {
			t.Errorf("put after the failure: %v, want an error naming %q", err, f.errno.Error())
		}
	}
	var g got
	errs := make([]error, 1)
	if err := s.Update(context.Background(), []kv.TxnFunc{get("before-0", &g)}, errs); err == nil && errs[0] == nil {
		t.Errorf("read after the failure succeeded (%+v)", g)
	}

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err == nil || !errors.Is(err, f.errno) {
			t.Errorf("Close after the failure: %v, want an error naming %q", err, f.errno.Error())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return")
	}
	// Pebble retries failed flushes without end: at most the first
	// background error and the count at close are logged.
	if n := logged.Load(); n > 3 {
		t.Errorf("%d error lines logged, want at most 3", n)
	}

	// Reopened without the fault, the store has every acknowledged write.
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	for key := range acked {
		var g got
		if errs := update(t, s2, get(key, &g)); errs[0] != nil || !g.found || g.value != value {
			t.Errorf("acknowledged %s after reopen: found %v, %d bytes, err %v", key, g.found, len(g.value), errs[0])
		}
	}
	t.Logf("%d acknowledged writes found after reopen", len(acked))
}

// countingHandler counts the log records of level Error and above.
type countingHandler struct{ n *atomic.Int64 }

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }
func (h countingHandler) Handle(context.Context, slog.Record) error {
	h.n.Add(1)
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }
