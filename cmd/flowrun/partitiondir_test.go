package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// TestKVVerbsRefusePartitionDirs: every flowrun kv verb on the dir of a
// kv connector with partitions, or on one partition's directory, exits 1
// saying why and what to do, prints nothing on stdout and opens no
// stale local copy.
func TestKVVerbsRefusePartitionDirs(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	part := filepath.Join(state, "p002")
	if err := os.MkdirAll(part, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(part, pebblestore.PartitionMarker), []byte("partition\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := pebblestore.Open(part, pebblestore.Options{Partition: true})
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 1)
	set := func(tx kv.Txn) error { return tx.Set([]byte("some key"), []byte(`"stale"`), 0) }
	if err := s.Update(context.Background(), []kv.TxnFunc{set}, errs); err != nil || errs[0] != nil {
		t.Fatal(err, errs[0])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{state, part} {
		for _, args := range [][]string{
			{"kv", "get", dir, "a", "--namespace", "n"},
			{"kv", "dump", dir},
			{"kv", "put", dir, "b", "1", "--namespace", "n"},
		} {
			code, stdout, stderr := runCLI(t, "", args...)
			if code != 1 || stdout != "" || !strings.Contains(stderr, "partition not ready") ||
				!strings.Contains(stderr, "through the running flow") || !strings.Contains(stderr, dir) {
				t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 1 naming the directory, the partitions and what to do", args, code, stdout, stderr)
			}
		}
	}
}
