package partitioned

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
)

// TestConformance runs the kv conformance table through partitioned
// connectors of 4 partitions (3 replicas), one group per connector. Each
// connector's partition_key is a constant of its own ("case-N"), so every
// command of a scenario (a batch's elements included) lands in one
// partition, as the table's scans, counts and batches over several keys
// need, while the scenarios spread over the partitions; the test checks
// they reached every one. TestRoutingSpreadsKeys covers the default
// partition key.
func TestConformance(t *testing.T) {
	js := natstest.JetStream(t)
	const partitions = 4
	var (
		mu   sync.Mutex
		n    int
		used = map[int]int{}
	)
	kvtest.RunConns(t, func(t testing.TB, kopts kv.Options) kvtest.Conn {
		mu.Lock()
		n++
		key := fmt.Sprintf("case-%d", n)
		used[partition.OfString(key, partitions)]++
		mu.Unlock()
		group := testGroup(t, js, partitions)
		opts := testOptions(t, js, group, "solo", partitions)
		opts.KV = kopts
		opts.PartitionKey = mustExpr(t, fmt.Sprintf("%q", key))
		c := open(t, opts)
		// Every partition's streams are made before the scenario (and
		// its clean-up) runs.
		waitForOr(t, time.Minute, "all partitions served", func() bool { return len(c.Serving()) == partitions },
			func() string { return slotStates(c) })
		return c
	})
	if n >= 20 && len(used) != partitions {
		t.Errorf("the scenarios used partitions %v, want all %d", used, partitions)
	}
}
