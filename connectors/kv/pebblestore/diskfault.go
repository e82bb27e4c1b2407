package pebblestore

// What the store does when its disk is full or its filesystem fails.
//
// Pebble does not survive an I/O error in its commit path: a failed WAL
// write makes a later commit panic (LogWriter.WriteRecord returns the
// flusher's error and DB.commitWrite panics with it), a WAL rotation after
// it panics with the database mutex released, which the runtime turns into
// the unrecoverable "fatal error: sync: unlock of unlocked mutex", and a
// failed MANIFEST write calls Logger.Fatalf. None of these can be recovered
// by the caller, so the store keeps Pebble from ever seeing such an error:
//
//   - A free-space check before each commit group (diskGuard) refuses the
//     group with ErrDiskFull when the filesystem has less free space than
//     the group's log records, those of groups still waiting for their sync,
//     and Options.DiskReserveBytes. A store filled by its own writes stops
//     there, with a clean log and room to spare.
//   - Everything else (another process filling the disk, a filesystem gone
//     read-only, a flush or compaction needing more than the reserve) is
//     caught by failStopFS, the filesystem Pebble is opened on: the first
//     write, sync, create or rename that fails freezes the store's files.
//     From then on nothing Pebble does reaches the disk: log and metadata
//     writes (WAL, MANIFEST, markers, OPTIONS) are dropped and reported as
//     done, so Pebble never reaches the paths above; new sstables and blob
//     files are refused, so flushes and compactions fail as ordinary
//     background errors and nothing is built on data that is not in the log;
//     removals are skipped, so no file the frozen MANIFEST names goes away.
//     The files stay as they were at the moment of the failure: the state a
//     crash at that moment leaves, which Pebble recovers from on the next
//     Open with every write synced before it.
//
// The store fails with the first error either way (ErrFailed, as for any
// failed commit): the syncer checks the freeze after every WAL sync, so a
// group whose sync came after the failure is never reported durable.

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrDiskFull reports a write refused because the store's filesystem has
// less free space than the write needs plus Options.DiskReserveBytes. It
// wraps syscall.ENOSPC, so errors.Is(err, syscall.ENOSPC) holds too.
var ErrDiskFull = fmt.Errorf("%w (store's disk reserve reached)", syscall.ENOSPC)

// Bounds of the default Options.DiskReserveBytes, 1% of the filesystem.
const (
	// MinDiskReserveBytes is the smallest default reserve: room for what
	// an Open writes besides the log (an OPTIONS file of about 3 KiB, a new
	// MANIFEST holding one record per sstable, a log's last block), with
	// a wide margin.
	MinDiskReserveBytes = 1 << 20
	// MaxDiskReserveBytes is the largest default reserve.
	MaxDiskReserveBytes = 1 << 30
)

// defaultDiskReserve returns the reserve for a filesystem of total bytes:
// 1% of it (CockroachDB sizes its ballast the same way), within
// [MinDiskReserveBytes, MaxDiskReserveBytes].
func defaultDiskReserve(total uint64) int64 {
	return min(max(int64(total/100), MinDiskReserveBytes), MaxDiskReserveBytes)
}

// diskGuard checks the store's filesystem for free space before writes.
type diskGuard struct {
	fs      vfs.FS
	stop    *failStop // for the current log's spare room
	dir     string
	reserve int64 // negative: no check
	// unsynced counts the log bytes of groups applied and not yet synced:
	// they are written to the log after the check of the next group.
	unsynced atomic.Int64
}

// check returns an ErrDiskFull error when the filesystem has less than
// need bytes free beyond the reserve and the log bytes still in flight.
func (g *diskGuard) check(need int64) error {
	if g.reserve < 0 {
		return nil
	}
	u, err := g.fs.GetDiskUsage(g.dir)
	if err != nil {
		// Not knowing is no reason to refuse: failStopFS still catches
		// a write that fails.
		return nil
	}
	inFlight := g.unsynced.Load()
	// The log's writes fill its allocated room first.
	var spare int64
	if g.stop != nil {
		spare = g.stop.walSpare()
	}
	if int64(u.AvailBytes) >= max(0, need+inFlight-spare)+g.reserve {
		return nil
	}
	msg := fmt.Sprintf("%s free on the filesystem of %q, less than the reserve of %s the store keeps free",
		fmtBytes(int64(u.AvailBytes)), g.dir, fmtBytes(g.reserve))
	if need > 0 {
		msg += fmt.Sprintf(" plus this commit's %s", fmtBytes(need))
		if inFlight > 0 {
			msg += fmt.Sprintf(" and %s of earlier commits still syncing", fmtBytes(inFlight))
		}
	}
	return fmt.Errorf("%w: %s", ErrDiskFull, msg)
}

