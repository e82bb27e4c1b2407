package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/pipeline"
)

// TestCrashLoopSetAside: with attempts_dir, a record whose handling began
// max_deliveries times without finishing (the process died handling it)
// is dead-lettered, unprocessed, at the next start. The sessions crash
// while handling record 2 of 0..4 (one partition), committing nothing;
// with max_deliveries 2 the first two sessions are handed record 2, the
// third sets it aside and goes on; records 0 and 1, finished before each
// crash, are never set aside. A fourth crash, before any commit, reads
// record 2 again: it is set aside again. Then a flow started on the same
// attempt record dead-letters record 2 and produces 0, 1, 3, 4.
// Windows of 1 and of 16 records (record 2 handed over with the others).
func TestCrashLoopSetAside(t *testing.T) {
	for _, window := range []int{1, 16} {
		t.Run(fmt.Sprintf("window=%d", window), func(t *testing.T) { testCrashLoopSetAside(t, window) })
	}
}

func testCrashLoopSetAside(t *testing.T, window int) {
	c := startCluster(t)
	brokers := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	must(t, err)
	resp, err := kadm.NewClient(cl).CreateTopics(context.Background(), 1, 1, nil, "crash", "out", "crash.dead")
	cl.Close()
	must(t, err)
	must(t, resp.Error())
	evs := make([]pipeline.Event, 5)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)), Meta: []byte(fmt.Sprintf(`{"correlation":"c%d"}`, i))}
	}
	produceEvents(t, brokers, "crash", evs)
	dir := t.TempDir()
	opts := kafka.SourceOptions{
		Options:     kafka.Options{Name: "input", Brokers: brokers, Topic: "crash", Group: "g", CommitInterval: time.Hour},
		Source:      bus.SourceOptions{MaxDeliveries: 2, Window: window},
		AttemptsDir: dir,
	}
	for start, want := range []struct{ handed, setAside []int64 }{
		{handed: []int64{0, 1, 2}},
		{handed: []int64{0, 1, 2}},
		{handed: []int64{0, 1, 2, 3}, setAside: []int64{2}},
		// A crash before the commit passed it: record 2 is set aside again.
		{handed: []int64{0, 1, 2, 3}, setAside: []int64{2}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		handed, setAside, err := kafka.CrashSession(ctx, opts, 0, 2)
		cancel()
		must(t, err)
		if len(handed) > len(want.handed) && window > 1 {
			handed = handed[:len(want.handed)] // the batch went on past record 3
		}
		if !slices.Equal(handed, want.handed) || !slices.Equal(setAside, want.setAside) {
			t.Fatalf("start %d: handed %v, set aside %v; want %v, %v", start+1, handed, setAside, want.handed, want.setAside)
		}
	}

	out, dead := readTopic(t, brokers, "out"), readTopic(t, brokers, "crash.dead")
	b := strings.Join(brokers, ",")
	runFlow(t, fmt.Sprintf(`name: crash
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: crash, group: g, max_deliveries: 2, window: %d, attempts_dir: %q }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
links:
  - input/out -> output/in
`, b, window, dir, b))
	got := dead.until(t, 20*time.Second, atLeast(1))
	if len(got) != 1 || gjson.GetBytes(got[0].Meta, "correlation").String() != "c2" ||
		!strings.Contains(gjson.GetBytes(got[0].Meta, "error").String(), "handling began 2 times without finishing") {
		t.Fatalf("dead letters %d: %v", len(got), got)
	}
	seen := correlations(out.until(t, 20*time.Second, atLeast(4)))
	for _, corr := range []string{"c0", "c1", "c3", "c4"} {
		if seen[corr] == 0 {
			t.Errorf("%s not produced: %v", corr, seen)
		}
	}
	if seen["c2"] != 0 {
		t.Errorf("the record set aside was processed: %v", seen)
	}
}

// TestAttemptsRecordHasOneWriter: a second source of the same group and
// topic on the same attempts_dir (another process of the group on this
// host, or another node of the flow) is refused at start, naming the
// record: both would replace the record with their own partitions'
// entries. Another group or topic, or the same once the first source is
// closed, starts.
func TestAttemptsRecordHasOneWriter(t *testing.T) {
	c := startCluster(t)
	dir := t.TempDir()
	opts := func(group string) kafka.SourceOptions {
		return kafka.SourceOptions{
			Options:     kafka.Options{Name: "input", Brokers: c.ListenAddrs(), Topic: "t", Group: group},
			Source:      bus.SourceOptions{MaxDeliveries: 2},
			AttemptsDir: dir,
		}
	}
	ctx := context.Background()
	first, err := kafka.NewSource(ctx, nil, opts("g"))
	must(t, err)
	_, err = kafka.NewSource(ctx, nil, opts("g"))
	if !errors.Is(err, kafka.ErrAttemptsInUse) || !strings.Contains(err.Error(), "attempts_dir") {
		t.Fatalf("second source on the record = %v, want ErrAttemptsInUse naming attempts_dir", err)
	}
	other, err := kafka.NewSource(ctx, nil, opts("h"))
	must(t, err)
	must(t, other.Close(ctx))
	must(t, first.Close(ctx))
	again, err := kafka.NewSource(ctx, nil, opts("g"))
	must(t, err)
	must(t, again.Close(ctx))
}
