package pebblestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/record"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/wal"
)

// ErrWALCorrupt reports a write-ahead log holding intact records after a
// damaged one. Pebble replays a log up to its first damaged chunk and
// treats the rest as the log's end (a crash can leave a torn record there),
// so opening the store would silently drop those records, writes that
// were acknowledged. Open refuses such a store unless
// Options.AcceptWALLoss is set; the error (a *WALLossError) says which log,
// from which offset, and how many bytes.
var ErrWALCorrupt = errors.New("write-ahead log is corrupt: acknowledged writes would be lost")

// WALLoss describes the records of one write-ahead log file that Pebble's
// recovery would discard.
type WALLoss struct {
	// File is the log file's path.
	File string
	// Offset is where replay stops: the end of the last record read intact.
	Offset int64
	// Bytes counts the bytes from Offset to the end of the last intact
	// chunk of the same log after it (or to the start of the log's EOF
	// trailer): the damaged region and every record behind it.
	Bytes int64
}

// String describes the loss for an error message: file, offset, bytes.
func (l WALLoss) String() string {
	return fmt.Sprintf("%s: replay stops at byte %d, discarding %d bytes that hold intact records after a damaged one",
		l.File, l.Offset, l.Bytes)
}

// WALLossError is the error of Open for a store whose write-ahead logs
// would lose records; it wraps ErrWALCorrupt.
type WALLossError struct {
	// Dir is the store directory.
	Dir string
	// Losses lists each damaged log, in log number order.
	Losses []WALLoss
}

// Error names every damaged log and the way to proceed.
func (e *WALLossError) Error() string {
	parts := make([]string, len(e.Losses))
	for i, l := range e.Losses {
		parts[i] = l.String()
	}
	return fmt.Sprintf("open store %q: %s: %v (the log is left untouched: copy the directory aside, then open with AcceptWALLoss to drop those records and keep a copy of the log)",
		e.Dir, strings.Join(parts, "; "), ErrWALCorrupt)
}

// Unwrap returns ErrWALCorrupt.
func (e *WALLossError) Unwrap() error { return ErrWALCorrupt }

// lostWALDir is the subdirectory of a store where Open, with AcceptWALLoss,
// copies every write-ahead log it lets Pebble truncate. Pebble ignores it.
const lostWALDir = "lost-wal"

// checkWALs reads every write-ahead log of the store in dir the way
// Pebble's recovery does (wal.LogicalLog.OpenForRead, the reader Open
// replays with) and reports each log in which replay would stop before
// intact records of the same log.
//
// Where replay stops is not itself a loss: the log of a crashed process
// ends with a torn record, the preallocated zeros of a new log, or the
// records of an older log whose file was recycled (another log number).
// A loss is shown only by a valid chunk of this log's number after a gap
// in the chain of chunks that starts where replay stopped: the chunks of
// a torn last record run on from that point without a gap, and nothing of
// a log is written after its end. Obsolete logs Pebble would not replay
// are checked too; a log is only obsolete once its records are in
// sstables, and a damaged one cannot be told apart without the manifest,
// so it is reported as well (AcceptWALLoss then loses nothing).
func checkWALs(fs vfs.FS, dir string, walDirs ...string) ([]WALLoss, error) {
	dirs := []wal.Dir{{FS: fs, Dirname: dir}}
	for _, d := range walDirs {
		if _, err := fs.Stat(d); err == nil { // Pebble creates it on first open
			dirs = append(dirs, wal.Dir{FS: fs, Dirname: d})
		}
	}
	logs, err := wal.Scan(dirs...)
	if err != nil {
		return nil, fmt.Errorf("list write-ahead logs: %w", err)
	}
	var losses []WALLoss
	for _, ll := range logs {
		loss, err := checkWAL(fs, ll)
		if err != nil {
			return nil, err
		}
		if loss != nil {
			losses = append(losses, *loss)
		}
	}
	return losses, nil
}