// roomToPreallocate reports whether the filesystem has room to
// preallocate length bytes of a log: twice that above the reserve.
func (g *diskGuard) roomToPreallocate(length int64) bool {
	if g.reserve < 0 {
		return true
	}
	u, err := g.fs.GetDiskUsage(g.dir)
	if err != nil {
		return true
	}
	return int64(u.AvailBytes)-g.reserve >= 2*length
}

// fmtBytes formats n bytes for an error message.
func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// failStop holds the first write error of a store's files.
type failStop struct {
	err atomic.Pointer[error]
	// wal is the log file created last, the one Pebble writes.
	wal atomic.Pointer[failStopFile]
	// guard decides whether a log may be preallocated; nil: always.
	guard *diskGuard
}

// walSpare returns the bytes the current log file has allocated beyond
// what was written to it: Pebble preallocates each log (110% of the
// memtable size), and a recycled log keeps its blocks, so its next writes
// take nothing from the filesystem's free space, which counts that room
// as used.
func (f *failStop) walSpare() int64 {
	w := f.wal.Load()
	if w == nil {
		return 0
	}
	return max(0, w.allocated.Load()-w.written.Load())
}

// failed returns the first write error, nil while none happened.
func (f *failStop) failed() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

// fail records err if it is the first.
func (f *failStop) fail(err error) {
	f.err.CompareAndSwap(nil, &err)
}

// frozenErr is what a refused sstable write returns once the files are
// frozen.
func (f *failStop) frozenErr() error {
	return fmt.Errorf("pebblestore: store files frozen after a write failed: %w", f.failed())
}

// fileKind sorts the store's files by how a freeze treats them.
type fileKind int

const (
	// kindLog files (the WAL, MANIFEST, markers, OPTIONS, directories)
	// are ones whose write errors Pebble cannot survive: after a freeze
	// their writes are dropped and reported as done.
	kindLog fileKind = iota
	// kindTable files (sstables, blob files) are written by flushes and
	// compactions, which handle errors: after a freeze they are refused.
	kindTable
)

func kindOf(name string) fileKind {
	base := filepath.Base(name)
	switch {
	case strings.HasSuffix(base, ".sst"), strings.HasSuffix(base, ".blob"):
		return kindTable
	}
	return kindLog
}

// failStopFS is the vfs.FS a store opens Pebble on; see the top of this
// file.
type failStopFS struct {
	vfs.FS
	fs *failStop
}

var _ vfs.FS = (*failStopFS)(nil)

func (f *failStopFS) Unwrap() vfs.FS { return f.FS }

// created wraps the outcome of creating name.
func (f *failStopFS) created(name string, file vfs.File, err error) (vfs.File, error) {
	if err != nil {
		f.fs.fail(err)
		if kindOf(name) == kindTable {
			return nil, err
		}
		return nullFile{name: name}, nil
	}
	ff := &failStopFile{File: file, fs: f.fs, kind: kindOf(name)}
	if strings.HasSuffix(name, ".log") {
		ff.wal = true
		if st, err := file.Stat(); err == nil {
			ff.allocated.Store(st.Size()) // a recycled log's blocks
		}
		f.fs.wal.Store(ff)
	}
	return ff, nil
}

func (f *failStopFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if f.fs.failed() != nil {
		if kindOf(name) == kindTable {
			return nil, f.fs.frozenErr()
		}
		return nullFile{name: name}, nil
	}
	file, err := f.FS.Create(name, category)
	return f.created(name, file, err)
}

func (f *failStopFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if f.fs.failed() != nil {
		return nullFile{name: newname}, nil
	}
	file, err := f.FS.ReuseForWrite(oldname, newname, category)
	return f.created(newname, file, err)
}

func (f *failStopFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, category, opts...)
	if err != nil {
		return nil, err
	}
	return &failStopFile{File: file, fs: f.fs, kind: kindOf(name)}, nil
}

func (f *failStopFS) OpenDir(name string) (vfs.File, error) {
	file, err := f.FS.OpenDir(name)
	if err != nil {
		return nil, err
	}
	return &failStopFile{File: file, fs: f.fs, kind: kindLog}, nil
}

// mutate runs op unless the files are frozen; a failure freezes them and
// is reported as success, as a log write's would be.
func (f *failStopFS) mutate(op func() error) error {
	if f.fs.failed() != nil {
		return nil
	}
	if err := op(); err != nil {
		f.fs.fail(err)
	}
	return nil
}

