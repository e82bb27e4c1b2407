package bus_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// TestGochannelFlowFromYAML wires gochannel connectors from a flow file
// (the registry's specs, component.Env.Graph, a shared bus through bus.UseLocal):
// messages published on "in" come out of the kv store on "out" with their
// correlation.
func TestGochannelFlowFromYAML(t *testing.T) {
	dir := t.TempDir()
	flow := `name: local
connectors:
  input:  { type: gochannel, mode: read, topic: in, linger: 1ms }
  store:  { type: kv, dir: state }
  output: { type: gochannel, mode: write, topic: out }
links:
  - input/out -> store/in
  - store/out -> output/in
`
	path := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(path, []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	local := bus.NewLocal(nil)
	defer local.Close()
	out, err := local.Subscribe(context.Background(), "out")
	if err != nil {
		t.Fatal(err)
	}
	res := component.NewResources()
	bus.UseLocal(res, local)
	built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()

	const n = 20
	for i := range n {
		m := message.NewMessage(string(rune('a'+i)), []byte(`{}`))
		m.Metadata.Set(bus.CorrelationKey, m.UUID)
		m.Metadata.Set("kv", `{"increment":"hits"}`) // foreign producer: object decoded
		if err := local.Publish("in", m); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	var max int64
	for len(seen) < n {
		select {
		case m := <-out:
			m.Ack()
			ev, err := bus.ToEvent(m)
			if err != nil {
				t.Fatal(err)
			}
			seen[gjson.GetBytes(ev.Meta, "correlation").String()] = true
			if v := gjson.GetBytes(ev.Data, "@this").Int(); v > max {
				max = v
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d results", len(seen), n)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if max != n {
		t.Errorf("counter reached %d, want %d", max, n)
	}
}

// TestFailSinksFromYAML: a message whose command reaches the sink named in
// fail_sinks fails (is redelivered, then dead-lettered with the reason),
// although the err port is linked; the others are acked.
func TestFailSinksFromYAML(t *testing.T) {
	dir := t.TempDir()
	flow := `name: local
connectors:
  input:   { type: gochannel, mode: read, topic: in, linger: 1ms, max_deliveries: 2, fail_sinks: [rejects] }
  store:   { type: kv, dir: state }
  output:  { type: gochannel, mode: write, topic: out }
  rejects: { type: gochannel, mode: write, topic: rejected }
links:
  - input/out -> store/in
  - store/out -> output/in
  - store/err -> rejects/in
`
	path := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(path, []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	local := bus.NewLocal(nil)
	defer local.Close()
	dead, err := local.Subscribe(context.Background(), "in"+bus.DeadLetterSuffix)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"out", "rejected"} {
		ch, err := local.Subscribe(context.Background(), topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range ch {
				m.Ack()
			}
		}()
	}
	res := component.NewResources()
	bus.UseLocal(res, local)
	built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	good := message.NewMessage("good", []byte(`1`))
	good.Metadata.Set("kv", `{"put":"k"}`)
	bad := message.NewMessage("bad", []byte(`1`))
	bad.Metadata.Set("kv", `{"frobnicate":"k"}`)
	for _, m := range []*message.Message{good, bad} {
		if err := local.Publish("in", m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case m := <-dead:
		m.Ack()
		if got := m.Metadata.Get(bus.ErrorKey); got != "reached sink rejects (delivery 2 of 2)" {
			t.Errorf("dead letter error %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the failing message was not dead-lettered")
	}
	select {
	case m := <-dead:
		t.Fatalf("a second dead letter: %s", m.UUID)
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
