package kafka_test

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/pipeline"
)

// The pair below measures, on kfake (an in-process broker whose speed is
// not a real cluster's), records/s consumed and committed by the bare
// franz-go client and by a flow putting each record into the kv store
// (sync on), and the process's CPU time per record (cpu-µs/msg; the
// broker's included on both sides). Run them in one invocation,
// alternately:
//
//	go test ./connectors/kafka -run '^$' -bench 'Consume' -count 3 -benchtime 5000x

// cpuTime is the CPU time (user and system) used by the process so far:
// both sides' figure includes the in-process broker's.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRecords produces n kv put commands to a new topic of a new cluster
// and returns the brokers.
func benchRecords(b *testing.B, n int) []string {
	b.Helper()
	c := startCluster(b)
	brokers := c.ListenAddrs()
	createTopics(b, brokers, "in")
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":"m-%d","kv":{"put":"p/%d"}}`, i, i))}
	}
	produceEvents(b, brokers, "in", evs)
	return brokers
}

// BenchmarkConsumeBareClient: a franz-go group consumer reads b.N records
// and commits after each poll (what it read), without flowrun.
func BenchmarkConsumeBareClient(b *testing.B) {
	brokers := benchRecords(b, b.N)
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup("bare"), kgo.ConsumeTopics("in"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	must(b, err)
	defer cl.Close()
	ctx := context.Background()
	for n := 0; n < b.N; {
		f := cl.PollRecords(ctx, 256)
		must(b, f.Err())
		recs := f.Records()
		n += len(recs)
		must(b, cl.CommitRecords(ctx, recs...))
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
}

// BenchmarkConsumeKVPutFlow: a flow kafka -> kv (put, sync on) -> null
// handles b.N records; timed until the group has committed them all.
func BenchmarkConsumeKVPutFlow(b *testing.B) {
	brokers := benchRecords(b, b.N)
	ends := endOffsets(b, brokers, "in")
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	rf := runFlow(b, fmt.Sprintf(`name: bench
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: flow, commit_interval: 10ms }
  store:  { type: kv, dir: state }
  done:   { type: "null" }
links:
  - input/out -> store/in
  - store/out -> done/in
`, strings.Join(brokers, ",")))
	for {
		com := committed(b, brokers, "flow", "in")
		ok := true
		for p, end := range ends {
			ok = ok && com[p] == end
		}
		if ok {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
	b.StopTimer()
	rf.stop(b)
}