func (f *failStopFS) Link(oldname, newname string) error {
	return f.mutate(func() error { return f.FS.Link(oldname, newname) })
}

func (f *failStopFS) Rename(oldname, newname string) error {
	return f.mutate(func() error { return f.FS.Rename(oldname, newname) })
}

// Remove and RemoveAll are skipped once frozen, and their errors (a file
// already gone) are Pebble's to handle.
func (f *failStopFS) Remove(name string) error {
	if f.fs.failed() != nil {
		return nil
	}
	return f.FS.Remove(name)
}

func (f *failStopFS) RemoveAll(name string) error {
	if f.fs.failed() != nil {
		return nil
	}
	return f.FS.RemoveAll(name)
}

// failStopFile is a file of the store opened for writing.
type failStopFile struct {
	vfs.File
	fs   *failStop
	kind fileKind
	// written and allocated track a log file (wal) for
	// failStop.walSpare: the bytes written and the end of its
	// preallocated extent.
	wal                bool
	written, allocated atomic.Int64
}

// result turns an operation's error into what Pebble sees: a freeze is
// dropped for log files and refused for tables.
func (f *failStopFile) result(err error) error {
	if err == nil {
		return nil
	}
	f.fs.fail(err)
	if f.kind == kindTable {
		return err
	}
	return nil
}

// frozen reports whether the operation must be skipped, and its error.
func (f *failStopFile) frozen() (bool, error) {
	if f.fs.failed() == nil {
		return false, nil
	}
	if f.kind == kindTable {
		return true, f.fs.frozenErr()
	}
	return true, nil
}

func (f *failStopFile) Write(p []byte) (int, error) {
	if skip, err := f.frozen(); skip {
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n, err := f.File.Write(p)
	f.written.Add(int64(n))
	if err = f.result(err); err == nil {
		n = len(p)
	}
	return n, err
}

func (f *failStopFile) WriteAt(p []byte, off int64) (int, error) {
	if skip, err := f.frozen(); skip {
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	n, err := f.File.WriteAt(p, off)
	if err = f.result(err); err == nil {
		n = len(p)
	}
	return n, err
}

func (f *failStopFile) Sync() error {
	if skip, err := f.frozen(); skip {
		return err
	}
	return f.result(f.File.Sync())
}

func (f *failStopFile) SyncData() error {
	if skip, err := f.frozen(); skip {
		return err
	}
	return f.result(f.File.SyncData())
}

func (f *failStopFile) SyncTo(length int64) (bool, error) {
	if skip, err := f.frozen(); skip {
		return true, err
	}
	full, err := f.File.SyncTo(length)
	return full, f.result(err)
}

// Preallocate errors are ignored by Pebble (a full disk is expected to
// refuse them) and freeze nothing. A log's preallocation is skipped when
// it would take more than half the free space above the reserve: Pebble
// preallocates 110% of the memtable size for every log, the small ones of
// the memtables' ramp-up included, and that room stays taken until the
// log is flushed, which on a small disk may be never (on a 20 MiB
// filesystem the store's first log held 18 MiB for 200 KB of records).
// It is only an optimisation of the log's syncs.
func (f *failStopFile) Preallocate(off, length int64) error {
	if f.fs.failed() != nil {
		return nil
	}
	if f.wal && f.fs.guard != nil && !f.fs.guard.roomToPreallocate(length) {
		return nil
	}
	err := f.File.Preallocate(off, length)
	if err == nil {
		end := off + length
		for {
			cur := f.allocated.Load()
			if cur >= end || f.allocated.CompareAndSwap(cur, end) {
				break
			}
		}
	}
	return err
}

func (f *failStopFile) Close() error {
	err := f.File.Close()
	if f.fs.failed() != nil && f.kind == kindLog {
		return nil
	}
	return f.result(err)
}

// nullFile stands for a log file created after the freeze: nothing of it
// reaches the disk.
type nullFile struct{ name string }

var _ vfs.File = nullFile{}

func (nullFile) Close() error                           { return nil }
func (nullFile) Read([]byte) (int, error)               { return 0, io.EOF }
func (nullFile) ReadAt([]byte, int64) (int, error)      { return 0, io.EOF }
func (nullFile) Write(p []byte) (int, error)            { return len(p), nil }
func (nullFile) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }
func (nullFile) Preallocate(int64, int64) error         { return nil }
func (n nullFile) Stat() (vfs.FileInfo, error)          { return nullInfo{n.name}, nil }
func (nullFile) Sync() error                            { return nil }
func (nullFile) SyncTo(int64) (bool, error)             { return true, nil }
func (nullFile) SyncData() error                        { return nil }
func (nullFile) Prefetch(int64, int64) error            { return nil }
func (nullFile) Fd() uintptr                            { return vfs.InvalidFd }

type nullInfo struct{ name string }

func (i nullInfo) Name() string         { return filepath.Base(i.name) }
func (nullInfo) Size() int64            { return 0 }
func (nullInfo) Mode() os.FileMode      { return 0o644 }
func (nullInfo) ModTime() time.Time     { return time.Time{} }
func (nullInfo) IsDir() bool            { return false }
func (nullInfo) Sys() any               { return nil }
func (nullInfo) DeviceID() vfs.DeviceID { return vfs.DeviceID{} }

// backgroundErrors receives Pebble's background errors (failed flushes and
// compactions). Pebble retries a failed flush at once, without limit: on a
// full or frozen disk that is a loop of failures, and logging each one is
// the flood of hundreds of lines a second seen without this. The first
// error is logged, the others counted (and their total logged at Close);
// once the files are frozen, each retry is delayed, up to a second, until
// the store closes.
type backgroundErrors struct {
	log    *slog.Logger
	dir    string
	fs     *failStop
	closed chan struct{} // closed when the store starts closing

	mu     sync.Mutex
	count  int
	first  error
	delay  time.Duration
	closer sync.Once
}

func (b *backgroundErrors) report(err error) {
	b.mu.Lock()
	b.count++
	first := b.first == nil
	if first {
		b.first = err
	}
	frozen := b.fs.failed() != nil
	if frozen {
		b.delay = min(max(2*b.delay, 10*time.Millisecond), time.Second)
	}
	delay := b.delay
	b.mu.Unlock()
	if first {
		b.log.Error("store background error (later ones are counted, not logged)", "dir", b.dir, "error", err.Error())
	}
	if frozen {
		select {
		case <-b.closed:
		case <-time.After(delay):
		}
	}
}

// stopDelays ends the delays of retries, for the database to close.
func (b *backgroundErrors) stopDelays() {
	b.closer.Do(func() { close(b.closed) })
}

// summary logs how many errors were not logged.
func (b *backgroundErrors) summary() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.count > 1 {
		b.log.Error("store background errors", "dir", b.dir, "count", b.count, "first", b.first.Error())
	}
}

