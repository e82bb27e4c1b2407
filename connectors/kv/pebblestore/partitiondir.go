package pebblestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"github.com/flowrun/flowrun/connectors/kv"
)

// PartitionMarker is the file that marks a directory as the store of one
// partition of a partitioned kv connector (docs/scaling.md): its owner
// (connectors/kv/owner) writes it when it makes the directory, and may
// wipe a directory holding it to restore the partition from its
// changelog.
const PartitionMarker = "FLOWRUN_PARTITION"

// ErrPartitionDir reports a store directory that belongs to a partitioned
// kv connector, opened without Options.Partition: the directory of one
// partition (it holds PartitionMarker), or the connector's dir holding
// such directories (p000, p001, ...). A partition's state is its
// changelog on the NATS cluster; the local copy of an instance is only
// as recent as that instance's last ownership of the partition (another
// instance may have written since), or is missing or half restored.
// Reading it would silently give stale or partial answers, and writing to
// it would be lost at the next take-over. It wraps
// kv.ErrPartitionNotReady.
var ErrPartitionDir = fmt.Errorf("directory of a partitioned kv connector: %w", kv.ErrPartitionNotReady)

// partitionDirName matches the directory of one partition under a
// partitioned connector's dir (partition.Token: three digits or more).
var partitionDirName = regexp.MustCompile(`^p[0-9]{3,}$`)

// checkNotPartitioned refuses real, the directory of a store opened as
// dir, when it is a partition store or holds partition stores.
func checkNotPartitioned(dir, real string) error {
	const what = "read the keys through the running flow (kv commands sent to its kv connector), " +
		"which routes each to the instance serving its partition; a partition's state is its changelog, " +
		"a local copy may be stale or partial (see docs/kv.md, Partitions)"
	if _, err := os.Stat(filepath.Join(real, PartitionMarker)); err == nil {
		return fmt.Errorf("open store %q: %w: it is the local copy of one partition (it holds %s): %s",
			dir, ErrPartitionDir, PartitionMarker, what)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open store %q: %w", dir, err)
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return fmt.Errorf("open store %q: %w", dir, err)
	}
	var parts []string
	for _, e := range entries {
		if !e.IsDir() || !partitionDirName.MatchString(e.Name()) {
			continue
		}
		if _, err := os.Stat(filepath.Join(real, e.Name(), PartitionMarker)); err == nil {
			parts = append(parts, e.Name())
		}
	}
	if len(parts) == 0 {
		return nil
	}
	sort.Strings(parts)
	return fmt.Errorf("open store %q: %w: it holds the local copies of %d partitions (%s ... %s) of a kv connector with partitions: %s",
		dir, ErrPartitionDir, len(parts), parts[0], parts[len(parts)-1], what)
}
