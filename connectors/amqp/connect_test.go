package amqp

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

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