// listener returns the event listener reporting background errors to b.
func (b *backgroundErrors) listener() pebble.EventListener {
	return pebble.EventListener{BackgroundError: b.report}
}

// fsFailure returns the error a store on dir reports for err, the first
// write error of its files.
func fsFailure(dir string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrDiskFull) {
		return err
	}
	return fmt.Errorf("a write to the store's files failed, nothing more is written to them: %w", err)
}

// admit checks that g may be applied: the store's files are not frozen
// and the disk has room for its log records. An admitted group's bytes
// count as in flight until the syncer is done with it.
func (s *Store) admit(g *group) error {
	if err := s.stop.failed(); err != nil {
		return fsFailure(s.dir, err)
	}
	n := int64(len(g.repr))
	if err := s.guard.check(n); err != nil {
		return err
	}
	g.logBytes = n
	s.guard.unsynced.Add(n)
	return nil
}

// guardFiles prepares the opening of a store on dir with popts: it checks
// that the filesystem has the reserve free, and puts failStopFS and the
// background error listener in place.
func guardFiles(dir string, opts Options, popts *pebble.Options) (*failStop, *diskGuard, *backgroundErrors, error) {
	inner := popts.FS
	if inner == nil {
		inner = vfs.Default
	}
	guard := &diskGuard{fs: inner, dir: dir, reserve: opts.DiskReserveBytes}
	if guard.reserve == 0 {
		guard.reserve = MinDiskReserveBytes
		if u, err := inner.GetDiskUsage(dir); err == nil {
			guard.reserve = defaultDiskReserve(u.TotalBytes)
		}
	}
	if err := guard.check(0); err != nil {
		return nil, nil, nil, err
	}
	stop := &failStop{}
	guard.stop = stop
	stop.guard = guard
	popts.FS = &failStopFS{FS: inner, fs: stop}
	bgErr := &backgroundErrors{log: opts.Logger, dir: dir, fs: stop, closed: make(chan struct{})}
	l := bgErr.listener()
	if popts.EventListener != nil {
		l = pebble.TeeEventListener(l, *popts.EventListener)
	}
	popts.EventListener = &l
	return stop, guard, bgErr, nil
}
