package kafka_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/pipeline"
)

// freePort returns a loopback port free at the time of the call.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestBrokerRestartedMidRun: the test's own kfake broker, persisting to a
// temp dir on a fixed port, is closed while a flow is midway and a new one
// is started on the same port and data: the flow reports itself not ready
// while the broker is away, resumes by itself, and answers every record;
// the committed offsets reach the end of every partition. Records done
// before the restart but not yet committed, or whose result was being
// produced, are answered twice: counted and logged.
func TestBrokerRestartedMidRun(t *testing.T) {
	// n records before the restart, n/3 more after it: the restarted
	// broker has new work whatever the speed.
	n := 3000
	port, dataDir := freePort(t), t.TempDir()
	opts := []kfake.Opt{kfake.Ports(port), kfake.DataDir(dataDir), kfake.SyncWrites()}
	c := startCluster(t, opts...)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out")
	evs := make([]pipeline.Event, n+n/3)
	for i := range evs {
		evs[i] = kvInput(i, 50)
	}
	produceEvents(t, brokers, "in", evs[:n])
	out := readTopic(t, brokers, "out")
	b := strings.Join(brokers, ",")
	rf := runFlow(t, fmt.Sprintf(`name: restart
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: restart, window: 64, commit_interval: 100ms,
            reconnect_initial: 50ms, reconnect_max: 500ms }
  store:  { type: kv, dir: state }
  output: { type: kafka, mode: write, brokers: %q, topic: out, publish_timeout: 2s,
            reconnect_initial: 50ms, reconnect_max: 500ms }
links:
  - input/out -> store/in
  - store/out -> output/in
`, b, b))
	out.until(t, 60*time.Second, distinct(n/3))
	c.Close()
	atStop := len(correlations(out.evs))
	// While the broker is away the flow is not ready.
	deadline := time.Now().Add(20 * time.Second)
	for rf.health.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the flow stayed ready with its broker gone")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("broker closed after %d of %d answers; not ready: %v", atStop, n, rf.health.Err())
	time.Sleep(500 * time.Millisecond)
	c2 := startCluster(t, opts...)
	if got := c2.ListenAddrs(); strings.Join(got, ",") != b {
		t.Fatalf("restarted broker at %v, want %s", got, b)
	}
	produceEvents(t, brokers, "in", evs[n:])
	n += n / 3
	got := out.until(t, 90*time.Second, distinct(n))
	seen := correlations(got)
	for i := range n {
		if seen[fmt.Sprintf("m-%d", i)] == 0 {
			t.Fatalf("no result for m-%d (%d of %d answered)", i, len(seen), n)
		}
	}
	ends := endOffsets(t, brokers, "in")
	deadline = time.Now().Add(20 * time.Second)
	for {
		com := committed(t, brokers, "restart", "in")
		ok := true
		for p, end := range ends {
			ok = ok && com[p] == end
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want the ends %v", com, ends)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for rf.health.Err() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("not ready after the broker came back: %v", rf.health.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
	out.poll(t, 300*time.Millisecond)
	t.Logf("all %d answered after the restart; %d results, %d duplicates", n, len(out.evs), len(out.evs)-n)
	rf.stop(t)
}

// errEmitter collects what a sink emits on "err".
type errEmitter struct {
	mu   sync.Mutex
	errs []string
}

func (e *errEmitter) Emit(port string, ev pipeline.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errs = append(e.errs, port+": "+gjson.GetBytes(ev.Meta, "error").String())
}

// TestSinkBrokerAwayPastPublishTimeout: the broker is away for several
// publish timeouts while a sink with reconnect holds a slice, either from
// the sink's start or after it has produced once: the sink reports itself
// not ready meanwhile, and once the broker is back every record is stored,
// once, nothing goes to "err", and the sink is ready again.
//
// Two faults it caught: records retried as they were first produced kept
// their first attempt's timestamp, which franz-go takes for the start of
// the publish timeout, so every retry failed at once, for ever ("at
// start"); and a produce the broker may have stored before it went away
// is not failed by the idempotent producer but waited on, with the sink
// still reporting itself ready ("after a produce").
func TestSinkBrokerAwayPastPublishTimeout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		warmUp bool
	}{{"at start", false}, {"after a produce", true}} {
		t.Run(tc.name, func(t *testing.T) {
			port, dataDir := freePort(t), t.TempDir()
			opts := []kfake.Opt{kfake.Ports(port), kfake.DataDir(dataDir), kfake.SyncWrites()}
			c := startCluster(t, opts...)
			brokers := c.ListenAddrs()
			createTopics(t, brokers, "out")
			health := &component.Health{}
			sink, err := kafka.NewSink(kafka.SinkOptions{
				Options:   kafka.Options{Name: "output", Brokers: brokers, Topic: "out", PublishTimeout: time.Second},
				Reconnect: &bus.Reconnect{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond},
				Health:    health,
			})
			must(t, err)
			defer sink.Close(context.Background())
			slice := func(from, n int) []pipeline.Event {
				evs := make([]pipeline.Event, n)
				for i := range evs {
					evs[i] = pipeline.Event{Data: []byte(`{}`), Meta: []byte(fmt.Sprintf(`{"correlation":"m-%d"}`, from+i))}
				}
				return evs
			}
			var em errEmitter
			n := 0
			if tc.warmUp {
				must(t, sink.Process(context.Background(), slice(0, 10), &em))
				n = 10
			}
			c.Close()
			done := make(chan error, 1)
			held := slice(n, 20)
			n += len(held)
			go func() { done <- sink.Process(context.Background(), held, &em) }()
			deadline := time.Now().Add(10 * time.Second)
			for health.Err() == nil {
				if time.Now().After(deadline) {
					t.Fatal("the sink stayed ready with its broker away")
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("not ready: %v", health.Err())
			time.Sleep(3 * time.Second)
			startCluster(t, opts...)
			select {
			case err := <-done:
				must(t, err)
			case <-time.After(30 * time.Second):
				t.Fatalf("the slice was not stored 30 s after the broker came back: %v", health.Err())
			}
			if len(em.errs) > 0 {
				t.Fatalf("emitted %v", em.errs)
			}
			got := correlations(readTopic(t, brokers, "out").until(t, 20*time.Second, distinct(n)))
			for i := range n {
				if k := got[fmt.Sprintf("m-%d", i)]; k != 1 {
					t.Errorf("m-%d stored %d times, want once", i, k)
				}
			}
			if err := health.Err(); err != nil {
				t.Errorf("not ready once stored: %v", err)
			}
		})
	}
}
