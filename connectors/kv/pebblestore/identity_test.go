package pebblestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
)

// samePlace builds, under a fresh temporary directory holding the store
// directory "state" (and a plain directory "x"), the paths of the cases:
// each pair reaches the same directory by different spellings.
type samePlace struct {
	name          string
	first, second string // relative to the temporary directory
	// setup runs in the temporary directory before either path is used.
	setup func(t *testing.T, tmp string)
	// noState leaves "state" to be created by the first Open.
	noState bool
}

func symlink(target, name string) func(t *testing.T, tmp string) {
	return func(t *testing.T, tmp string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(tmp, name)); err != nil {
			t.Fatal(err)
		}
	}
}

var samePlaces = []samePlace{
	{name: "symlink and x/../state", first: "link", second: "x/../state", setup: symlink("state", "link")},
	{name: "state and symlink", first: "state", second: "link", setup: symlink("state", "link")},
	{name: "absolute symlink and state", first: "abslink", second: "state", setup: func(t *testing.T, tmp string) {
		symlink(filepath.Join(tmp, "state"), "abslink")(t, tmp)
	}},
	{name: "symlink to a symlink", first: "link2", second: "state/", setup: func(t *testing.T, tmp string) {
		symlink("state", "link")(t, tmp)
		symlink("link", "link2")(t, tmp)
	}},
	{name: "symlinked parent", first: "parent/state", second: "x/../state", setup: symlink(".", "parent")},
	{name: "created, then x/../state", first: "state", second: "x/../state", noState: true},
}

