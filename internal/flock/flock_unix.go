//go:build unix

package flock

import (
	"errors"
	"os"
	"syscall"
)

// TryLock takes an exclusive flock on the open file or directory f, held
// for as long as f stays open. A flock belongs to the open file, not to
// the process, so it also refuses a second open of this process reaching
// the same file by another path. held reports a lock held through another
// open file; unsupported reports a file system without flock (some network
// file systems), on which the caller goes on without the lock.
func TryLock(f *os.File) (held, unsupported bool, err error) {
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
