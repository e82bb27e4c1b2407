package mqtt_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/pipeline"
)

// benchMessages is the number of messages each measurement moves.
const benchMessages = 20_000

// Profiles of the flow alone, while it moves the messages (not while they
// are queued): go test -bench 'Flow$' -args -flow.cpuprofile cpu.out.
var (
	flowCPUProfile = flag.String("flow.cpuprofile", "", "BenchmarkFlow: write a CPU profile of the flow's run to this file")
	flowTrace      = flag.String("flow.trace", "", "BenchmarkFlow: write an execution trace of the flow's run to this file")
)

// profiled runs run under the profiles asked for with -flow.cpuprofile and
// -flow.trace, suffixed with name.
func profiled(b *testing.B, name string, run func()) {
	b.Helper()
	if *flowCPUProfile != "" {
		f, err := os.Create(*flowCPUProfile + name)
		must(b, err)
		defer f.Close()
		must(b, pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	if *flowTrace != "" {
		f, err := os.Create(*flowTrace + name)
		must(b, err)
		defer f.Close()
		must(b, trace.Start(f))
		defer trace.Stop()
	}
	run()
}

// rate is one measurement: messages/s and CPU µs per message.
type rate struct {
	msgsPerSec float64
	cpuPerMsg  float64
}

func (r rate) String() string { return fmt.Sprintf("%.0f/s %.1fµs", r.msgsPerSec, r.cpuPerMsg) }

// measure returns the rate of moving benchMessages with run, which returns
// once they are all done.
func measure(run func()) rate {
	start, cpu := time.Now(), cpuTime()
	run()
	elapsed, used := time.Since(start), cpuTime()-cpu
	return rate{msgsPerSec: benchMessages / elapsed.Seconds(), cpuPerMsg: float64(used.Microseconds()) / benchMessages}
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

// queueBench publishes benchMessages kv puts (codec event) to the new
// persistent session (protocol) of clientID on topic.
func queueBench(b *testing.B, protocol, url, topic, clientID string) {
	b.Helper()
	createSessionFor(b, protocol, url, clientID, topic)
	evs := make([]pipeline.Event, benchMessages)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d,"pad":"0123456789abcdef"}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":{"put":"k/%d"}}`, i, i))}
	}
	publish(b, url, topic, envelopes(evs))
}

// bareRate reads the queued messages with the broker's own client alone
// and returns its rate: with 3.1.1, paho.mqtt.golang, each message acked
// in its handler (manual acks); with 5, paho.golang, each acked as its
// handler returns.
func bareRate(b *testing.B, protocol, url string) rate {
	topic, id := uniqueTopic("bench-bare"), "bench-bare-"+randomID()
	queueBench(b, protocol, url, topic, id)
	var n atomic.Int64
	done := make(chan struct{})
	count := func() {
		if n.Add(1) == benchMessages {
			close(done)
		}
	}
	var stop func()
	r := measure(func() {
		if protocol == Protocol5 {
			c := client5(b, url, id, false, DefaultSessionExpiry, func(*paho5.Publish) { count() })
			subscribe5(b, c, topic)
			stop = func() { disconnect5(c) }
		} else {
			o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(false).SetAutoAckDisabled(true).
				SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { m.Ack(); count() })
			c := paho.NewClient(o)
			if tok := c.Connect(); tok.Wait() && tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			subscribe(b, c, topic, 1)
			stop = func() { c.Disconnect(100) }
		}
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			b.Fatalf("bare client: %d of %d messages", n.Load(), benchMessages)
		}
	})
	stop()
	return r
}

