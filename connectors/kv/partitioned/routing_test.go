package partitioned

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/changelog"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/pipeline"
)

// keyIn returns a key of partition p among n.
func keyIn(p, n int) string {
	for i := 0; ; i++ {
		if k := fmt.Sprintf("key%d", i); partition.OfString(k, n) == p {
			return k
		}
	}
}

// tracked is one event of a graph run and what became of it.
type tracked struct {
	outcome pipeline.Outcome
	emitted []kvtest.Emitted
}

// runGraph sends events through c in a graph, from a source that tracks
// them (declaring redelivery when redelivers), one slice, and returns
// each event's outcome and what c emitted for it, by index.
func runGraph(t *testing.T, c pipeline.Processor, redelivers bool, events ...pipeline.Event) []tracked {
	t.Helper()
	out := make([]tracked, len(events))
	var mu sync.Mutex
	g := pipeline.New(pipeline.Options{})
	src := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		tr := pipeline.NewTracker(len(events), func(i int, o pipeline.Outcome) {
			mu.Lock()
			out[i].outcome = o
			mu.Unlock()
		}, nil)
		if redelivers {
			tr.SetRedelivers()
		}
		for i, ev := range events {
			emit.Emit(pipeline.PortOut, tr.Track(i, ev))
		}
		return emit.Flush(ctx)
	})
	sink := func(port string) pipeline.Processor {
		return pipeline.ProcessorFunc(func(_ context.Context, evs []pipeline.Event, _ pipeline.Emitter) error {
			mu.Lock()
			defer mu.Unlock()
			for _, ev := range evs {
				i := ev.Origin().Index()
				out[i].emitted = append(out[i].emitted, kvtest.Emitted{Port: port, Event: ev})
			}
			return nil
		})
	}
	for _, err := range []error{
		g.AddSource("src", src, pipeline.PortOut),
		g.AddProcessor("store", withoutClose{c}, kv.Ports()...),
		g.AddProcessor("outs", sink(pipeline.PortOut)),
		g.AddProcessor("errs", sink(pipeline.PortErr)),
		g.Link("src", pipeline.PortOut, "store"),
		g.Link("store", pipeline.PortOut, "outs"),
		g.Link("store", pipeline.PortErr, "errs"),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return out
}

// withoutClose keeps the graph from closing the connector: tests use it
// again.
type withoutClose struct{ pipeline.Processor }

func errorOf(e kvtest.Emitted) string { return gjson.GetBytes(e.Event.Meta, "error").String() }

