package amqp

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// closedURL is an AMQP URL nothing listens on.
func closedURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "amqp://guest:s3cret@" + addr + "/"
}

// TestUnreachableBrokerAtStart: without fail_fast the source and sink are
// built and report themselves not ready (the flow waits for the broker);
// with fail_fast building fails, naming the broker but not the password.
func TestUnreachableBrokerAtStart(t *testing.T) {
	url := closedURL(t)
	o := Options{URL: url, Queue: "q", ConnectTimeout: 500 * time.Millisecond}
	res := component.NewResources()
	health := component.HealthOf(res)
	g := pipeline.New(pipeline.Options{})
	src, err := NewSource(context.Background(), g, SourceOptions{Options: o, Source: bus.SourceOptions{Name: "src-node"},
		Reconnect: bus.Reconnect{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}, Health: health})
	if err != nil {
		t.Fatalf("source with the broker down: %v", err)
	}
	defer src.Close(context.Background())
	sink, err := NewSink(context.Background(), SinkOptions{Options: o, Name: "sink-node", Health: health})
	if err != nil {
		t.Fatalf("sink with the broker down: %v", err)
	}
	defer sink.Close(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := health.Err()
		if err != nil && strings.Contains(err.Error(), "src-node: ") && strings.Contains(err.Error(), "sink-node: ") {
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("password in %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not reported unready by both: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	fast := bus.Reconnect{FailFast: true}
	if _, err := NewSource(context.Background(), g, SourceOptions{Options: o, Reconnect: fast}); !errors.Is(err, bus.ErrDisconnected) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("fail_fast source: %v", err)
	}
	if _, err := NewSink(context.Background(), SinkOptions{Options: o, Reconnect: fast}); !errors.Is(err, bus.ErrDisconnected) || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("fail_fast sink: %v", err)
	}
}

// TestBlockedBrokerMarksSinkNotReady: while the broker blocks publishing
// (connection.blocked, as RabbitMQ sends under a memory or disk alarm)
// the sink reports itself not ready with ErrBlocked and the broker's
// reason; unblocked, or its connection gone, it is ready again. The
// notifications are fed as amqp091 delivers them on a connection.
func TestBlockedBrokerMarksSinkNotReady(t *testing.T) {
	health := &component.Health{}
	sink, err := NewSink(context.Background(), SinkOptions{Options: Options{URL: closedURL(t), Queue: "q", ConnectTimeout: 200 * time.Millisecond},
		Name: "sink-node", Health: health})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close(context.Background())
	health.Set("sink-node", nil) // as once connected
	waitHealth := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := health.Err()
			if want == "" && err == nil || want != "" && err != nil && errors.Is(err, ErrBlocked) && strings.Contains(err.Error(), want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("health %v, want %q", err, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, closeBlocked := range []bool{false, true} {
		blocked := make(chan amqp091.Blocking)
		go sink.pub.watchBlocked(blocked)
		blocked <- amqp091.Blocking{Active: true, Reason: "low on memory"}
		waitHealth("low on memory")
		if sink.blocked.Load() == nil {
			t.Fatal("blocked not recorded: a publish confirmed meanwhile would mark the sink ready")
		}
		if closeBlocked {
			close(blocked) // the connection ended while blocked
		} else {
			blocked <- amqp091.Blocking{Active: false}
			close(blocked)
		}
		waitHealth("")
		if sink.blocked.Load() != nil {
			t.Fatal("still recorded as blocked")
		}
	}
}
