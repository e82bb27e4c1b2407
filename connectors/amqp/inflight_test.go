package amqp_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/connectors/amqp"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// TestPrefetchIsWindowsInFlight: the broker hands the source window ×
// windows_in_flight messages before the first is acked (the prefetch), not
// one window: with the flow holding every message, exactly that many leave
// the queue's ready count, and none is acked until the flow lets them go.
func TestPrefetchIsWindowsInFlight(t *testing.T) {
	url := brokerURL(t)
	const total, window, inFlight = 50, 4, 3
	q := uniqueQueue("inflight")
	deleteQueues(t, url, q)
	evs := make([]pipeline.Event, total)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i))}
	}
	publishEvents(t, url, q, evs)

	release := make(chan struct{})
	hold := pipeline.ProcessorFunc(func(ctx context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	g := pipeline.New(pipeline.Options{})
	src, err := amqp.NewSource(context.Background(), g, amqp.SourceOptions{
		Options: amqp.Options{URL: url, Queue: q},
		Source:  bus.SourceOptions{Name: "in", Window: window, WindowsInFlight: inFlight, Linger: time.Millisecond},
	})
	must(t, err)
	must(t, g.AddSource("in", src, bus.Ports()...))
	must(t, g.AddProcessor("hold", hold))
	must(t, g.Link("in", pipeline.PortOut, "hold"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	conn, err := amqp091.Dial(url)
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	ready := func() int {
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		must(t, err)
		return st.Messages
	}
	want := total - window*inFlight
	deadline := time.Now().Add(20 * time.Second)
	for ready() != want {
		if time.Now().After(deadline) {
			t.Fatalf("ready messages: %d, want %d (prefetch window %d × windows_in_flight %d)", ready(), want, window, inFlight)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Nothing more arrives while the flow holds them (acks would free
	// prefetch room).
	time.Sleep(300 * time.Millisecond)
	if n := ready(); n != want {
		t.Fatalf("ready messages: %d after holding, want %d: messages were acked before the flow was done", n, want)
	}
	close(release)
	deadline = time.Now().Add(30 * time.Second)
	for ready() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ready messages: %d, want 0 once the flow lets them go", ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	must(t, <-done)
	must(t, src.Close(context.Background()))
}