func (c samePlace) paths(t *testing.T) (first, second string) {
	t.Helper()
	tmp := t.TempDir()
	if err := os.Mkdir(filepath.Join(tmp, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !c.noState {
		if err := os.Mkdir(filepath.Join(tmp, "state"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if c.setup != nil {
		c.setup(t, tmp)
	}
	// Joined by hand: filepath.Join would clean "x/../state" lexically.
	return tmp + "/" + c.first, tmp + "/" + c.second
}

// TestPoolOneStorePerDirectory opens one pooled store through two paths
// that reach the same directory, as two kv connectors of a flow would
// (namespaces A and B), puts 3000 2 KB values alternating between the two
// handles, closes both and reopens the directory: every acknowledged write
// must be there. Two Pebble instances on one directory lose writes (their
// WALs and manifests overwrite each other), so the pool must give both
// paths the same store.
func TestPoolOneStorePerDirectory(t *testing.T) {
	const puts = 3000
	value := bytes.Repeat([]byte("v"), 2048)
	for _, c := range samePlaces {
		t.Run(c.name, func(t *testing.T) {
			first, second := c.paths(t)
			p := NewPool()
			a, err := p.Open(first, Options{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := p.Open(second, Options{})
			if err != nil {
				a.Close()
				t.Fatalf("second path: %v", err)
			}
			if a.(*handle).store != b.(*handle).store {
				t.Errorf("%q and %q got two stores", first, second)
			}
			handles := []kv.Backend{a, b}
			for i := range puts {
				key := []byte(fmt.Sprintf("%c/k%05d", 'A'+i%2, i))
				errs := []error{nil}
				err := handles[i%2].Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error {
					return tx.Set(key, value, 0)
				}}, errs)
				if err = errors.Join(err, errs[0]); err != nil {
					t.Fatalf("put %d: %v", i, err)
				}
			}
			if err := errors.Join(a.Close(), b.Close()); err != nil {
				t.Fatalf("close: %v", err)
			}

			s := openTest(t, first)
			defer s.Close()
			var present []string
			update(t, s, scanAll("", "", &present))
			seen := make(map[string]bool, len(present))
			for _, kv := range present {
				k, v, _ := strings.Cut(kv, "=")
				seen[k] = v == string(value)
			}
			lost := 0
			for i := range puts {
				if !seen[fmt.Sprintf("%c/k%05d", 'A'+i%2, i)] {
					lost++
				}
			}
			if lost > 0 {
				t.Fatalf("%d of %d acknowledged writes lost after reopening", lost, puts)
			}
		})
	}
}

// TestOpenRefusesSecondPathToOpenStore opens a store with Open and then
// the same directory by another path, in the same process: the second
// Open must be refused (a second Pebble instance on the directory would
// lose writes), and succeed once the first store is closed.
func TestOpenRefusesSecondPathToOpenStore(t *testing.T) {
	for _, c := range samePlaces {
		t.Run(c.name, func(t *testing.T) {
			first, second := c.paths(t)
			s := openTest(t, first)
			if s2, err := Open(second, Options{}); err == nil {
				s2.Close()
				s.Close()
				t.Fatalf("second Open of %q through %q succeeded", first, second)
			} else if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), second) {
				t.Errorf("second Open: %v, want ErrLocked naming %q", err, second)
			}
			update(t, s, set("k", "v", 0)) // the first is unharmed
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s2 := openTest(t, second)
			var g got
			update(t, s2, get("k", &g))
			if g.value != "v" {
				t.Errorf("through %q: %+v", second, g)
			}
			s2.Close()
		})
	}
}

// TestPoolSharesAcrossPaths checks that the handles of two paths to one
// directory use one store, each seeing the other's writes, and that the
// store stays open until the last handle closes.
func TestPoolSharesAcrossPaths(t *testing.T) {
	first, second := samePlaces[0].paths(t)
	p := NewPool()
	a, err := p.Open(first, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Open(second, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a.(*handle).store != b.(*handle).store {
		t.Fatal("two stores for one directory")
	}
	update(t, a, set("k", "from-a", 0))
	var g got
	update(t, b, get("k", &g))
	if g.value != "from-a" {
		t.Fatalf("b sees %+v", g)
	}
	if _, err := p.Open(second, Options{NoSync: true}); err == nil {
		t.Fatal("another sync policy through the second path was accepted")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	update(t, b, get("k", &g))
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	openTest(t, second).Close()
}

// TestUnidentifiableDirectoryRefused covers directories the store refuses
// because it cannot tell safely what they are.
func TestUnidentifiableDirectoryRefused(t *testing.T) {
	t.Run("dangling symlink", func(t *testing.T) {
		tmp := t.TempDir()
		link := filepath.Join(tmp, "link")
		if err := os.Symlink(filepath.Join(tmp, "missing"), link); err != nil {
			t.Fatal(err)
		}
		s, err := Open(link, Options{})
		if err == nil {
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), link) {
			t.Errorf("Open of a dangling symlink: %v, want an error naming %q", err, link)
		}
		b, err := NewPool().Open(link, Options{})
		if err == nil {
			b.Close()
		}
		if err == nil || !strings.Contains(err.Error(), link) {
			t.Errorf("Pool.Open of a dangling symlink: %v, want an error naming %q", err, link)
		}
		if _, err := os.Stat(filepath.Join(tmp, "missing")); err == nil {
			t.Error("the symlink's target was created")
		}
	})
	t.Run("directory moved while open", func(t *testing.T) {
		tmp := t.TempDir()
		state, moved := filepath.Join(tmp, "state"), filepath.Join(tmp, "moved")
		p := NewPool()
		a, err := p.Open(state, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		if err := os.Rename(state, moved); err != nil {
			t.Fatal(err)
		}
		// The open store's directory under another real path.
		_, err = p.Open(moved, Options{})
		if !errors.Is(err, ErrDirIdentity) || !strings.Contains(err.Error(), state) || !strings.Contains(err.Error(), moved) {
			t.Errorf("Pool.Open of the moved directory: %v, want ErrDirIdentity naming %q and %q", err, state, moved)
		}
		// A new directory at the open store's old path: Pebble's lock
		// (by path) and the store's (by directory) disagree.
		_, err = p.Open(state, Options{})
		if !errors.Is(err, ErrDirIdentity) || !strings.Contains(err.Error(), state) {
			t.Errorf("Pool.Open of a new directory at the old path: %v, want ErrDirIdentity naming %q", err, state)
		}
	})
}
