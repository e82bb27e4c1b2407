package pebblestore

import (
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
)

// corruptionListener returns the Pebble event listener of a store: on
// damage found in an sstable it logs the file and the key range at error
// level. Pebble's own default ends the process (Logger.Fatalf); the read
// that met the damage fails with Pebble's corruption error instead, so a
// command reading it fails on its own and `flowrun kv dump` reports an
// incomplete dump, while reads elsewhere in the store go on working.
func corruptionListener(log *slog.Logger) *pebble.EventListener {
	return &pebble.EventListener{
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			log.Error("store data is damaged: reads of the key range fail", "component", "pebble",
				"file", info.Path, "bounds", info.Bounds.String(), "error", fmt.Sprintf("%v", info.Details))
		},
	}
}
