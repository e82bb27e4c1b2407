package partitioned

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/operators/expr"
)

// testGroup returns a group name of its own and deletes its streams
// (lease stream and the changelogs of partitions) when the test ends,
// after the connectors registered before it are closed.
func testGroup(t testing.TB, js jetstream.JetStream, partitions int) string {
	t.Helper()
	group := natstest.Name("pt")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, LeaseStream(group))
		for p := range partitions {
			s, _ := ChangelogStream(group, p)
			// A stream whose creation is still under way (its
			// connector closed meanwhile) may not answer: bounded.
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			_ = js.DeleteStream(dctx, s)
			dcancel()
		}
	})
	return group
}

// testOptions are the options of one instance of group in a directory of
// its own, with short leases and streams of one replica: what these tests
// check does not depend on the replica count, and a stream of three takes
// the cluster 0.3-0.5 s more to make (the conformance scenarios, each a
// new group, took 60 s instead of 17). The failover tests, which stop
// NATS nodes, run with three.
func testOptions(t testing.TB, js jetstream.JetStream, group, instance string, partitions int) Options {
	return Options{
		Replicas:   1,
		Partitions: partitions,
		Dir:        filepath.Join(t.TempDir(), "state"),
		JetStream:  js,
		Group:      group,
		Instance:   instance,
		LeaseTTL:   2 * time.Second,
		Poll:       200 * time.Millisecond,
		KV:         kv.Options{ReclaimInterval: -1},
	}
}

// open starts a connector, closed when the test ends.
func open(t testing.TB, opts Options) *Connector {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func mustExpr(t testing.TB, src string) *expr.Expr {
	t.Helper()
	x, err := expr.Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// waitFor polls cond every 50ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	waitForOr(t, d, what, cond, nil)
}

// waitForOr is waitFor that, on timeout, also reports what describe
// returns (nil: nothing).
func waitForOr(t testing.TB, d time.Duration, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			if describe != nil {
				t.Fatalf("%s: not within %v; %s", what, d, describe())
			}
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// slotStates describes each partition as c sees it: its state and for
// how long, and whether a run of c holds its lease.
func slotStates(c *Connector) string {
	var b strings.Builder
	for p, sl := range c.rt.slots {
		sl.mu.Lock()
		fmt.Fprintf(&b, "partition %d: %s for %v", p, stateText(sl.state), time.Since(sl.since).Round(time.Millisecond))
		sl.mu.Unlock()
		c.rt.mu.Lock()
		if r, ok := c.rt.runs[p]; ok {
			r.mu.Lock()
			fmt.Fprintf(&b, " (a run: lease acquired %v, take-over done %v)", r.acquired, r.serving)
			r.mu.Unlock()
		} else {
			b.WriteString(" (no run)")
		}
		c.rt.mu.Unlock()
		b.WriteString("; ")
	}
	return b.String()
}