// TestEventsOfPartitionsServedElsewhere: two instances share 2
// partitions. An event reaching an instance that does not serve its
// partition is given back (outcome Failed, nothing emitted) when its
// source redelivers; otherwise it waits partition_wait and fails on err
// with ErrPartitionNotReady naming the partition and its state. Events of
// the served partition, in the same slice, are applied. A batch across
// partitions is refused with ErrCrossPartition.
func TestEventsOfPartitionsServedElsewhere(t *testing.T) {
	const n = 2
	_, js := connect(t)
	group := testGroup(t, js, n)
	oa := testOptions(t, js, group, "a", n)
	oa.Wait = 300 * time.Millisecond
	a := open(t, oa)
	waitShares(t, 30*time.Second, []*Connector{a}, n, 2)
	_, jsb := connect(t)
	b := open(t, testOptions(t, jsb, group, "b", n))
	waitShares(t, 30*time.Second, []*Connector{a, b}, n, 1, 1)
	mine, theirs := a.Serving()[0], b.Serving()[0]
	km, kt := keyIn(mine, n), keyIn(theirs, n)

	put := func(k string) pipeline.Event { return kvtest.Event(kvtest.MC(`"put":"`+k+`"`, `7`), `1`) }
	// A redelivering source: the other partition's event is given back.
	got := runGraph(t, a, true, put(km), put(kt))
	if o := got[0]; o.outcome.Failed() || len(o.emitted) != 1 || o.emitted[0].Port != pipeline.PortOut {
		t.Errorf("event of the served partition: failed %v, emitted %v", o.outcome.Failed(), kvtest.Strings(o.emitted))
	}
	if o := got[1]; !o.outcome.Failed() || len(o.emitted) != 0 {
		t.Errorf("event of partition %d (served by b): failed %v, emitted %v; want given back", theirs, o.outcome.Failed(), kvtest.Strings(o.emitted))
	}
	// A source that does not redeliver: it waits, then fails.
	start := time.Now()
	got = runGraph(t, a, false, put(kt), put(km))
	if waited := time.Since(start); waited < oa.Wait {
		t.Errorf("failed after %v, before partition_wait %v", waited, oa.Wait)
	}
	if o := got[1]; len(o.emitted) != 1 || o.emitted[0].Port != pipeline.PortOut {
		t.Errorf("event of the served partition: %v", kvtest.Strings(o.emitted))
	}
	o := got[0]
	if len(o.emitted) != 1 || o.emitted[0].Port != pipeline.PortErr {
		t.Fatalf("event of partition %d: %v, want one err event", theirs, kvtest.Strings(o.emitted))
	}
	msg := errorOf(o.emitted[0])
	for _, want := range []string{fmt.Sprintf("partition %d", theirs), "not owned by this instance", "partition_wait", kv.ErrPartitionNotReady.Error()} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not say %q", msg, want)
		}
	}
	if c := gjson.GetBytes(o.emitted[0].Event.Meta, "correlation").Raw; c != "7" {
		t.Errorf("correlation %q not kept", c)
	}

	// A batch across partitions, through either instance.
	for _, c := range []*Connector{a, b} {
		var rec kvtest.Recorder
		batch := kvtest.Event(kvtest.M(`"batch":[{"put":"`+km+`","value":1},{"put":"`+kt+`","value":2}]`), "")
		if err := c.Process(context.Background(), []pipeline.Event{batch}, &rec); err != nil {
			t.Fatal(err)
		}
		if len(rec.Events) != 1 || rec.Events[0].Port != pipeline.PortErr ||
			!strings.Contains(errorOf(rec.Events[0]), kv.ErrCrossPartition.Error()) {
			t.Errorf("%s: cross-partition batch gave %v", c.Instance(), kvtest.Strings(rec.Events))
		}
	}
	if err := checkCrossPartition(); err != nil {
		t.Error(err)
	}
}

// checkCrossPartition is the sentinel test of partitionOf's refusal.
func checkCrossPartition() error {
	c := &Connector{rt: &runtime{opts: Options{Partitions: 2}}}
	_, err := c.partitionOf(kvtest.Event(kvtest.M(`"batch":[{"put":"`+keyIn(0, 2)+`","value":1},{"delete":"`+keyIn(1, 2)+`"}]`), ""))
	if !errors.Is(err, kv.ErrCrossPartition) {
		return fmt.Errorf("partitionOf(cross-partition batch) = %v, want ErrCrossPartition", err)
	}
	return nil
}

