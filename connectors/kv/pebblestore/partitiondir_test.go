package pebblestore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
)

// makePartitionStore writes key k in a partition store at dir, as its
// owner leaves it: opened with Partition, marked with PartitionMarker.
func makePartitionStore(t *testing.T, dir, k string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, PartitionMarker), []byte("partition\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, Options{Partition: true})
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 1)
	if err := s.Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error { return tx.Set([]byte(k), []byte(`1`), 0) }}, errs); err != nil || errs[0] != nil {
		t.Fatal(err, errs[0])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPartitionDirsAreRefused: a partitioned connector's dir and each of
// its partition directories are refused by Open without
// Options.Partition (ErrPartitionDir, which is kv.ErrPartitionNotReady),
// naming the directory and what to do, and nothing is written in them; a
// partition directory opens with Partition, and a directory merely named
// like a partition (no marker) is an ordinary store.
func TestPartitionDirsAreRefused(t *testing.T) {
	root := filepath.Join(t.TempDir(), "state")
	makePartitionStore(t, filepath.Join(root, "p000"), "a")
	makePartitionStore(t, filepath.Join(root, "p003"), "b")
	plain := filepath.Join(t.TempDir(), "plain")
	if err := os.MkdirAll(filepath.Join(plain, "p001"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, dir string
		opts      Options
		refused   string // "" when it opens
	}{
		{"connector dir", root, Options{}, "2 partitions (p000 ... p003)"},
		{"partition dir", filepath.Join(root, "p003"), Options{}, "local copy of one partition"},
		{"partition dir, as its owner", filepath.Join(root, "p003"), Options{Partition: true}, ""},
		{"not a partition", plain, Options{}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadDir(tt.dir)
			s, err := Open(tt.dir, tt.opts)
			if tt.refused == "" {
				if err != nil {
					t.Fatal(err)
				}
				_ = s.Close()
				return
			}
			if err == nil {
				_ = s.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrPartitionDir) || !errors.Is(err, kv.ErrPartitionNotReady) {
				t.Fatalf("error %v is not ErrPartitionDir and kv.ErrPartitionNotReady", err)
			}
			for _, want := range []string{tt.dir, tt.refused, "through the running flow"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			after, _ := os.ReadDir(tt.dir)
			if len(after) != len(before) {
				t.Errorf("refused open changed the directory: %d entries, then %d", len(before), len(after))
			}
		})
	}
}
