package flowrun_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// TestOpenStoreRefusesPartitionDirs: OpenStore on the dir of a kv
// connector with partitions, or on one partition's directory, fails with
// ErrPartitionNotReady naming the directory, instead of opening a stale
// or partial local copy (or an empty store beside the partitions).
func TestOpenStoreRefusesPartitionDirs(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	part := filepath.Join(state, "p011")
	if err := os.MkdirAll(part, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(part, pebblestore.PartitionMarker), []byte("partition\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{state, part} {
		st, err := flowrun.OpenStore(context.Background(), dir, flowrun.StoreOptions{})
		if err == nil {
			st.Close()
			t.Fatalf("%s: opened", dir)
		}
		if !errors.Is(err, flowrun.ErrPartitionNotReady) || !strings.Contains(err.Error(), dir) {
			t.Errorf("%s: %v; want ErrPartitionNotReady naming the directory", dir, err)
		}
	}
}