// TestPartitionKeyExpression: with partition_key
// substr(meta.kv.key, 0, 7), keys sharing their first 7 characters
// ("player7/score", "player7/rank") share a partition, so a batch over
// them is applied, while one over two players of different partitions is
// refused: each batch element is keyed as a command of its own.
func TestPartitionKeyExpression(t *testing.T) {
	const n = 4
	_, js := connect(t)
	opts := testOptions(t, js, testGroup(t, js, n), "solo", n)
	opts.PartitionKey = mustExpr(t, `substr(meta.kv.key, 0, 7)`)
	opts.Wait = time.Minute
	c := open(t, opts)
	var other string
	for i := range 10 {
		if other = fmt.Sprintf("player%d", i); partition.OfString(other, n) != partition.OfString("player7", n) {
			break
		}
	}
	do := func(meta string) kvtest.Emitted {
		var rec kvtest.Recorder
		if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(meta, "")}, &rec); err != nil {
			t.Fatal(err)
		}
		if len(rec.Events) != 1 {
			t.Fatalf("%s: %v", meta, kvtest.Strings(rec.Events))
		}
		return rec.Events[0]
	}
	if e := do(kvtest.M(`"batch":[{"put":"player7/score","value":3},{"put":"player7/rank","value":1}]`)); e.Port != pipeline.PortOut {
		t.Errorf("batch within player7: %s", e)
	}
	e := do(kvtest.M(`"batch":[{"put":"player7/score","value":3},{"put":"` + other + `/score","value":1}]`))
	if e.Port != pipeline.PortErr || !strings.Contains(errorOf(e), kv.ErrCrossPartition.Error()) {
		t.Errorf("batch over player7 and %s: %s", other, e)
	}
	if e := do(kvtest.M(`"get":"player7/rank"`)); string(e.Event.Data) != "1" {
		t.Errorf("get player7/rank: %s", e)
	}
	if e := do(kvtest.M(`"get":"x"`)); e.Port != pipeline.PortOut {
		t.Errorf("get x (a key shorter than 7): %s", e)
	}
	// A key expression giving something else than a string, number or
	// boolean fails the event.
	opts.PartitionKey = mustExpr(t, `meta.kv`)
	c2 := &Connector{rt: &runtime{opts: opts}}
	if _, err := c2.partitionOf(kvtest.Event(kvtest.M(`"get":"x"`), "")); !errors.Is(err, kv.ErrInvalidKey) {
		t.Errorf("an object as partition key: %v, want ErrInvalidKey", err)
	}
}

// TestFencedWritesAreRedelivered: a partition whose changelog another
// owner fenced (as after a take-over this instance has not noticed yet)
// fails its next commit: an event of a redelivering source is given back
// (outcome Failed, nothing emitted, never acknowledged), another fails on
// err with ErrCommit; the instance then drops the partition, takes it
// again and restores the fence, and the next write is applied.
func TestFencedWritesAreRedelivered(t *testing.T) {
	const n = 1
	_, js := connect(t)
	group := testGroup(t, js, n)
	opts := testOptions(t, js, group, "solo", n)
	opts.Wait = time.Minute
	c := open(t, opts)
	waitShares(t, 30*time.Second, []*Connector{c}, n, 1)
	if got := runGraph(t, c, true, kvtest.Event(kvtest.M(`"increment":"n"`), "")); got[0].outcome.Failed() {
		t.Fatalf("first increment: %v", kvtest.Strings(got[0].emitted))
	}
	stream, subject := ChangelogStream(group, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log, err := changelog.Open(ctx, js, changelog.Options{Stream: stream, Subject: subject})
	if err != nil {
		t.Fatal(err)
	}
	// Epoch 1, below every lease epoch of the runtime: only the fence
	// (by sequence) matters here, and the runtime's next take-over must
	// not be below it (restores skip records of older epochs).
	if _, _, err := log.TakeOver(ctx, memstore.New(), 0, 1); err != nil {
		t.Fatal(err)
	}
	redelivered := runGraph(t, c, true, kvtest.Event(kvtest.M(`"increment":"n"`), ""))
	if o := redelivered[0]; !o.outcome.Failed() || len(o.emitted) != 0 {
		t.Errorf("increment after the fence from a redelivering source: failed %v, emitted %v; want given back",
			o.outcome.Failed(), kvtest.Strings(o.emitted))
	}
	// The store failed; until the partition is served again, events of
	// a source that does not redeliver wait (up to a minute here).
	var last string
	waitFor(t, 30*time.Second, "the partition served again, after the fence", func() bool {
		var rec kvtest.Recorder
		if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(`"increment":"n"`), "")}, &rec); err != nil {
			t.Fatal(err)
		}
		last = strings.Join(kvtest.Strings(rec.Events), "; ")
		if len(rec.Events) == 1 && rec.Events[0].Port == pipeline.PortErr {
			if !strings.Contains(errorOf(rec.Events[0]), kv.ErrCommit.Error()) {
				t.Fatalf("failed increment: %s, want ErrCommit", last)
			}
			return false
		}
		return true
	})
	// Only the first increment and this one were applied.
	if !strings.Contains(last, `"data":2`) {
		t.Errorf("increment once served again: %s, want 2", last)
	}
	if got := slices.Index(c.Serving(), 0); got != 0 {
		t.Errorf("partition 0 not served: %v", c.Serving())
	}
}

