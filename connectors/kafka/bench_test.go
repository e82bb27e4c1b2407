package kafka_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/pipeline"
)

// The pair below measures records/s consumed and committed by the bare
// franz-go client and by a flow putting each record into the kv store
// (sync on), and the process's CPU time per record (cpu-µs/msg). Run them
// in one invocation, alternately:
//
//	go test ./connectors/kafka -run '^$' -bench 'Consume' -count 3 -benchtime 5000x
//
// By default the peer is kfake in the benchmark's own process (an
// in-process broker whose speed is not a real cluster's, and whose CPU
// time counts on both sides). With FLOWRUN_KAFKA_PEER set to a broker
// address, such as that of kfake run as a process of its own on loopback
// (go run ./scripts/kafkapeer -port 19092), both sides reach it over TCP
// and pay for their own work only, as with the other buses' brokers; each
// benchmark then uses a topic and groups of its own.
const envPeer = "FLOWRUN_KAFKA_PEER"

// cpuTime is the CPU time (user and system) used by the process so far:
// with the in-process peer, both sides' figure includes the broker's.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRecords produces n kv put commands to a new topic, on the peer of
// FLOWRUN_KAFKA_PEER or else a new in-process cluster, and returns the
// brokers and the topic.
func benchRecords(b *testing.B, n int) ([]string, string) {
	b.Helper()
	brokers, topic := strings.Split(os.Getenv(envPeer), ","), fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if brokers[0] == "" {
		brokers, topic = startCluster(b).ListenAddrs(), "in"
	}
	createTopics(b, brokers, topic)
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":"m-%d","kv":{"put":"p/%d"}}`, i, i))}
	}
	produceEvents(b, brokers, topic, evs)
	return brokers, topic
}

// BenchmarkConsumeBareClient: a franz-go group consumer reads b.N records
// and commits after each poll (what it read), without flowrun.
func BenchmarkConsumeBareClient(b *testing.B) {
	brokers, topic := benchRecords(b, b.N)
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(topic+"-bare"), kgo.ConsumeTopics(topic),
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
	brokers, topic := benchRecords(b, b.N)
	ends := endOffsets(b, brokers, topic)
	// One admin client polls the group's offsets: a client made per poll
	// would cost the flow's process a connection and a metadata request
	// every few milliseconds.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	must(b, err)
	defer cl.Close()
	adm, ctx := kadm.NewClient(cl), context.Background()
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	rf := runFlow(b, fmt.Sprintf(`name: bench
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: %q, group: %q, commit_interval: 10ms }
  store:  { type: kv, dir: state }
  done:   { type: "null" }
links:
  - input/out -> store/in
  - store/out -> done/in
`, strings.Join(brokers, ","), topic, topic+"-flow"))
	for done := false; !done; {
		resp, err := adm.FetchOffsets(ctx, topic+"-flow")
		must(b, err)
		done = true
		for p, end := range ends {
			o, ok := resp.Lookup(topic, p)
			done = done && (end == 0 || ok && o.Err == nil && o.At == end)
		}
		if !done {
			time.Sleep(5 * time.Millisecond)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
	b.StopTimer()
	rf.stop(b)
}
