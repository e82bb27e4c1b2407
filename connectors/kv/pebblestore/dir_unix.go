//go:build unix

package pebblestore

import (
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

// fchmod sets the mode of the open file fd.
func fchmod(fd uintptr, mode os.FileMode) error { return syscall.Fchmod(int(fd), uint32(mode.Perm())) }