// TestRoutingSpreadsKeys: with the default partition key, 40 keys
// incremented 10 times each, in slices mixing them, end with exact
// counts, each increment answering the next number (order kept within a
// partition); and each partition's store holds only its own keys: a
// count over the whole namespace (a null prefix, which goes to the
// partition of the empty key) sees exactly the keys of that partition.
// The served partitions are marked on the board until Close.
func TestRoutingSpreadsKeys(t *testing.T) {
	const n, keys, rounds = 4, 40, 10
	_, js := connect(t)
	opts := testOptions(t, js, testGroup(t, js, n), "solo", n)
	opts.Wait = time.Minute
	c := open(t, opts)
	next := map[string]int{}
	for r := range rounds {
		var evs []pipeline.Event
		for k := range keys {
			evs = append(evs, kvtest.Event(kvtest.MC(fmt.Sprintf(`"increment":"k%d"`, (k+r)%keys), fmt.Sprint(k)), ""))
		}
		var rec kvtest.Recorder
		if err := c.Process(context.Background(), evs, &rec); err != nil {
			t.Fatal(err)
		}
		if len(rec.Events) != keys {
			t.Fatalf("round %d: %d results", r, len(rec.Events))
		}
		for _, e := range rec.Events {
			key := gjson.GetBytes(e.Event.Meta, "kv.key").Str
			next[key]++
			if e.Port != pipeline.PortOut || string(e.Event.Data) != fmt.Sprint(next[key]) {
				t.Fatalf("round %d: %s, want %s = %d", r, e, key, next[key])
			}
		}
	}
	inEmpty := 0
	for k := range keys {
		if partition.OfString(fmt.Sprintf("k%d", k), n) == partition.OfString("", n) {
			inEmpty++
		}
	}
	var rec kvtest.Recorder
	if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(`"count":null`), "")}, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Events) != 1 || string(rec.Events[0].Event.Data) != fmt.Sprint(inEmpty) {
		t.Fatalf("count over partition %d = %v, want its %d keys of %d", partition.OfString("", n), kvtest.Strings(rec.Events), inEmpty, keys)
	}
	// Served partitions are on the board (for the partitioned sources)
	// until the connector gives them back.
	for p := range n {
		if _, ok := c.Board().Serving(p); !ok {
			t.Errorf("partition %d served but not on the board", p)
		}
	}
	if c.Board().Count() != n {
		t.Errorf("board count %d, want %d", c.Board().Count(), n)
	}
	_ = c.Close(context.Background())
	waitFor(t, 10*time.Second, "the board cleared after Close", func() bool {
		for p := range n {
			if _, ok := c.Board().Serving(p); ok {
				return false
			}
		}
		return true
	})
}

// TestEventsWaitForPartitionsComingHere: events of a redelivering source
// sent as an instance starts, while it is still taking its partitions,
// wait for them instead of bouncing through the broker: all are applied.
func TestEventsWaitForPartitionsComingHere(t *testing.T) {
	const n = 3
	_, js := connect(t)
	opts := testOptions(t, js, testGroup(t, js, n), "solo", n)
	opts.Wait = time.Minute
	c := open(t, opts)
	if len(c.Serving()) == n {
		t.Log("every partition was served already: the test proves little this time")
	}
	var evs []pipeline.Event
	for i := range 30 {
		evs = append(evs, kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"k%d"`, i)), "1"))
	}
	for i, o := range runGraph(t, c, true, evs...) {
		if o.outcome.Failed() || len(o.emitted) != 1 || o.emitted[0].Port != pipeline.PortOut {
			t.Errorf("event %d: failed %v, emitted %v", i, o.outcome.Failed(), kvtest.Strings(o.emitted))
		}
	}
}
