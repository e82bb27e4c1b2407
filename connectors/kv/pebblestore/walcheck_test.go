package pebblestore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/wal"
)

// lastWAL returns the path of the newest write-ahead log of dir.
func lastWAL(t *testing.T, dir string) string {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	if len(logs) == 0 {
		t.Fatalf("no write-ahead log in %s", dir)
	}
	slices.Sort(logs)
	return logs[len(logs)-1]
}

// flipByteOf flips one byte of the first occurrence of marker in file.
func flipByteOf(t *testing.T, file, marker string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(marker))
	if i < 0 {
		t.Fatalf("%q not found in %s", marker, file)
	}
	b[i+len(marker)-1] ^= 0x01
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeGroups writes n commit groups of one key each: gNNN = vNNN.
func writeGroups(t *testing.T, s *Store, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		k := fmt.Sprintf("g%03d", i)
		if errs := update(t, s, set(k, "value-"+k, 0)); errs[0] != nil {
			t.Fatal(errs[0])
		}
	}
}

func TestWALCorruptionRefusesOpen(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	writeGroups(t, s, 0, 20) // 20 groups, each its own WAL record
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wal := lastWAL(t, dir)
	flipByteOf(t, wal, "value-g005") // a record with 14 acknowledged ones after it
	before, _ := os.ReadFile(wal)

	_, err := Open(dir, Options{})
	if !errors.Is(err, ErrWALCorrupt) {
		t.Fatalf("Open of a store with a damaged WAL record: got %v, want ErrWALCorrupt", err)
	}
	var le *WALLossError
	if !errors.As(err, &le) || len(le.Losses) != 1 {
		t.Fatalf("error %v is not a WALLossError with one loss", err)
	}
	l := le.Losses[0]
	if l.File != wal || l.Offset <= 0 || l.Bytes <= 0 {
		t.Fatalf("loss %+v: want file %s, positive offset and bytes", l, wal)
	}
	st, _ := os.Stat(wal)
	if l.Offset+l.Bytes > st.Size() {
		t.Fatalf("loss %+v runs past the end of the %d-byte log", l, st.Size())
	}
	for _, want := range []string{wal, strconv.FormatInt(l.Bytes, 10) + " bytes", "AcceptWALLoss"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if after, _ := os.ReadFile(wal); !bytes.Equal(before, after) {
		t.Fatal("the refused open changed the log")
	}

	// AcceptWALLoss opens it, keeping a copy of the log, and says so.
	var logs bytes.Buffer
	s, err = Open(dir, Options{AcceptWALLoss: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open with AcceptWALLoss: %v", err)
	}
	if kept, err := os.ReadFile(filepath.Join(dir, lostWALDir, filepath.Base(wal))); err != nil || !bytes.Equal(kept, before) {
		t.Fatalf("copy of the damaged log: %v", err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "bytes_lost="+strconv.FormatInt(l.Bytes, 10)) {
		t.Fatalf("no error-level report of the loss in the log:\n%s", logs.String())
	}
	var g got
	update(t, s, get("g004", &g))
	if !g.found {
		t.Fatal("g004, written before the damaged record, is lost")
	}
	update(t, s, get("g010", &g))
	if g.found {
		t.Fatal("g010 survived: the damage this test makes no longer loses records; revisit the test")
	}
	writeGroups(t, s, 100, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Once Pebble has dropped the records the store opens cleanly.
	s = openTest(t, dir)
	_ = s.Close()
}

func TestWALCheckNoFalseAlarms(t *testing.T) {
	dir := t.TempDir()
	opts := Options{MemTableBytes: 64 << 10} // rotate (and recycle) logs often
	for round := range 4 {
		s, err := Open(dir, opts)
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		for i := range 50 {
			k := fmt.Sprintf("r%d-%03d", round, i)
			if errs := update(t, s, set(k, strings.Repeat("x", 4000), 0)); errs[0] != nil {
				t.Fatal(errs[0])
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		losses, err := checkWALs(vfs.Default, dir)
		if err != nil || len(losses) != 0 {
			t.Fatalf("round %d: clean store reported %v, %v", round, losses, err)
		}
	}
}

// TestWALCheckAfterKill SIGKILLs a process writing to a store, again and
// again, with logs small enough to rotate and be recycled: every reopen
// must succeed (no false alarm) and keep every acknowledged write.
func TestWALCheckAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills writer processes")
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	for round := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestWALCheckKillHelper$")
		cmd.Env = append(os.Environ(), "PEBBLESTORE_KILL_DIR="+dir, "PEBBLESTORE_KILL_ROUND="+strconv.Itoa(round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() }) // on an early failure
		sc := bufio.NewScanner(out)
		n := 0
		killAt := 200 + round*150
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "FAIL ") {
				t.Fatalf("round %d: writer: %s\n%s", round, line, stderr.String())
			}
			if k, ok := strings.CutPrefix(line, "acked "); ok {
				acked[k] = true
				if n++; n == killAt {
					_ = cmd.Process.Signal(syscall.SIGKILL)
				}
			}
		}
		_ = cmd.Wait()
		if n < killAt {
			t.Fatalf("round %d: writer stopped after %d acknowledged writes:\n%s", round, n, stderr.String())
		}
		if losses, err := checkWALs(vfs.Default, dir); err != nil || len(losses) != 0 {
			t.Fatalf("round %d: store after SIGKILL reported %v, %v", round, losses, err)
		}
		s, err := Open(dir, Options{MemTableBytes: 64 << 10})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		for k := range acked {
			var g got
			update(t, s, get(k, &g))
			if !g.found {
				t.Fatalf("round %d: acknowledged %s lost", round, k)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWALCheckKillHelper is the writer process of TestWALCheckAfterKill.
func TestWALCheckKillHelper(t *testing.T) {
	dir := os.Getenv("PEBBLESTORE_KILL_DIR")
	if dir == "" {
		t.Skip("run by TestWALCheckAfterKill")
	}
	s, err := Open(dir, Options{MemTableBytes: 64 << 10})
	if err != nil {
		fmt.Printf("FAIL open: %v\n", err)
		return
	}
	round := os.Getenv("PEBBLESTORE_KILL_ROUND")
	value := strings.Repeat("y", 3000)
	deadline := time.Now().Add(5 * time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		k := fmt.Sprintf("k%s-%05d", round, i)
		errs := update(t, s, set(k, value, 0))
		if errs[0] != nil {
			fmt.Printf("FAIL put: %v\n", errs[0])
			return
		}
		fmt.Printf("acked %s\n", k)
	}
}

// The check must see a log as Pebble's replay does: confirm on a plain
// Pebble database that the damage the tests make is what Pebble, left to
// itself, silently drops.
func TestPebbleDropsRecordsAfterDamage(t *testing.T) {
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := db.Set([]byte(fmt.Sprintf("k%d", i)), []byte(fmt.Sprintf("value-k%d", i)), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	flipByteOf(t, lastWAL(t, dir), "value-k3")
	if losses, err := checkWALs(vfs.Default, dir); err != nil || len(losses) != 1 {
		t.Fatalf("checkWALs: %v, %v; want one loss", losses, err)
	}
	db, err = pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatalf("Pebble now refuses the damaged log itself (%v): the check may be redundant", err)
	}
	defer db.Close()
	if _, closer, err := db.Get([]byte("k7")); err == nil {
		_ = closer.Close()
		t.Fatal("Pebble kept k7, written after the damaged record")
	}
}

// recordOffsets returns the file offset of each record of the newest log
// of dir, as Pebble's replay reads them.
func recordOffsets(t *testing.T, dir string) []int64 {
	t.Helper()
	logs, err := wal.Scan(wal.Dir{FS: vfs.Default, Dirname: dir})
	if err != nil || len(logs) == 0 {
		t.Fatalf("wal.Scan: %v, %d logs", err, len(logs))
	}
	rr := logs[len(logs)-1].OpenForRead()
	defer rr.Close()
	var offs []int64
	for {
		_, off, err := rr.NextRecord()
		if err != nil {
			return offs
		}
		offs = append(offs, off.Physical)
	}
}

// trailerBytes is the size of the EOF trailer that closing a log writes.
const trailerBytes = 11

// TestWALCheckDamage damages a log in several ways: where the damage is
// followed by intact records the check must report it, with the bytes
// from the damage to the end of the last intact chunk.
func TestWALCheckDamage(t *testing.T) {
	big := strings.Repeat("b", 80<<10) // a record of 3 to 4 chunks over as many blocks
	tests := []struct {
		name string
		// values written, one commit group each
		values []string
		// damage returns the offset of the byte to change and its new
		// value, from the record offsets and the file
		damage   func(offs []int64, b []byte) (int, byte)
		wantLoss bool
	}{
		{"payload byte of a record in the middle", slices.Repeat([]string{"v"}, 10),
			func(offs []int64, b []byte) (int, byte) { return int(offs[4]) + 30, b[offs[4]+30] ^ 0x20 }, true},
		{"length of a chunk in the middle", slices.Repeat([]string{"v"}, 10),
			func(offs []int64, b []byte) (int, byte) { return int(offs[4]) + 4, b[offs[4]+4] + 1 }, true},
		{"chunk type made invalid", slices.Repeat([]string{"v"}, 10),
			func(offs []int64, b []byte) (int, byte) { return int(offs[4]) + 6, 0x7f }, true},
		{"log number made the next one (an EOF trailer)", slices.Repeat([]string{"v"}, 10),
			func(offs []int64, b []byte) (int, byte) { return int(offs[4]) + 7, b[offs[4]+7] + 1 }, true},
		{"first chunk of a record spanning blocks, last in the log", []string{"v", "v", big},
			func(offs []int64, b []byte) (int, byte) { return int(offs[2]) + 40, b[offs[2]+40] ^ 1 }, true},
		{"first chunk of a record spanning blocks, records after it", []string{"v", big, "v", "v"},
			func(offs []int64, b []byte) (int, byte) { return int(offs[1]) + 40, b[offs[1]+40] ^ 1 }, true},
		// A closed log ends with an EOF trailer: damage to its last
		// record shows.
		{"last record of a closed log", slices.Repeat([]string{"v"}, 10),
			func(offs []int64, b []byte) (int, byte) { at := len(b) - trailerBytes - 5; return at, b[at] ^ 1 }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openTest(t, dir)
			for i, v := range tc.values {
				if errs := update(t, s, set(fmt.Sprintf("k%02d", i), v, 0)); errs[0] != nil {
					t.Fatal(errs[0])
				}
			}
			offs := recordOffsets(t, dir)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			file := lastWAL(t, dir)
			b, _ := os.ReadFile(file)
			// Close ends the log with an EOF trailer.
			at, v := tc.damage(offs, b)
			b[at] = v
			if err := os.WriteFile(file, b, 0o644); err != nil {
				t.Fatal(err)
			}
			losses, err := checkWALs(vfs.Default, dir)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.wantLoss {
				if len(losses) != 0 {
					t.Fatalf("reported %v", losses)
				}
				return
			}
			if len(losses) != 1 {
				t.Fatalf("reported %v, want one loss", losses)
			}
			l := losses[0]
			if end := int64(len(b) - trailerBytes); l.Offset > int64(at) || l.Offset+l.Bytes != end {
				t.Fatalf("loss %+v: want it to start at or before the damage at %d and end where the EOF trailer starts, %d", l, at, end)
			}
		})
	}
}

// The last record of a log a crash cut off (no EOF trailer) cannot be told
// from a record the crash tore: damage to it is not reported.
func TestWALCheckLastRecordOfCrashedLog(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	writeGroups(t, s, 0, 10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	file := lastWAL(t, dir)
	b, _ := os.ReadFile(file)
	b = b[:len(b)-trailerBytes]
	b[len(b)-3] ^= 1
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if losses, err := checkWALs(vfs.Default, dir); err != nil || len(losses) != 0 {
		t.Fatalf("reported %v, %v", losses, err)
	}
}

// Logs kept apart (pebble.Options.WALDir) are checked too.
func TestWALCheckSeparateWALDir(t *testing.T) {
	dir := t.TempDir()
	walDir := filepath.Join(t.TempDir(), "wal")
	opts := Options{Pebble: func(o *pebble.Options) { o.WALDir = walDir }}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	writeGroups(t, s, 0, 10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	flipByteOf(t, lastWAL(t, walDir), "value-g003")
	if _, err := Open(dir, opts); !errors.Is(err, ErrWALCorrupt) {
		t.Fatalf("Open: %v, want ErrWALCorrupt", err)
	}
}