// checkWAL reads ll as replay would and, where replay stops, looks for
// intact chunks of ll after a gap.
func checkWAL(fs vfs.FS, ll wal.LogicalLog) (*WALLoss, error) {
	rr := ll.OpenForRead()
	defer func() { _ = rr.Close() }()
	var stop wal.Offset
	for {
		r, off, err := rr.NextRecord()
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		if err != nil {
			// Replay stops here, at the start of the record it could not
			// read, cleanly (io.EOF, an EOF trailer) or not.
			stop = off
			break
		}
	}
	if stop.PhysicalFile == "" {
		return nil, nil // no segment could be opened: nothing to replay
	}
	f, err := fs.Open(stop.PhysicalFile)
	if err != nil {
		return nil, fmt.Errorf("check write-ahead log %s: %w", stop.PhysicalFile, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("check write-ahead log %s: %w", stop.PhysicalFile, err)
	}
	if st.Size() <= stop.Physical {
		return nil, nil
	}
	tail := make([]byte, st.Size()-stop.Physical)
	if _, err := f.ReadAt(tail, stop.Physical); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("check write-ahead log %s: %w", stop.PhysicalFile, err)
	}
	lastEnd, found := intactAfterGap(tail, stop.Physical, uint64(ll.Num))
	if !found {
		return nil, nil
	}
	return &WALLoss{File: stop.PhysicalFile, Offset: stop.Physical, Bytes: lastEnd - stop.Physical}, nil
}

// Chunk layout, from the record package's documentation: a recyclable
// chunk header is checksum (4 bytes), payload length (2), type (1) and
// log number (4); the WAL-sync format adds an 8-byte offset. Logs are cut
// into 32 KiB blocks that no chunk crosses, and the writer pads a block
// with zeros when even a header no longer fits.
const (
	walBlockSize          = 32 << 10
	recyclableHeaderBytes = 11
	walSyncHeaderBytes    = 19
)

// intactAfterGap scans tail, the bytes of a log numbered logNum from file
// offset base on, for chunks of that log that record.Reader accepts, and
// for the log's EOF trailer (an empty chunk numbered logNum+1, written
// when the log is closed, after its last record). It returns the end of
// the last such chunk (the start of the trailer) and whether any lies
// after a gap in the chain that starts at base.
func intactAfterGap(tail []byte, base int64, logNum uint64) (lastEnd int64, found bool) {
	var own, trailer [4]byte
	binary.LittleEndian.PutUint32(own[:], uint32(logNum))
	binary.LittleEndian.PutUint32(trailer[:], uint32(logNum+1))
	chainEnd := base // where the gapless chain of chunks from base ends
	// next[k] is the next candidate chunk start at or after i whose log
	// number (at +7) is own (k 0) or trailer's (k 1), len(tail) for none;
	// each is searched again only once i has passed it.
	nums := [2][]byte{own[:], trailer[:]}
	next := [2]int{-1, -1}
	for i := 0; i+recyclableHeaderBytes <= len(tail); {
		for k := range next {
			if next[k] < i {
				next[k] = len(tail)
				if j := bytes.Index(tail[i+7:], nums[k]); j >= 0 {
					next[k] = i + j
				}
			}
		}
		p := min(next[0], next[1])
		if p >= len(tail) {
			break
		}
		i = p + 1
		end, ok := validChunk(tail, base, p, logNum)
		isTrailer := false
		if !ok {
			if !eofTrailer(tail, p, logNum) {
				continue
			}
			end, isTrailer = base+int64(p)+recyclableHeaderBytes, true
		}
		start := base + int64(p)
		gapless := start == chainEnd || (start%walBlockSize == 0 && start-chainEnd < walSyncHeaderBytes)
		switch {
		case gapless:
			chainEnd = end
		case isTrailer:
			return start, true
		default:
			found, lastEnd = true, end
		}
		if isTrailer {
			break // nothing of the log follows its trailer
		}
		i = int(end - base)
	}
	return lastEnd, found
}

