//go:build unix

package pebblestore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// dirID identifies a directory by what it is, whatever path reached it: the
// device and inode number of the directory itself.
type dirID struct{ dev, ino uint64 }

func (id dirID) String() string { return fmt.Sprintf("device %d, inode %d", id.dev, id.ino) }

// fileID returns the device and inode of an open file.
func fileID(f *os.File) (dirID, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return dirID{}, err
	}
	return dirID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil // widths differ by platform
}

// pathID returns the device and inode of the file path reaches.
func pathID(path string) (dirID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return dirID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return dirID{dev: uint64(st.Dev), ino: uint64(st.Ino)}, nil // widths differ by platform
}

// lockDir takes an exclusive flock on the open directory f for as long as
// it stays open. A flock belongs to the open file, not to the process, so
// it also refuses a second Store of this process on the same directory
// reached by another path (Pebble's own lock is keyed by path within a
// process). held reports a lock held elsewhere; a file system without
// flock (some network file systems) reports unsupported, and the store
// then relies on Pebble's lock alone.
func lockDir(f *os.File) (held, unsupported bool, err error) {
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	switch {
	case err == nil:
		return false, false, nil
	case errors.Is(err, syscall.EWOULDBLOCK), errors.Is(err, syscall.EAGAIN):
		return true, false, nil
	case errors.Is(err, syscall.ENOLCK), errors.Is(err, syscall.EOPNOTSUPP),
		errors.Is(err, syscall.EBADF), errors.Is(err, syscall.EINVAL):
		return false, true, nil
	}
	return false, false, err
}

// fchmod sets the mode of the open file fd.
func fchmod(fd uintptr, mode os.FileMode) error { return syscall.Fchmod(int(fd), uint32(mode.Perm())) }
