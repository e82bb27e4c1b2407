package flock

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// TestTryLock: a second open of a locked file, even by another path, is
// refused while the first stays open, and granted once it is closed.
func TestTryLock(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no flock")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	open := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	first := open(path)
	if held, unsupported, err := TryLock(first); held || unsupported || err != nil {
		t.Fatalf("first lock: held %t, unsupported %t, %v", held, unsupported, err)
	}
	second := open(link)
	defer second.Close()
	if held, _, err := TryLock(second); !held || err != nil {
		t.Fatalf("second lock through a symlink: held %t, %v; want held", held, err)
	}
	first.Close()
	if held, _, err := TryLock(second); held || err != nil {
		t.Fatalf("lock after the first was closed: held %t, %v", held, err)
	}
}