// flowRate runs mqtt (protocol) -> kv put (sync on) -> null over the
// queued messages and returns its rate; wrap, when set, wraps the run.
func flowRate(b *testing.B, protocol, url string, wrap func(func())) rate {
	topic, id := uniqueTopic("bench-flow"), "bench-flow-"+randomID()
	queueBench(b, protocol, url, topic, id)
	built := loadFlow(b, b.TempDir(), fmt.Sprintf(`name: bench
connectors:
  input:  { type: mqtt, mode: read, url: %q, topic: %q, codec: event, client_id: %s, protocol: %q }
  store:  { type: kv, dir: state }
  ignore: { type: "null" }
links:
  - input/out -> store/in
  - store/out -> ignore/in
`, url, topic, id, protocol), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if wrap == nil {
		wrap = func(run func()) { run() }
	}
	r := measure(func() {
		wrap(func() {
			go func() { done <- built.Run(ctx) }()
			deadline := time.Now().Add(2 * time.Minute)
			for {
				n := uint64(0)
				for _, c := range built.Graph.Counts() {
					if c.Node == "ignore" && c.Port == pipeline.PortIn {
						n = c.Events
					}
				}
				if n >= benchMessages {
					return
				}
				if time.Now().After(deadline) {
					b.Fatalf("flow: %d of %d messages", n, benchMessages)
				}
				time.Sleep(time.Millisecond)
			}
		})
	})
	cancel()
	must(b, <-done)
	return r
}

// benchBareVsFlow measures, alternately three times, the bare client
// reading and acking benchMessages queued messages and the flow mqtt -> kv
// put (sync on) handling the same, and reports the means, CPU per message
// and the ratio of the mean rates.
func benchBareVsFlow(b *testing.B, protocol string) {
	url := mqttURL(b)
	var bare, flow []rate
	for range b.N {
		for range 3 {
			bare = append(bare, bareRate(b, protocol, url))
			flow = append(flow, flowRate(b, protocol, url, nil))
		}
	}
	mean := func(rs []rate) (r rate) {
		for _, x := range rs {
			r.msgsPerSec += x.msgsPerSec / float64(len(rs))
			r.cpuPerMsg += x.cpuPerMsg / float64(len(rs))
		}
		return r
	}
	mb, mf := mean(bare), mean(flow)
	b.Logf("protocol %s: bare msgs/s, cpu-µs/msg %v; flow %v", protocol, bare, flow)
	b.ReportMetric(mb.msgsPerSec, "bare-msgs/s")
	b.ReportMetric(mf.msgsPerSec, "flow-msgs/s")
	b.ReportMetric(mb.cpuPerMsg, "bare-cpu-µs/msg")
	b.ReportMetric(mf.cpuPerMsg, "flow-cpu-µs/msg")
	b.ReportMetric(mf.msgsPerSec/mb.msgsPerSec, "flow/bare")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkBareVsFlow is the MQTT 3.1.1 pair (-bench 'BareVsFlow$'
// -benchtime 1x; needs FLOWRUN_MQTT_URL).
func BenchmarkBareVsFlow(b *testing.B) { benchBareVsFlow(b, Protocol311) }

// BenchmarkBareVsFlow5 is the MQTT 5 pair: the bare paho.golang client
// against the flow with protocol 5 (-bench BareVsFlow5 -benchtime 1x).
func BenchmarkBareVsFlow5(b *testing.B) { benchBareVsFlow(b, Protocol5) }

// BenchmarkFlow runs the flow alone, once per protocol, for profiles
// (-bench '^BenchmarkFlow$' -benchtime 1x -args -flow.cpuprofile cpu.out
// -flow.trace trace.out: one file per protocol, suffixed .3.1.1 and .5).
func BenchmarkFlow(b *testing.B) {
	url := mqttURL(b)
	for _, protocol := range protocols {
		b.Run("protocol="+protocol, func(b *testing.B) {
			var r rate
			for range b.N {
				r = flowRate(b, protocol, url, func(run func()) { profiled(b, "."+protocol, run) })
			}
			b.ReportMetric(r.msgsPerSec, "msgs/s")
			b.ReportMetric(r.cpuPerMsg, "cpu-µs/msg")
			b.ReportMetric(0, "ns/op")
		})
	}
}
