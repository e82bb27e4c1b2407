package component

import (
	"path/filepath"
	"time"
)

// This file declares the resources every component may consult for what a
// test (flowrun test) replaces: the clock and the directories of stores.

// clockKey holds the clock of the components built with some Resources.
var clockKey = NewKey[func() time.Time]("clock")

// UseClock makes now the clock of every component built with res that
// reads the time through Clock: the kv connector decides expiry (ttl) and
// stamps its records with it, expressions' now() and now_s() return it,
// and Lua scripts (processors and scripts run on a kv store) see the same
// time in os.time and os.date. A test gives a fixed clock so that time-dependent results
// repeat.
func UseClock(res *Resources, now func() time.Time) { clockKey.Put(res, now) }

// Clock returns the clock set with UseClock, or nil when there is none
// (the component then uses time.Now).
func Clock(res *Resources) func() time.Time {
	if res == nil {
		return nil
	}
	now, _ := clockKey.Get(res)
	return now
}

// storeDirKey holds the mapping of store directories.
var storeDirKey = NewKey[func(dir string) string]("store directories")

// MapStoreDirs makes every component built with res that keeps persistent
// state in a directory (the kv connector's pebble backend) open
// fn(dir) instead of dir, where dir is the absolute, cleaned directory
// the flow names. A test maps them into a fresh temporary directory so
// that each case starts on empty stores and leaves the real ones alone.
// fn must map directories the flow's connectors share to one directory.
func MapStoreDirs(res *Resources, fn func(dir string) string) { storeDirKey.Put(res, fn) }

// StoreDir returns the directory a component should open for the store
// directory dir: dir itself unless MapStoreDirs set a mapping.
func StoreDir(res *Resources, dir string) string {
	if res == nil {
		return dir
	}
	fn, ok := storeDirKey.Get(res)
	if !ok || fn == nil {
		return dir
	}
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return fn(filepath.Clean(dir))
}
