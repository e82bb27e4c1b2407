package pebblestore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestPoolBindMount mounts a store directory a second time (a bind mount):
// the same directory under two real paths. The pool refuses the second
// path with an error naming both; Open refuses it as locked.
func TestPoolBindMount(t *testing.T) {
	tmp := t.TempDir()
	state, mnt := filepath.Join(tmp, "state"), filepath.Join(tmp, "mnt")
	for _, d := range []string{state, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount(state, mnt, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("bind mount not permitted here: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	p := NewPool()
	a, err := p.Open(state, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = p.Open(mnt, Options{})
	if !errors.Is(err, ErrDirIdentity) || !strings.Contains(err.Error(), state) || !strings.Contains(err.Error(), mnt) {
		t.Errorf("Pool.Open of the bind mount: %v, want ErrDirIdentity naming %q and %q", err, state, mnt)
	}
	t.Log(err)
	s, err := Open(mnt, Options{})
	if err == nil {
		s.Close()
		t.Fatal("Open of the bind mount of an open store succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("Open of the bind mount: %v, want ErrLocked", err)
	}
}
