package kv_test

import (
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

func openPebble(t *testing.T, dir string) kv.Backend {
	s, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatalf("pebblestore.Open: %v", err)
	}
	return s
}

// The command set over the Pebble backend: the same table memstore runs,
// plus the restart checks.
func TestPebbleConformance(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.Backend { return openPebble(t, t.TempDir()) })
}

func TestPebblePersistence(t *testing.T) {
	kvtest.RunPersistent(t, openPebble)
}

// TestPebbleClearMillion loads a million keys through the connector, which
// takes minutes under the race detector; there it clears 50,000 instead.
func TestPebbleClearMillion(t *testing.T) {
	testClearMillion(t, openPebble(t, t.TempDir()), raceEnabled)
}
