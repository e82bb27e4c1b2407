//go:build !unix

package pebblestore

import "time"

// processCPU is not measured here.
func processCPU() time.Duration { return 0 }