// validChunk reports whether a chunk of log logNum that record.Reader
// accepts (type, log number, length within its block, checksum) starts at
// tail[p], and where it ends (a file offset).
func validChunk(tail []byte, base int64, p int, logNum uint64) (end int64, ok bool) {
	if p+recyclableHeaderBytes > len(tail) || binary.LittleEndian.Uint32(tail[p+7:]) != uint32(logNum) {
		return 0, false
	}
	header := recyclableHeaderBytes
	if typ := tail[p+6]; typ >= 9 {
		header = walSyncHeaderBytes
	}
	n := p + header + int(binary.LittleEndian.Uint16(tail[p+4:p+6]))
	blockEnd := int((base+int64(p))/walBlockSize+1)*walBlockSize - int(base)
	if n > len(tail) || n > blockEnd {
		return 0, false
	}
	// The reader is given exactly the chunk, as if it were a whole log:
	// Next returns the record of a full or first chunk, skips a valid
	// middle or last chunk and then meets the end (io.EOF), and fails on
	// anything invalid.
	rd := newRecordReader(record.NewReader, bytes.NewReader(tail[p:n]), logNum)
	_, err := rd.Next()
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, false
	}
	return base + int64(n), true
}

// eofTrailer reports whether the EOF trailer of log logNum starts at
// tail[p]: a header the reader takes for the end of the log (a chunk of
// the next log number), with the zero checksum and length the writer
// gives it.
func eofTrailer(tail []byte, p int, logNum uint64) bool {
	if p+recyclableHeaderBytes > len(tail) || binary.LittleEndian.Uint32(tail[p+7:]) != uint32(logNum+1) ||
		binary.LittleEndian.Uint32(tail[p:]) != 0 || binary.LittleEndian.Uint16(tail[p+4:]) != 0 {
		return false
	}
	rd := newRecordReader(record.NewReader, bytes.NewReader(tail[p:p+recyclableHeaderBytes]), logNum)
	_, err := rd.Next()
	return errors.Is(err, io.EOF)
}

// newRecordReader calls record.NewReader, whose log number parameter has
// a type of Pebble's internal package, with logNum converted to it.
func newRecordReader[N ~uint64](newReader func(io.Reader, N) *record.Reader, r io.Reader, logNum uint64) *record.Reader {
	return newReader(r, N(logNum))
}

// acceptWALLoss copies each damaged log into dir/lost-wal, so the records
// Pebble is about to drop are kept, and logs the loss at error level.
func acceptWALLoss(fs vfs.FS, dir string, losses []WALLoss, log *slog.Logger) error {
	dst := fs.PathJoin(dir, lostWALDir)
	if err := fs.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("keep damaged write-ahead logs: %w", err)
	}
	for _, l := range losses {
		to := fs.PathJoin(dst, filepath.Base(l.File))
		if err := vfs.CopyAcrossFS(fs, l.File, fs, to); err != nil {
			return fmt.Errorf("keep damaged write-ahead log %s: %w", l.File, err)
		}
		log.Error("store opened without records of a damaged write-ahead log (AcceptWALLoss)",
			"dir", dir, "log", l.File, "offset", l.Offset, "bytes_lost", l.Bytes, "copy", to)
	}
	return nil
}

// checkBeforeReplay runs checkWALs on the store in dir before Pebble
// replays its logs (and, once their records are flushed, deletes or
// recycles them): a loss fails with a *WALLossError, or with
// AcceptWALLoss is kept and logged.
func checkBeforeReplay(dir string, popts *pebble.Options, opts Options) error {
	fs := popts.FS
	if fs == nil {
		fs = vfs.Default
	}
	var walDirs []string
	if d := popts.WALDir; d != "" {
		// Pebble's {store_path} prefix stands for dir, as in Open.
		if rest, ok := strings.CutPrefix(d, "{store_path}"); ok {
			d = dir + rest
		}
		if d != dir {
			walDirs = append(walDirs, d)
		}
	}
	losses, err := checkWALs(fs, dir, walDirs...)
	if err != nil {
		return fmt.Errorf("open store %q: %w", dir, err)
	}
	if len(losses) == 0 {
		return nil
	}
	if !opts.AcceptWALLoss {
		return &WALLossError{Dir: dir, Losses: losses}
	}
	if err := acceptWALLoss(fs, dir, losses, opts.Logger); err != nil {
		return fmt.Errorf("open store %q: %w", dir, err)
	}
	return nil
}
