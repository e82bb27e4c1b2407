package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// testConsumer is a consumer with no client, for the bookkeeping of
// batches: partitions ids assigned, at most window records in flight,
// batches of at most maxPoll.
func testConsumer(t *testing.T, window, maxPoll int, ids ...int32) *consumer {
	t.Helper()
	c := &consumer{
		opts:    SourceOptions{Options: Options{Topic: "in"}},
		window:  window,
		maxPoll: maxPoll,
		space:   make(chan struct{}, 1),
		parts:   map[int32]*partition{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	t.Cleanup(c.cancel)
	for _, id := range ids {
		c.parts[id] = newPartition(id)
	}
	return c
}

// TestBatchSettledOutOfOrderAcrossPartitions: one batch holds records of
// three partitions (one revoked, whose records are left out); settled in
// an order unrelated to the offsets, each partition's mark is one past its
// highest offset below which every record is done, abandoned records hold
// the mark, and the count in flight goes back to zero.
func TestBatchSettledOutOfOrderAcrossPartitions(t *testing.T) {
	c := testConsumer(t, 100, 100, 0, 1, 2)
	c.parts[2].revoking = true
	var recs []*kgo.Record
	for _, r := range []struct {
		p int32
		o int64
	}{{0, 10}, {1, 5}, {0, 11}, {2, 7}, {1, 6}, {0, 12}, {1, 9}, {0, 13}} {
		recs = append(recs, &kgo.Record{Topic: "in", Partition: r.p, Offset: r.o})
	}
	recs = append(recs, &kgo.Record{Topic: "other", Partition: 0, Offset: 99})
	ds := c.handOver(recs)
	if len(ds) != 7 || c.inflight != 7 {
		t.Fatalf("handed over %d (%d in flight), want 7: the revoked partition's and the other topic's records left out", len(ds), c.inflight)
	}
	at := func(p int32, o int64) *delivery {
		for i := range ds {
			if ds[i].rec.Partition == p && ds[i].rec.Offset == o {
				return &ds[i]
			}
		}
		t.Fatalf("no delivery %d/%d", p, o)
		return nil
	}
	for _, step := range []struct {
		p          int32
		o          int64
		done       bool
		mark0      int64
		mark1      int64
		inFlight   int
		waiting0   int
		waiting1   int
		stepDetail string
	}{
		{0, 12, true, -1, -1, 6, 4, 3, "a later record of 0 done first"},
		{1, 6, true, -1, -1, 5, 4, 3, "a later record of 1 done first"},
		{0, 10, true, 11, -1, 4, 3, 3, "0's head done: its mark passes 10 only"},
		{1, 5, true, 11, 7, 3, 3, 1, "1's head done: its mark passes 5 and 6"},
		{0, 11, true, 13, 7, 2, 1, 1, "0's gap filled: its mark passes 12"},
		{1, 9, false, 13, 7, 1, 1, 1, "1's last abandoned: its mark stays"},
		{0, 13, true, 14, 7, 0, 0, 1, "0 all done"},
	} {
		c.settle(at(step.p, step.o), step.done)
		p0, p1 := c.parts[0], c.parts[1]
		if p0.mark != step.mark0 || p1.mark != step.mark1 || c.inflight != step.inFlight ||
			p0.waiting() != step.waiting0 || p1.waiting() != step.waiting1 {
			t.Fatalf("%s: marks %d, %d, %d in flight, waiting %d, %d; want %d, %d, %d, %d, %d", step.stepDetail,
				p0.mark, p1.mark, c.inflight, p0.waiting(), p1.waiting(),
				step.mark0, step.mark1, step.inFlight, step.waiting0, step.waiting1)
		}
	}
	if c.parts[0].inflight != 0 || c.parts[1].inflight != 0 {
		t.Errorf("partitions keep %d and %d in flight", c.parts[0].inflight, c.parts[1].inflight)
	}
}

// TestRoomWaitsForAWholeBatch: once the records in flight reach
// MaxInFlight, the poll loop waits until a whole batch fits again rather
// than fetching each record as one settles (batches of one); a
// MaxInFlight below the batch size waits for MaxInFlight.
func TestRoomWaitsForAWholeBatch(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		window, maxPoll, held int
		settleBefore          int // settles that must not free room
	}{
		{"batch below the limit", 8, 4, 8, 3},
		{"limit below the batch", 2, 4, 2, 1},
		{"limit of one", 1, 4, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConsumer(t, tc.window, tc.maxPoll, 0)
			var recs []*kgo.Record
			for i := range tc.held {
				recs = append(recs, &kgo.Record{Topic: "in", Offset: int64(i)})
			}
			ds := c.handOver(recs)
			got := make(chan int, 1)
			go func() { got <- c.room() }()
			for i := range tc.settleBefore {
				c.settle(&ds[i], true)
			}
			select {
			case n := <-got:
				t.Fatalf("room %d with %d of %d in flight, want a wait for %d free", n, c.window-tc.settleBefore, c.window, min(tc.window, tc.maxPoll))
			case <-time.After(50 * time.Millisecond):
			}
			c.settle(&ds[tc.settleBefore], true)
			select {
			case n := <-got:
				if want := tc.settleBefore + 1; n != want {
					t.Fatalf("room %d, want %d", n, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("room still waiting with a whole batch free")
			}
		})
	}
}
