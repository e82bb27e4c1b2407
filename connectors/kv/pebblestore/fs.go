package pebblestore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Modes of what a store creates: its state is private to the user running
// flowrun, as PostgreSQL insists for its data directory. They apply
// whatever the umask; an existing directory keeps its mode.
const (
	dirMode  os.FileMode = 0o700
	fileMode os.FileMode = 0o600
)

// privateFS is the vfs.FS a Store gives Pebble: it creates every file with
// fileMode and every directory with dirMode (Pebble asks for 0666 and 0755
// less the umask). A file is created by the FS it wraps and then given its
// mode, so the store directory's own mode (dirMode when flowrun created
// it) is what keeps others out meanwhile.
type privateFS struct {
	vfs.FS
	pacer *pacer // paces flushes and compactions (pace.go); nil: none
}

func (p privateFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if vfs.Root(p.FS) != vfs.Default {
		return p.pacer.wrap(category)(private(name)(p.FS.Create(name, category)))
	}
	// Born private: Pebble's default Create makes the file with 0666 less
	// the umask, so setting the mode afterwards would leave it open to
	// others for a moment (in an existing store directory with a looser
	// mode). Create it empty with fileMode (replacing a file of that
	// name, as Pebble's Create does) and open it through the wrapped FS,
	// which keeps the mode of a file that exists.
	for {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, fileMode)
		if errors.Is(err, fs.ErrExist) {
			if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := f.Close(); err != nil {
			return nil, err
		}
		break
	}
	return p.pacer.wrap(category)(private(name)(p.FS.OpenReadWrite(name, category)))
}

func (p privateFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return private(name)(p.FS.OpenReadWrite(name, category, opts...))
}

func (p privateFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	return p.pacer.wrap(category)(private(newname)(p.FS.ReuseForWrite(oldname, newname, category)))
}

func (p privateFS) MkdirAll(dir string, _ os.FileMode) error {
	return p.FS.MkdirAll(dir, dirMode)
}

// Lock gives the lock file its mode by path, on the operating system's
// file system only: a vfs lock is not a vfs.File.
func (p privateFS) Lock(name string) (io.Closer, error) {
	c, err := p.FS.Lock(name)
	if err != nil || vfs.Root(p.FS) != vfs.Default {
		return c, err
	}
	if err := os.Chmod(name, fileMode); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("make %s private: %w", name, err)
	}
	return c, nil
}

func (p privateFS) Unwrap() vfs.FS { return p.FS }

// private returns a function giving a newly opened file fileMode; files
// without a descriptor (in memory) are left alone.
func private(name string) func(vfs.File, error) (vfs.File, error) {
	return func(f vfs.File, err error) (vfs.File, error) {
		if err != nil {
			return nil, err
		}
		if fd := f.Fd(); fd != vfs.InvalidFd {
			if err := fchmod(fd, fileMode); err != nil {
				_ = f.Close()
				return nil, fmt.Errorf("make %s private: %w", name, err)
			}
		}
		return f, nil
	}
}
