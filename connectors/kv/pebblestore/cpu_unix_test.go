//go:build unix

package pebblestore

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user and system, every thread) the
// test process has used so far, or 0 when it cannot be read: per
// operation, a figure a loaded machine disturbs less than operations/s.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
