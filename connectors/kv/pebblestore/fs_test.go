//go:build unix

package pebblestore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestStoreFilesArePrivate opens stores under a umask that lets everyone
// read and write (0000): a directory the store creates must be 0700 and
// every file in it 0600 (log, sstables, MANIFEST, OPTIONS, LOCK, markers),
// also after a reopen, which recycles logs. A directory that existed with
// looser modes keeps them; the files the store writes in it are still
// 0600.
func TestStoreFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	tests := []struct {
		name    string
		premode os.FileMode // 0: created by the store
		want    os.FileMode
	}{
		{name: "new directory", want: dirMode},
		{name: "existing 0777 directory kept", premode: 0o777, want: 0o777},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "parent", "state")
			if tt.premode != 0 {
				if err := os.MkdirAll(dir, tt.premode); err != nil {
					t.Fatal(err)
				}
			}
			for round := range 2 {
				s := openTest(t, dir)
				for i := range 100 {
					update(t, s, set(strings.Repeat("k", i+1), "value", 0))
				}
				if err := s.db.Flush(); err != nil { // an sstable
					t.Fatal(err)
				}
				update(t, s, set("after-flush", "v", 0)) // and a log with a record
				checkModes(t, dir, tt.want, round)
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				checkModes(t, dir, tt.want, round)
			}
			if fi, err := os.Stat(filepath.Dir(dir)); tt.premode == 0 && (err != nil || fi.Mode().Perm() != 0o755) {
				t.Errorf("parent directory: %v %v, want 0755 (parents are not made private)", fi.Mode(), err)
			}
		})
	}
}

func checkModes(t *testing.T, dir string, wantDir os.FileMode, round int) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != wantDir {
		t.Errorf("round %d: directory mode %04o, want %04o", round, got, wantDir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		for _, k := range []string{".log", ".sst", "MANIFEST-", "OPTIONS-", "LOCK", "marker."} {
			if strings.Contains(name, k) {
				kinds[k] = true
			}
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a compaction since the listing
		}
		if err != nil {
			t.Fatal(err)
		}
		if info.IsDir() {
			if info.Mode().Perm() != dirMode {
				t.Errorf("round %d: subdirectory %s mode %04o, want %04o", round, name, info.Mode().Perm(), dirMode)
			}
			continue
		}
		if got := info.Mode().Perm(); got != fileMode {
			t.Errorf("round %d: %s mode %04o, want %04o", round, name, got, fileMode)
		}
	}
	for _, k := range []string{".log", ".sst", "MANIFEST-", "OPTIONS-", "LOCK", "marker."} {
		if !kinds[k] {
			t.Errorf("round %d: no %s file to check among %d entries", round, k, len(entries))
		}
	}
}
