package amqp_test

import (
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// benchMessages is the number of messages each run consumes.
const benchMessages = 10_000

func benchEvents() []pipeline.Event {
	evs := make([]pipeline.Event, benchMessages)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":{"put":"k/%d"}}`, i, i))}
	}
	return evs
}

// BenchmarkConsume compares, in alternate rounds, amqp091-go consuming a
// queue with a prefetch of bus.DefaultWindow and acking each message
// ("bare"), with a flow reading the same messages through the amqp source
// into a kv put with sync on ("flow"). Each run consumes benchMessages
// messages published beforehand; the metric is messages/s, from dialing
// (building the flow) until the last message is acked (its put synced).
//
//	go test -run '^$' -bench Consume -benchtime 1x ./connectors/amqp
func BenchmarkConsume(b *testing.B) {
	url := brokerURL(b)
	evs := benchEvents()
	fill := func(b *testing.B) string {
		b.StopTimer()
		q := uniqueQueue("bench")
		publishEvents(b, url, q, evs)
		b.StartTimer()
		return q
	}
	bare := func(b *testing.B) {
		for range b.N {
			q := fill(b)
			start := time.Now()
			conn, err := amqp091.Dial(url)
			if err != nil {
				b.Fatal(err)
			}
			ch, err := conn.Channel()
			if err != nil {
				b.Fatal(err)
			}
			if err := ch.Qos(bus.DefaultWindow, 0, false); err != nil {
				b.Fatal(err)
			}
			ds, err := ch.Consume(q, "", false, false, false, false, nil)
			if err != nil {
				b.Fatal(err)
			}
			for n := 0; n < benchMessages; n++ {
				d := <-ds
				if err := d.Ack(false); err != nil {
					b.Fatal(err)
				}
			}
			_ = conn.Close()
			b.ReportMetric(benchMessages/time.Since(start).Seconds(), "msgs/s")
			b.StopTimer()
			dropQueue(url, q)
			b.StartTimer()
		}
	}
	flow := func(b *testing.B) {
		for range b.N {
			q := fill(b)
			start := time.Now()
			g, _, stop := runFlow(b, b.TempDir(), fmt.Sprintf(`name: bench
connectors:
  input: { type: amqp, mode: read, url: %q, queue: %q }
  store: { type: kv, dir: state }
  drop:  { type: null }
links:
  - input/out -> store/in
  - store/out -> drop/in
`, url, q))
			for sinkReceived(g, "drop") < benchMessages {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(benchMessages/time.Since(start).Seconds(), "msgs/s")
			b.StopTimer()
			// The last window's acks follow within milliseconds; the
			// graceful stop (closing the store) is not timed.
			if err := stop(); err != nil {
				b.Fatal(err)
			}
			dropQueue(url, q)
			b.StartTimer()
		}
	}
	for round := 1; round <= 3; round++ {
		b.Run(fmt.Sprintf("bare/%d", round), bare)
		b.Run(fmt.Sprintf("flow/%d", round), flow)
	}
}

func dropQueue(url, q string) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return
	}
	defer conn.Close()
	if ch, err := conn.Channel(); err == nil {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
}
