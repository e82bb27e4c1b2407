package partitioned

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/pipeline"
)

// connect opens a NATS connection of its own, so that a test can cut one
// instance off the cluster (as a crash or a network partition would).
func connect(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(natstest.ClusterURLs(t), nats.Timeout(2*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// shares reports each connector's served partitions, and whether they
// are the counts wanted (in any order) and together every partition
// exactly once.
func shares(conns []*Connector, partitions int, want ...int) (string, bool) {
	var all, counts []int
	var b strings.Builder
	for _, c := range conns {
		s := c.Serving()
		fmt.Fprintf(&b, "%s:%v ", c.Instance(), s)
		all = append(all, s...)
		counts = append(counts, len(s))
	}
	slices.Sort(all)
	slices.Sort(counts)
	w := slices.Clone(want)
	slices.Sort(w)
	ok := slices.Equal(counts, w) && len(all) == partitions
	for i := range all {
		ok = ok && all[i] == i
	}
	return b.String(), ok
}

func waitShares(t *testing.T, d time.Duration, conns []*Connector, partitions int, want ...int) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	waitFor(t, d, fmt.Sprintf("partitions shared %v", want), func() bool {
		var ok bool
		last, ok = shares(conns, partitions, want...)
		return ok
	})
	t.Logf("shared %v after %v: %s", want, time.Since(start).Round(time.Millisecond), last)
	return time.Since(start)
}

// put writes key=value through whichever connector serves the key's
// partition, and fails the test unless it is stored.
func put(t *testing.T, conns []*Connector, partitions int, meta, data string) kvtest.Emitted {
	t.Helper()
	keys, _, _ := kv.CommandKeys([]byte(meta))
	p := partition.OfString(keys[0], partitions)
	for _, c := range conns {
		if slices.Contains(c.Serving(), p) {
			var rec kvtest.Recorder
			if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(meta, data)}, &rec); err != nil {
				t.Fatal(err)
			}
			if len(rec.Events) != 1 || rec.Events[0].Port != pipeline.PortOut {
				t.Fatalf("%s %s through %s: %v", meta, data, c.Instance(), kvtest.Strings(rec.Events))
			}
			return rec.Events[0]
		}
	}
	t.Fatalf("no connector serves partition %d", p)
	return kvtest.Emitted{}
}

// TestMembersSharePartitions: three instances of a group of 6 partitions
// started one after the other share them 6, then 3+3, then 2+2+2 (each
// partition served by exactly one); one cut off from the cluster (as if
// killed: it can neither renew nor release) has its 2 partitions taken
// over by the other two once its leases lapse (3+3), with the keys
// written there restored; a new instance joining is given 2 of them back
// (2+2+2). Leases live 2 s here.
func TestMembersSharePartitions(t *testing.T) {
	const partitions = 6
	_, js := connect(t)
	group := testGroup(t, js, partitions)
	var conns []*Connector
	start := func(name string) (*nats.Conn, *Connector) {
		nc, js := connect(t)
		c := open(t, testOptions(t, js, group, name, partitions))
		conns = append(conns, c)
		return nc, c
	}
	start("a")
	waitShares(t, 30*time.Second, conns, partitions, 6)
	start("b")
	waitShares(t, 30*time.Second, conns, partitions, 3, 3)
	ncC, c := start("c")
	waitShares(t, 30*time.Second, conns, partitions, 2, 2, 2)

	for i := range 60 {
		put(t, conns, partitions, kvtest.M(fmt.Sprintf(`"put":"k%d"`, i)), fmt.Sprint(i))
	}
	ofC := c.Serving()
	ncC.Close() // c is cut off: its leases lapse
	conns = slices.DeleteFunc(conns, func(x *Connector) bool { return x == c })
	took := waitShares(t, 60*time.Second, conns, partitions, 3, 3)
	if took > 10*time.Second {
		// Generous for a loaded machine: TTL 2 s, a poll, a restore.
		t.Errorf("c's partitions %v were taken over after %v, want about the lease TTL (2s)", ofC, took)
	}
	for i := range 60 {
		got := put(t, conns, partitions, kvtest.M(fmt.Sprintf(`"get":"k%d"`, i)), "")
		if string(got.Event.Data) != fmt.Sprint(i) {
			t.Errorf("k%d after the take-over = %s, want %d", i, got.Event.Data, i)
		}
	}
	_ = c.Close(context.Background())

	start("d")
	waitShares(t, 30*time.Second, conns, partitions, 2, 2, 2)
	for i := range 60 {
		got := put(t, conns, partitions, kvtest.M(fmt.Sprintf(`"increment":"k%d"`, i)), "")
		if string(got.Event.Data) != fmt.Sprint(i+1) {
			t.Errorf("k%d incremented after rebalancing = %s, want %d", i, got.Event.Data, i+1)
		}
	}
}

// TestPartitionCountIsFixed: the first instance records the group's
// partition count; one declaring another count is refused at start.
func TestPartitionCountIsFixed(t *testing.T) {
	_, js := connect(t)
	group := testGroup(t, js, 3)
	open(t, testOptions(t, js, group, "a", 2))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := New(ctx, testOptions(t, js, group, "b", 3))
	if !errors.Is(err, ErrConfigMismatch) {
		if c != nil {
			_ = c.Close(ctx)
		}
		t.Fatalf("New with another count = %v, want ErrConfigMismatch", err)
	}
	if !strings.Contains(err.Error(), `"partitions":2`) {
		t.Errorf("the error does not give the recorded count: %v", err)
	}
}

// TestHungTakeOverIsStartedAgain: a take-over that waits past its lease
// for something that never comes (as a changelog read whose stream
// leader died would) is given back and started again, and the partition
// is served; it is not kept for ever, counted in its instance's aim,
// while no instance takes its lapsed lease.
func TestHungTakeOverIsStartedAgain(t *testing.T) {
	js := natstest.JetStream(t)
	const partitions = 2
	group := testGroup(t, js, partitions)
	opts := testOptions(t, js, group, "solo", partitions)
	var hung atomic.Bool
	opts.takeOverHook = func(ctx context.Context, p int) {
		if p == 0 && hung.CompareAndSwap(false, true) {
			<-ctx.Done() // ends only when the run is given back
		}
	}
	c := open(t, opts)
	waitFor(t, 60*time.Second, "partition 0 served after its first take-over hung", func() bool {
		return hung.Load() && slices.Contains(c.Serving(), 0)
	})
}
