package mqtt_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/bus"
	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

// TestSpecRefusals: options the broker would refuse, or that would loop
// dead letters back into the source, are refused when the flow is loaded,
// at the option.
func TestSpecRefusals(t *testing.T) {
	for _, tc := range []struct{ opts, want string }{
		{`mode: read, topic: "a/#"`, `dead_letter: topic "a/#" has wildcards`},
		{`mode: read, topic: "a/#", dead_letter: a/dead`, `dead_letter: dead_letter "a/dead" matches the topic`},
		{`mode: read, topic: "a/+", dead_letter: "dead/+"`, `dead_letter: dead_letter: topic "dead/+": wildcards`},
		{`mode: read, topic: "a/#/b"`, `topic: topic "a/#/b": '#' must be the last level`},
		{`mode: write, topic: "a/+"`, `topic: topic "a/+": wildcards`},
		{`mode: read, topic: a, window: 1100`, `window: 1100 is more than max_inflight 1024`},
		{`mode: read, topic: a, qos: 3`, `qos`},
		{`mode: read, topic: a, codec: xml`, `codec`},
		{`mode: read, topic: a, tls_cert: c.pem`, `tls_key: tls_cert and tls_key go together`},
		{`mode: read, topic: a, protocol: "4"`, `protocol`},
		{`mode: read, topic: a, protocol: "5", url: "ws://127.0.0.1:9001"`, `url: url "ws://127.0.0.1:9001": protocol 5 wants tcp://`},
		{`mode: write, topic: a, protocol: "5", url: "wss://h:9001"`, `WebSockets only with protocol 3.1.1`},
		{`mode: read, topic: a, protocol: "5", max_inflight: 70000, window: 10`, `max_inflight: 70000 is more than 65535`},
		{`mode: read, topic: a, protocol: "5", session_expiry: 0s`, `session_expiry`},
	} {
		t.Run(tc.opts, func(t *testing.T) {
			dir := t.TempDir()
			flow := fmt.Sprintf("name: s\nconnectors:\n  m: { type: mqtt, %s }\n  o: { type: stdout }\nlinks:\n  - m/out -> o/in\n", tc.opts)
			if strings.Contains(tc.opts, "write") {
				flow = fmt.Sprintf("name: s\nconnectors:\n  i: { type: stdin }\n  m: { type: mqtt, %s }\nlinks:\n  - i/out -> m/in\n", tc.opts)
			}
			path := filepath.Join(dir, "flow.yaml")
			must(t, os.WriteFile(path, []byte(flow), 0o644))
			_, diags, err := flows.Load(path, builtin.NewRegistry())
			if err == nil {
				t.Fatalf("loaded; diagnostics %v", diags)
			}
			if msg := fmt.Sprint(err, diags); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %s, want %q", msg, tc.want)
			}
		})
	}
}

// TestFailFastConnectErrors: with fail_fast, an unreachable broker fails
// the source and the sink when they are built, naming the address; without
// it, they are built and wait for the broker.
func TestFailFastConnectErrors(t *testing.T) {
	const url = "tcp://127.0.0.1:1"
	o := Options{URL: url, ClientID: "ff-" + randomID(), ConnectTimeout: 500 * time.Millisecond}
	g := pipeline.New(pipeline.Options{})
	_, err := NewSource(context.Background(), g, SourceOptions{Options: o, Topic: "t", QoS: 1,
		Reconnect: bus.Reconnect{FailFast: true}})
	if !errors.Is(err, bus.ErrDisconnected) || !strings.Contains(err.Error(), url) {
		t.Errorf("source: %v", err)
	}
	_, err = NewSink(context.Background(), SinkOptions{Options: o, Topic: "t", QoS: 1, Reconnect: &bus.Reconnect{FailFast: true}})
	if !errors.Is(err, bus.ErrDisconnected) || !strings.Contains(err.Error(), url) {
		t.Errorf("sink: %v", err)
	}
	src, err := NewSource(context.Background(), g, SourceOptions{Options: o, Topic: "t", QoS: 1})
	if err != nil {
		t.Fatalf("source without fail_fast: %v", err)
	}
	must(t, src.Close(context.Background()))
	snk, err := NewSink(context.Background(), SinkOptions{Options: o, Topic: "t", QoS: 1, Reconnect: &bus.Reconnect{}})
	if err != nil {
		t.Fatalf("sink without fail_fast: %v", err)
	}
	must(t, snk.Close(context.Background()))
}
