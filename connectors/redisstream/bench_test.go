package redisstream_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// The pair below compares the redis_streams source feeding a kv put flow
// (sync on) with go-redis alone reading the same entries the way the
// source does (XREADGROUP COUNT 256, one XACK per batch). Run them
// together, alternately, with a fixed count:
//
//	go test ./connectors/redisstream -run '^$' -bench . -benchtime 20000x -count 3

func putEntry(i int) []any {
	return []any{"data", fmt.Sprintf(`{"i":%d}`, i), "kv", fmt.Sprintf(`{"put":"p/%d"}`, i)}
}

// BenchmarkBareXReadGroupAck reads b.N entries with XREADGROUP COUNT 256
// and acknowledges each batch with one XACK, sent in one pipeline with the
// next XREADGROUP.
func BenchmarkBareXReadGroupAck(b *testing.B) {
	url := redisURL(b)
	c := newClient(b, url)
	ctx := context.Background()
	in := unique("bench.bare")
	must(b, c.XGroupCreateMkStream(ctx, in, "g", "0").Err())
	addEntries(b, c, in, b.N, putEntry)
	b.Cleanup(func() { c.Del(ctx, in) })
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	var ids []string
	for got := 0; got < b.N; {
		pipe := c.Pipeline()
		if len(ids) > 0 {
			pipe.XAck(ctx, in, "g", ids...)
		}
		read := pipe.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{in, ">"}, Count: 256, Block: time.Second})
		_, err := pipe.Exec(ctx)
		must(b, err)
		msgs := read.Val()[0].Messages
		ids = ids[:0]
		for _, x := range msgs {
			ids = append(ids, x.ID)
		}
		got += len(msgs)
	}
	must(b, c.XAck(ctx, in, "g", ids...).Err())
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
}

// BenchmarkFlowKVPut runs b.N entries, each a kv put, through
// redis_streams -> kv (sync on) and stops once every entry is
// acknowledged.
func BenchmarkFlowKVPut(b *testing.B) {
	for _, sync := range []bool{true, false} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) { benchFlowKVPut(b, sync) })
	}
}

func benchFlowKVPut(b *testing.B, sync bool) {
	url := redisURL(b)
	c := newClient(b, url)
	ctx := context.Background()
	in := unique("bench.flow")
	addEntries(b, c, in, b.N, putEntry)
	b.Cleanup(func() { c.Del(ctx, in) })
	last, err := c.XRevRangeN(ctx, in, "+", "-", 1).Result()
	must(b, err)
	f := buildFlow(b, b.TempDir(), fmt.Sprintf(`name: bench
connectors:
  input: { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: c }
  store: { type: kv, dir: state, sync: %v }
links:
  - input/out -> store/in
`, url, in, sync))
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	f.run()
	waitFor(b, 5*time.Minute, "every entry acknowledged", func() bool {
		gs, err := c.XInfoGroups(ctx, in).Result()
		return err == nil && len(gs) == 1 && gs[0].LastDeliveredID == last[0].ID && gs[0].Pending == 0
	})
	elapsed, used := time.Since(start), cpuTime()-cpu
	b.StopTimer()
	f.stop(b)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(used.Microseconds())/float64(b.N), "cpu-µs/msg")
}

// cpuTime is the CPU time (user and system) the process has used: per
// message, a figure a loaded machine disturbs less than messages/s.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
