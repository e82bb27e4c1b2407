// Package repartition_test runs the repartition example's flow against the
// NATS JetStream broker named by FLOWRUN_NATS_URL: orders published on the
// input subject by a plain producer come out on the subject of their
// customer's partition, each once, and running the stage again over every
// input message (its consumer deleted, as if no ack had reached the
// broker) stores no second copy.
package repartition_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// natsURL returns FLOWRUN_NATS_URL; without it the test is skipped, but
// under CI (CI=true), which starts a broker.
func natsURL(t *testing.T) string {
	url := os.Getenv("FLOWRUN_NATS_URL")
	if url == "" {
		msg := "FLOWRUN_NATS_URL is not set; start a broker with `scripts/nats-server.sh start 14222` and set FLOWRUN_NATS_URL=nats://127.0.0.1:14222"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return url
}

func TestRepartitionExample(t *testing.T) {
	url := natsURL(t)
	t.Setenv("NATS_URL", url)
	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)

	// The example's subject, made unique: the broker's storage outlives
	// test runs.
	base := "orders.in." + natstest.Token()
	src, err := os.ReadFile("flow.yaml")
	must(t, err)
	flow := strings.ReplaceAll(string(src), "subject: orders.in", "subject: "+base)
	flow = strings.ReplaceAll(flow, "durable: orders_route", "durable: route_"+nuid.Next())
	path := filepath.Join(t.TempDir(), "flow.yaml")
	must(t, os.WriteFile(path, []byte(flow), 0o644))

	const n, count, customers = 200, 8, 12
	_, err = js.AddStream(&nats.StreamConfig{Name: bus.StreamName(base), Subjects: []string{base}})
	must(t, err)
	for i := range n {
		_, err := js.Publish(base, fmt.Appendf(nil, `{"customer":"c%d","amount":%d}`, i%customers, i))
		must(t, err)
	}

	stored := func() uint64 {
		name, err := js.StreamNameBySubject(bus.PartitionFilter(base))
		if err != nil {
			return 0
		}
		info, err := js.StreamInfo(name)
		must(t, err)
		return info.State.Msgs
	}
	for run := 1; run <= 2; run++ {
		stop := runFlow(t, path)
		// Done when every input message is acked: each one's republish
		// was stored (or dropped as a duplicate) before its ack.
		acked := func() uint64 {
			info, err := js.ConsumerInfo(bus.StreamName(base), flowDurable(flow))
			if err != nil {
				return 0 // not made yet
			}
			return info.AckFloor.Stream
		}
		deadline := time.Now().Add(30 * time.Second)
		for acked() < n && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		got := acked()
		stop()
		if got := stored(); got != n {
			t.Fatalf("run %d: %d messages on the partition subjects, want %d", run, got, n)
		}
		if got != n {
			t.Fatalf("run %d: %d input messages acked, want %d", run, got, n)
		}
		if run == 1 {
			// As if no ack had reached the broker: the stage reads and
			// republishes every message again.
			must(t, js.DeleteConsumer(bus.StreamName(base), flowDurable(flow)))
		}
	}

	// Each order is on its customer's partition, once, with an id made
	// from its input message's.
	sub, err := js.SubscribeSync(bus.PartitionFilter(base), nats.DeliverAll(), nats.AckNone())
	must(t, err)
	defer sub.Unsubscribe()
	seen := map[int64]bool{}
	for range n {
		m, err := sub.NextMsg(5 * time.Second)
		must(t, err)
		customer := gjson.GetBytes(m.Data, "customer").String()
		if want := partition.Subject(base, partition.OfString(customer, count)); m.Subject != want {
			t.Errorf("order of %s on %s, want %s", customer, m.Subject, want)
		}
		amount := gjson.GetBytes(m.Data, "amount").Int()
		if seen[amount] {
			t.Errorf("order %d stored twice", amount)
		}
		seen[amount] = true
		id := m.Header.Get(nats.MsgIdHdr)
		if want := fmt.Sprintf("%s:%d/", bus.StreamName(base), amount+1); !strings.HasPrefix(id, want) {
			t.Errorf("order %d has Nats-Msg-Id %q, want %s...", amount, id, want)
		}
	}
}

// flowDurable returns the durable of the flow's input.
func flowDurable(flow string) string {
	_, rest, _ := strings.Cut(flow, "durable: ")
	name, _, _ := strings.Cut(rest, " ")
	return name
}

func runFlow(t *testing.T, path string) (stop func()) {
	t.Helper()
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	built, err := f.Build(context.Background(), flows.BuildOptions{})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	return func() {
		cancel()
		must(t, <-done)
	}
}
