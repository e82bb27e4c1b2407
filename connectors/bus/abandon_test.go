package bus

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// TestSourceNacksAbandonedEvents: a bus source's events are
// Redeliverable, and one a processor abandons (pipeline.Abandon, as a
// partitioned kv connector does with events of partitions it does not
// serve) is nacked for redelivery while the others are acked.
func TestSourceNacksAbandonedEvents(t *testing.T) {
	sub := &fakeSub{ch: make(chan *message.Message, 2)}
	g := pipeline.New(pipeline.Options{})
	src, err := NewSource(context.Background(), sub, nil, g, SourceOptions{Topic: "t", MaxDeliveries: 5})
	must(t, err)
	out := &recorder{}
	giveBack := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			if !ev.Redeliverable() {
				t.Errorf("event %s of a bus source is not Redeliverable", ev.Data)
			}
			if gjson.GetBytes(ev.Data, "elsewhere").Bool() {
				pipeline.Abandon(ev)
				continue
			}
			emit.Emit(pipeline.PortOut, ev)
		}
		return nil
	})
	must(t, g.AddSource("src", src, Ports()...))
	must(t, g.AddProcessor("route", giveBack, pipeline.PortOut))
	must(t, g.AddProcessor("out", out))
	must(t, g.Link("src", pipeline.PortOut, "route"))
	must(t, g.Link("route", pipeline.PortOut, "out"))
	ms := []*message.Message{msg("a", `{}`), msg("b", `{"elsewhere":true}`)}
	for _, m := range ms {
		sub.ch <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	got := []string{settled(t, ms[0]), settled(t, ms[1])}
	cancel()
	must(t, <-done)
	if got[0] != "ack" || got[1] != "nack" {
		t.Errorf("settled %v, want [ack nack]", got)
	}
}
