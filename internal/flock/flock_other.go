//go:build !unix

package flock

import "os"

// TryLock reports the lock unsupported where flock is not available.
func TryLock(*os.File) (held, unsupported bool, err error) { return false, true, nil }
