package mqtt_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/flowrun/flowrun/pipeline"
)

// benchMessages is the number of messages each measurement moves.
const benchMessages = 20_000

// queueBench publishes benchMessages kv puts (codec event) to the new
// persistent session of clientID on topic.
func queueBench(b *testing.B, url, topic, clientID string) {
	b.Helper()
	createSession(b, url, clientID, topic)
	evs := make([]pipeline.Event, benchMessages)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d,"pad":"0123456789abcdef"}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":{"put":"k/%d"}}`, i, i))}
	}
	publish(b, url, topic, envelopes(evs))
}

// bareRate reads the queued messages with paho alone (QoS 1, manual acks,
// each acked as it arrives) and returns messages/s.
func bareRate(b *testing.B, url string) float64 {
	topic, id := uniqueTopic("bench-bare"), "bench-bare-"+randomID()
	queueBench(b, url, topic, id)
	var n atomic.Int64
	done := make(chan struct{})
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(false).SetAutoAckDisabled(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			m.Ack()
			if n.Add(1) == benchMessages {
				close(done)
			}
		})
	start := time.Now()
	c := paho.NewClient(o)
	if tok := c.Connect(); tok.Wait() && tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	if tok := c.Subscribe(topic, 1, nil); tok.Wait() && tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("bare client: %d of %d messages", n.Load(), benchMessages)
	}
	rate := benchMessages / time.Since(start).Seconds()
	c.Disconnect(100)
	return rate
}

// flowRate runs mqtt -> kv put (sync on) -> null over the queued messages
// and returns messages/s.
func flowRate(b *testing.B, url string) float64 {
	topic, id := uniqueTopic("bench-flow"), "bench-flow-"+randomID()
	queueBench(b, url, topic, id)
	built := loadFlow(b, b.TempDir(), fmt.Sprintf(`name: bench
connectors:
  input:  { type: mqtt, mode: read, url: %q, topic: %q, codec: event, client_id: %s }
  store:  { type: kv, dir: state }
  ignore: { type: "null" }
links:
  - input/out -> store/in
  - store/out -> ignore/in
`, url, topic, id), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
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
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("flow: %d of %d messages", n, benchMessages)
		}
		time.Sleep(time.Millisecond)
	}
	rate := benchMessages / time.Since(start).Seconds()
	cancel()
	must(b, <-done)
	return rate
}

// BenchmarkBareVsFlow measures, alternately three times, the bare paho
// client reading and acking benchmarkMessages queued messages and the
// flow mqtt -> kv put (sync on) handling the same, and reports the medians
// and their ratio. Run it alone (-bench BareVsFlow -benchtime 1x): it
// needs FLOWRUN_MQTT_URL.
func BenchmarkBareVsFlow(b *testing.B) {
	url := mqttURL(b)
	var bare, flow []float64
	for range b.N {
		for range 3 {
			bare = append(bare, bareRate(b, url))
			flow = append(flow, flowRate(b, url))
		}
	}
	slices.Sort(bare)
	slices.Sort(flow)
	mb, mf := bare[len(bare)/2], flow[len(flow)/2]
	b.Logf("bare client msgs/s %.0f; flow msgs/s %.0f", bare, flow)
	b.ReportMetric(mb, "bare-msgs/s")
	b.ReportMetric(mf, "flow-msgs/s")
	b.ReportMetric(mf/mb, "flow/bare")
	b.ReportMetric(0, "ns/op")
}
