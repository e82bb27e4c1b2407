package kvtool

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// TestOpenRefusesStoreHeldInProcess opens a store through a Pool, as a flow
// of this process does, and then the tools' Open on the same directory by
// other paths: each must be refused as in use (a second Pebble instance on
// the directory would lose writes), naming the path it was given.
func TestOpenRefusesStoreHeldInProcess(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "state")
	if err := os.Mkdir(filepath.Join(tmp, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	held, err := pebblestore.NewPool().Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := os.Symlink("state", filepath.Join(tmp, "link")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, filepath.Join(tmp, "link"), tmp + "/x/../state"} {
		for _, create := range []bool{false, true} {
			s, err := Open(path, OpenOptions{Create: create})
			if err == nil {
				s.Close()
				t.Fatalf("Open(%q, %t) of a store held in this process succeeded", path, create)
			}
			if !errors.Is(err, pebblestore.ErrLocked) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open(%q, %t): %v, want ErrLocked naming the path", path, create, err)
			}
		}
	}
}
