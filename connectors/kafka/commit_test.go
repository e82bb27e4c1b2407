package kafka_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

// gate is a sink that holds the events with data.hold until released;
// seen, when set, is closed at the first such event.
type gate struct {
	release  chan struct{}
	seen     chan struct{}
	seenOnce sync.Once
}

func (g *gate) Process(ctx context.Context, evs []pipeline.Event, _ pipeline.Emitter) error {
	for _, ev := range evs {
		if gjson.GetBytes(ev.Data, "hold").Bool() {
			if g.seen != nil {
				g.seenOnce.Do(func() { close(g.seen) })
			}
			select {
			case <-g.release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

// TestCommitWaitsForUnfinishedRecord: in one partition, record 3 is held
// in the flow while the records after it finish; the committed offset
// stays at 3 (the held record is read again if the process dies now) over
// many commit intervals, and passes the end once the record is released.
func TestCommitWaitsForUnfinishedRecord(t *testing.T) {
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out")
	var evs []pipeline.Event
	for i := range 10 {
		data := fmt.Sprintf(`{"i":%d}`, i)
		if i == 3 {
			data = `{"i":3,"hold":true}`
		}
		evs = append(evs, pipeline.Event{Data: []byte(data), Meta: []byte(fmt.Sprintf(`{"correlation":"m-%d"}`, i))})
	}
	produceKeyed(t, brokers, "in", evs, func(int) string { return "one" })
	g := &gate{release: make(chan struct{})}
	r := builtin.NewRegistry()
	must(t, r.Register(component.Spec{Type: "gate", Kind: component.KindSink, Summary: "Holds events with data.hold.",
		Build: func(context.Context, *component.Env, *component.Config) (component.Component, error) {
			return component.Component{Processor: g}, nil
		}}))
	dir := t.TempDir()
	path := filepath.Join(dir, "flow.yaml")
	must(t, os.WriteFile(path, []byte(fmt.Sprintf(`name: hold
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: hold, commit_interval: 10ms }
  held:   { type: gate }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
pipelines:
  split:
    - route:
        hold: 'exists(data.hold)'
links:
  - input/out -> split/in
  - split/hold -> held/in
  - split/out -> output/in
`, strings.Join(brokers, ","), strings.Join(brokers, ","))), 0o644))
	f, diags, err := flows.Load(path, r)
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	built, err := f.Build(context.Background(), flows.BuildOptions{})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	released := false
	defer func() {
		if !released {
			close(g.release)
		}
		cancel()
		<-done
	}()

	out := readTopic(t, brokers, "out")
	out.until(t, 20*time.Second, atLeast(9)) // all but the held one
	var p int32 = -1
	for id, end := range endOffsets(t, brokers, "in") {
		if end == 10 {
			p = id
		}
	}
	time.Sleep(300 * time.Millisecond) // thirty commit intervals
	if got := committed(t, brokers, "hold", "in")[p]; got != 3 {
		t.Fatalf("committed %d on partition %d while record 3 is in the flow, want 3", got, p)
	}
	close(g.release)
	released = true
	deadline := time.Now().Add(10 * time.Second)
	for committed(t, brokers, "hold", "in")[p] != 10 {
		if time.Now().After(deadline) {
			t.Fatalf("committed %d after the release, want 10", committed(t, brokers, "hold", "in")[p])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNoGoroutinePerRecordInFlight: records handed over and not settled
// cost no goroutine each. A flow holds 1,000 records in a gate sink; once
// the first has reached it (a whole batch has been handed over by then),
// the process has not gained a goroutine per record in flight. (The
// source used to start a watcher per record: 256 or more here.)
func TestNoGoroutinePerRecordInFlight(t *testing.T) {
	c := startCluster(t)
	brokers := c.ListenAddrs()
	createTopics(t, brokers, "in", "out")
	g := &gate{release: make(chan struct{}), seen: make(chan struct{})}
	r := builtin.NewRegistry()
	must(t, r.Register(component.Spec{Type: "gate", Kind: component.KindSink, Summary: "Holds events with data.hold.",
		Build: func(context.Context, *component.Env, *component.Config) (component.Component, error) {
			return component.Component{Processor: g}, nil
		}}))
	path := filepath.Join(t.TempDir(), "flow.yaml")
	must(t, os.WriteFile(path, []byte(fmt.Sprintf(`name: many
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, group: many, commit_interval: 10ms }
  held:   { type: gate }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
pipelines:
  split:
    - route:
        hold: 'exists(data.hold)'
links:
  - input/out -> split/in
  - split/hold -> held/in
  - split/out -> output/in
`, strings.Join(brokers, ","), strings.Join(brokers, ","))), 0o644))
	f, diags, err := flows.Load(path, r)
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	built, err := f.Build(context.Background(), flows.BuildOptions{})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	defer func() {
		close(g.release)
		cancel()
		<-done
	}()
	// One record through first: the flow is running and consuming.
	produceEvents(t, brokers, "in", []pipeline.Event{{Data: []byte(`{"first":true}`)}})
	readTopic(t, brokers, "out").until(t, 20*time.Second, atLeast(1))
	time.Sleep(100 * time.Millisecond) // let the producer's goroutines end
	before := runtime.NumGoroutine()
	evs := make([]pipeline.Event, 1000)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d,"hold":true}`, i))}
	}
	produceEvents(t, brokers, "in", evs)
	select {
	case <-g.seen:
	case <-time.After(20 * time.Second):
		t.Fatal("no held record reached the gate")
	}
	time.Sleep(300 * time.Millisecond) // let more be handed over
	grown := runtime.NumGoroutine() - before
	t.Logf("%d goroutines before the held records, %d more with them in flight", before, grown)
	if grown > 100 {
		t.Fatalf("%d more goroutines with records held in flight, want a fixed number (under 100)", grown)
	}
}
