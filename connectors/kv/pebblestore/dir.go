package pebblestore

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/flowrun/flowrun/internal/flock"
)

// A store directory is identified by what it is, not by how its path is
// spelled: Pebble keys its in-process lock by path, so two paths to one
// directory (a symlink, "state" and "x/../state") would otherwise open two
// Pebble instances on it, which overwrite each other's log and manifest
// and lose acknowledged writes. A directory is identified by its real path
// (every symlink resolved, filepath.EvalSymlinks) and its device and inode.
//
// It cannot be identified safely, and is refused with ErrDirIdentity,
// when its real path or its device and inode cannot be read, when the path
// reaches another directory after being resolved than before (a symlink
// changed meanwhile), or when the directory of a store already open in
// this process is reached under another real path (a bind mount, or the
// directory moved since): one directory with two real paths is refused
// rather than guessed at, and never opened twice.

// storeDir is a store directory resolved to what it is.
type storeDir struct {
	path string // as given
	real string // absolute, every symlink resolved: what Pebble is given
	id   dirID
}

// key is what a Pool shares stores by.
func (d storeDir) key() string {
	if id := d.id.String(); id != "" {
		return id
	}
	return d.real
}

// openDir creates path when missing (see makeDir), resolves it and returns
// it open, for the caller to lock and close.
func openDir(path string) (storeDir, *os.File, error) {
	d := storeDir{path: path}
	if err := makeDir(path); err != nil {
		return d, nil, fmt.Errorf("open store %q: %w", path, err)
	}
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return d, nil, fmt.Errorf("open store %q: %w: resolving its real path: %w", path, ErrDirIdentity, err)
	}
	d.real = real
	f, err := os.Open(real)
	if err != nil {
		return d, nil, fmt.Errorf("open store %q (real path %q): %w", path, real, err)
	}
	fail := func(err error) (storeDir, *os.File, error) {
		_ = f.Close()
		return d, nil, err
	}
	if fi, err := f.Stat(); err != nil {
		return fail(fmt.Errorf("open store %q (real path %q): %w", path, real, err))
	} else if !fi.IsDir() {
		return fail(fmt.Errorf("open store %q (real path %q): not a directory", path, real))
	}
	if d.id, err = fileID(f); err != nil {
		return fail(fmt.Errorf("open store %q (real path %q): %w: %w", path, real, ErrDirIdentity, err))
	}
	// The path must still reach the directory opened: a symlink changed
	// between resolving and opening is refused rather than guessed at.
	now, err := pathID(path)
	if err != nil {
		return fail(fmt.Errorf("open store %q (real path %q): %w: %w", path, real, ErrDirIdentity, err))
	}
	if now != d.id {
		return fail(fmt.Errorf("open store %q: %w: its real path %q is %s but %q now reaches %s (changed while opening)",
			path, ErrDirIdentity, real, d.id, path, now))
	}
	return d, f, nil
}

// resolveDir is openDir without keeping the directory open.
func resolveDir(path string) (storeDir, error) {
	d, f, err := openDir(path)
	if err != nil {
		return d, err
	}
	_ = f.Close()
	return d, nil
}

// makeDir creates path with dirMode if it does not exist, and its missing
// parents with the usual mode (0755 less the umask). An existing
// directory is left as it is.
func makeDir(path string) error {
	_, err := os.Stat(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	// Trailing slashes would make filepath.Dir return path itself;
	// nothing else is cleaned, since "x/.." is not lexical when x is a
	// symlink.
	trimmed := strings.TrimRight(path, string(filepath.Separator))
	if trimmed == "" {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(trimmed), 0o755); err != nil {
		return err
	}
	if err := os.Mkdir(trimmed, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if _, err := os.Stat(path); err != nil {
		// Mkdir found something there that does not lead to a
		// directory: a symlink to a missing one is not followed to
		// create its target.
		return fmt.Errorf("%w (a symlink to a missing directory is not followed)", err)
	}
	return nil
}

// lockStoreDir opens path as a store directory and locks it (flock.TryLock) for
// the caller to close with the store; the file is nil on a file system
// without flock. A directory locked elsewhere, by another process or
// another Store of this process, is ErrLocked.
func lockStoreDir(path string, l *slog.Logger) (storeDir, *os.File, error) {
	d, f, err := openDir(path)
	if err != nil {
		return d, nil, err
	}
	held, unsupported, err := flock.TryLock(f)
	switch {
	case err != nil:
		_ = f.Close()
		return d, nil, fmt.Errorf("open store %q: lock %q: %w", path, d.real, err)
	case held:
		_ = f.Close()
		return d, nil, fmt.Errorf("open store %q: %w (or by another store of this process; real path %q)", path, ErrLocked, d.real)
	case unsupported:
		_ = f.Close()
		l.Debug("store directory cannot be flocked; relying on Pebble's lock", "dir", path)
		return d, nil, nil
	}
	return d, f, nil
}
