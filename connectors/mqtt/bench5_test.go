package mqtt_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/pipeline"
)

// queueBench5 publishes benchMessages kv puts (codec event) to the new
// persistent MQTT 5 session of clientID on topic.
func queueBench5(b *testing.B, url, topic, clientID string) {
	b.Helper()
	createSessionFor(b, Protocol5, url, clientID, topic)
	evs := make([]pipeline.Event, benchMessages)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d,"pad":"0123456789abcdef"}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":{"put":"k/%d"}}`, i, i))}
	}
	publish(b, url, topic, envelopes(evs))
}

// bareRate5 reads the queued messages with paho.golang alone (QoS 1, each
// acked as its handler returns, Receive Maximum DefaultMaxInflight as the
// flow's source asks) and returns messages/s.
func bareRate5(b *testing.B, url string) float64 {
	topic, id := uniqueTopic("bench5-bare"), "bench5-bare-"+randomID()
	queueBench5(b, url, topic, id)
	var n atomic.Int64
	done := make(chan struct{})
	start := time.Now()
	c := client5(b, url, id, false, DefaultSessionExpiry, func(*paho5.Publish) {
		if n.Add(1) == benchMessages {
			close(done)
		}
	})
	subscribe5(b, c, topic)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("bare client: %d of %d messages", n.Load(), benchMessages)
	}
	rate := benchMessages / time.Since(start).Seconds()
	disconnect5(c)
	return rate
}

// flowRate5 runs mqtt (protocol 5) -> kv put (sync on) -> null over the
// queued messages and returns messages/s.
func flowRate5(b *testing.B, url string) float64 {
	topic, id := uniqueTopic("bench5-flow"), "bench5-flow-"+randomID()
	queueBench5(b, url, topic, id)
	built := loadFlow(b, b.TempDir(), fmt.Sprintf(`name: bench
connectors:
  input:  { type: mqtt, mode: read, url: %q, topic: %q, codec: event, client_id: %s, protocol: "5" }
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

// BenchmarkBareVsFlow5 is BenchmarkBareVsFlow with MQTT 5: the bare
// paho.golang client against the flow with protocol 5, alternately three
// times, medians and their ratio (-bench BareVsFlow5 -benchtime 1x; needs
// FLOWRUN_MQTT_URL).
func BenchmarkBareVsFlow5(b *testing.B) {
	url := mqttURL(b)
	var bare, flow []float64
	for range b.N {
		for range 3 {
			bare = append(bare, bareRate5(b, url))
			flow = append(flow, flowRate5(b, url))
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
