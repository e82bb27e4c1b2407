package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// fakeSub hands out the messages sent on ch.
type fakeSub struct{ ch chan *message.Message }

func (f *fakeSub) Subscribe(context.Context, string) (<-chan *message.Message, error) {
	return f.ch, nil
}
func (f *fakeSub) Close() error { return nil }

// recorder is a sink remembering the events it received.
type recorder struct {
	mu     sync.Mutex
	events []pipeline.Event
}

func (r *recorder) Process(_ context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, b...)
	return nil
}

func (r *recorder) count(pred func(pipeline.Event) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.events {
		if pred(ev) {
			n++
		}
	}
	return n
}

// worker passes events on, sends those with data.fail to "err", fails the
// graph on data.boom and sleeps data.sleep milliseconds.
var worker = pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
	for _, ev := range b {
		d := gjson.ParseBytes(ev.Data)
		time.Sleep(time.Duration(d.Get("sleep").Int()) * time.Millisecond)
		switch {
		case d.Get("boom").Bool():
			return errors.New("boom")
		case d.Get("fail").Bool():
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, setString(ev.Meta, "error", "asked to fail")))
		default:
			emit.Emit(pipeline.PortOut, ev)
		}
	}
	return nil
})

// flow is src -> work -> out, with src/err linked to errs when linkErr.
type flow struct {
	g    *pipeline.Graph
	src  *Source
	out  *recorder
	errs *recorder
}

func newFlow(t *testing.T, sub message.Subscriber, dead message.Publisher, linkErr bool, opts SourceOptions) *flow {
	t.Helper()
	f := &flow{g: pipeline.New(pipeline.Options{}), out: &recorder{}, errs: &recorder{}}
	src, err := NewSource(context.Background(), sub, dead, f.g, opts)
	if err != nil {
		t.Fatal(err)
	}
	f.src = src
	must(t, f.g.AddSource("src", src, Ports()...))
	must(t, f.g.AddProcessor("work", worker, pipeline.PortOut, pipeline.PortErr))
	must(t, f.g.AddProcessor("out", f.out))
	must(t, f.g.AddProcessor("errs", f.errs))
	must(t, f.g.Link("src", pipeline.PortOut, "work"))
	must(t, f.g.Link("work", pipeline.PortOut, "out"))
	if linkErr {
		must(t, f.g.Link("src", pipeline.PortErr, "errs"))
	}
	return f
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// settled waits for a message's ack or nack.
func settled(t *testing.T, m *message.Message) string {
	t.Helper()
	select {
	case <-m.Acked():
		return "ack"
	case <-m.Nacked():
		return "nack"
	case <-time.After(10 * time.Second):
		t.Fatalf("message %s never settled", m.UUID)
		return ""
	}
}

func msg(id, payload string) *message.Message {
	m := message.NewMessage(id, []byte(payload))
	m.Metadata.Set(CorrelationKey, id)
	return m
}

func TestSourceAcksAfterTheGraphHandledTheWindow(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		linkErr bool
		want    string // how the middle message is settled
	}{
		{"ok", `{"n":1}`, false, "ack"},
		{"slow ok", `{"sleep":30}`, false, "ack"},
		{"failed on unlinked err", `{"fail":true}`, false, "nack"},
		{"not JSON, err linked", `not json`, true, "ack"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := &fakeSub{ch: make(chan *message.Message, 3)}
			f := newFlow(t, sub, nil, tt.linkErr, SourceOptions{Topic: "t", MaxDeliveries: 5})
			ms := []*message.Message{msg("a", `{}`), msg("b", tt.payload), msg("c", `{}`)}
			for _, m := range ms {
				sub.ch <- m
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.g.Run(ctx) }()
			got := []string{settled(t, ms[0]), settled(t, ms[1]), settled(t, ms[2])}
			// An ack is given only once the derived event reached the sink.
			if n := f.out.count(func(ev pipeline.Event) bool { return true }); got[0] == "ack" && n < 2 {
				t.Errorf("acked before the sink saw the events (%d)", n)
			}
			cancel()
			must(t, <-done)
			if want := []string{"ack", tt.want, "ack"}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("settled %v, want %v", got, want)
			}
			if n := f.out.count(func(ev pipeline.Event) bool { return gjson.GetBytes(ev.Meta, "correlation").String() == "a" }); n != 1 {
				t.Errorf("correlation a reached the sink %d times", n)
			}
		})
	}
}

func TestSourceDeadLettersAfterMaxDeliveries(t *testing.T) {
	local := NewLocal(nil)
	defer local.Close()
	dead, err := local.Subscribe(context.Background(), "in"+DeadLetterSuffix)
	must(t, err)
	f := newFlow(t, local, local, false, SourceOptions{Topic: "in", MaxDeliveries: 3, Linger: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()

	sink, err := NewSink(local, SinkOptions{Topic: "in"})
	must(t, err)
	events := []pipeline.Event{
		{Data: []byte(`{"n":1}`), Meta: []byte(`{"correlation":1}`)},
		{Data: []byte(`{"fail":true}`), Meta: []byte(`{"correlation":2,"kv":{"get":"x"}}`)},
		{Data: []byte(`{"n":3}`), Meta: []byte(`{"correlation":3}`)},
	}
	must(t, sink.Process(context.Background(), events, nil))

	var dl *message.Message
	select {
	case dl = <-dead:
		dl.Ack()
	case <-time.After(10 * time.Second):
		t.Fatal("no dead letter")
	}
	cancel()
	must(t, <-done)
	ev, err := ToEvent(dl)
	must(t, err)
	if c := gjson.GetBytes(ev.Meta, "correlation").Raw; c != "2" {
		t.Errorf("dead letter correlation = %s, want 2 (meta %s)", c, ev.Meta)
	}
	if e := gjson.GetBytes(ev.Meta, "error").String(); !strings.Contains(e, "asked to fail") || !strings.Contains(e, "delivery 3 of 3") {
		t.Errorf("dead letter error = %q", e)
	}
	if kv := gjson.GetBytes(ev.Meta, "kv.get").String(); kv != "x" {
		t.Errorf("dead letter lost meta.kv: %s", ev.Meta)
	}
	if n := f.out.count(func(pipeline.Event) bool { return true }); n != 2 {
		t.Errorf("sink saw %d events, want 2", n)
	}
}

func TestSourceNotJSONGoesStraightToDeadLetter(t *testing.T) {
	local := NewLocal(nil)
	defer local.Close()
	dead, err := local.Subscribe(context.Background(), "raw.dead")
	must(t, err)
	f := newFlow(t, local, local, false, SourceOptions{Topic: "raw", DeadLetter: "raw.dead"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	must(t, local.Publish("raw", message.NewMessage("m1", []byte("<xml/>"))))
	select {
	case dl := <-dead:
		dl.Ack()
		if string(dl.Payload) != "<xml/>" || !strings.Contains(dl.Metadata.Get(ErrorKey), "not JSON") ||
			!strings.Contains(dl.Metadata.Get(ErrorKey), "delivery 1 of") {
			t.Errorf("dead letter %q %v", dl.Payload, dl.Metadata)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no dead letter")
	}
	cancel()
	must(t, <-done)
}

func TestSourceNacksWindowWhenTheGraphFails(t *testing.T) {
	sub := &fakeSub{ch: make(chan *message.Message, 2)}
	f := newFlow(t, sub, nil, false, SourceOptions{Topic: "t", Linger: 50 * time.Millisecond})
	ms := []*message.Message{msg("a", `{}`), msg("b", `{"boom":true}`)}
	for _, m := range ms {
		sub.ch <- m
	}
	err := f.g.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("Run = %v, want the node's failure", err)
	}
	for _, m := range ms {
		if s := settled(t, m); s != "nack" {
			t.Errorf("message %s: %s, want nack", m.UUID, s)
		}
	}
}

func TestSourceShutdownFinishesTheWindow(t *testing.T) {
	sub := &fakeSub{ch: make(chan *message.Message, 4)}
	f := newFlow(t, sub, nil, false, SourceOptions{Topic: "t", Linger: 20 * time.Millisecond})
	inflight := []*message.Message{msg("a", `{"sleep":150}`), msg("b", `{}`)}
	for _, m := range inflight {
		sub.ch <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	time.Sleep(60 * time.Millisecond) // the window is being processed
	cancel()
	late := msg("late", `{}`)
	sub.ch <- late // arrives after the signal: not taken, nacked by Close
	must(t, <-done)
	for _, m := range inflight {
		if s := settled(t, m); s != "ack" {
			t.Errorf("in-flight message %s: %s, want ack", m.UUID, s)
		}
	}
	if n := f.out.count(func(pipeline.Event) bool { return true }); n != 2 {
		t.Errorf("sink saw %d events, want the 2 in flight", n)
	}
	if s := settled(t, late); s != "nack" {
		t.Errorf("late message: %s, want nack", s)
	}
}

func TestNewSourceErrors(t *testing.T) {
	g := pipeline.New(pipeline.Options{})
	sub := &fakeSub{ch: make(chan *message.Message)}
	if _, err := NewSource(context.Background(), sub, nil, g, SourceOptions{}); !errors.Is(err, ErrSubscribe) {
		t.Errorf("no topic: %v", err)
	}
	if _, err := NewSource(context.Background(), sub, nil, nil, SourceOptions{Topic: "t", FailSinks: []string{"dead"}}); !errors.Is(err, ErrSubscribe) {
		t.Errorf("fail sinks without a graph: %v", err)
	}
	if _, err := NewSource(context.Background(), sub, nil, g, SourceOptions{Topic: "t", FailOn: "sometimes"}); !errors.Is(err, ErrSubscribe) {
		t.Errorf("fail_on sometimes: %v", err)
	}
	if _, err := NewSink(nil, SinkOptions{}); !errors.Is(err, ErrPublish) {
		t.Errorf("sink without topic: %v", err)
	}
}

// failingPub fails every publish.
type failingPub struct{ n int }

func (p *failingPub) Publish(string, ...*message.Message) error {
	p.n++
	return errors.New("broker down")
}
func (p *failingPub) Close() error { return nil }

func TestSinkReportsFailedPublishesOnErr(t *testing.T) {
	pub := &failingPub{}
	s, err := NewSink(pub, SinkOptions{Name: "results", Topic: "out"})
	must(t, err)
	var got []pipeline.Event
	emit := emitFunc(func(port string, ev pipeline.Event) {
		if port == pipeline.PortErr {
			got = append(got, ev)
		}
	})
	tr := pipeline.NewTracker(2, nil, nil)
	events := []pipeline.Event{tr.Track(0, pipeline.Event{Data: []byte(`1`)}), tr.Track(1, pipeline.Event{Data: []byte(`2`)})}
	must(t, s.Process(context.Background(), events, emit))
	if len(got) != 2 || pub.n != 1 {
		t.Fatalf("err events %d after %d publishes, want 2 after 1", len(got), pub.n)
	}
	for i, ev := range got {
		if ev.Origin() != events[i].Origin() || !strings.Contains(gjson.GetBytes(ev.Meta, "error").String(), "broker down") {
			t.Errorf("err event %d: derived from %d, meta %s", i, ev.Origin().Index(), ev.Meta)
		}
	}
}

type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }

// recordingPub remembers what is published.
type recordingPub struct {
	mu   sync.Mutex
	msgs map[string][]*message.Message
}

func (p *recordingPub) Publish(topic string, ms ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.msgs == nil {
		p.msgs = map[string][]*message.Message{}
	}
	p.msgs[topic] = append(p.msgs[topic], ms...)
	return nil
}
func (p *recordingPub) Close() error { return nil }

// TestSourceSetsAsideOverdeliveredMessages: a message the broker has
// delivered more than MaxDeliveries times (its earlier deliveries never
// settled: the process died handling them) is dead-lettered and acked
// without reaching the graph; one at MaxDeliveries is still processed.
func TestSourceSetsAsideOverdeliveredMessages(t *testing.T) {
	sub := &fakeSub{ch: make(chan *message.Message, 3)}
	dead := &recordingPub{}
	f := newFlow(t, sub, dead, false, SourceOptions{Topic: "t", MaxDeliveries: 3})
	ms := []*message.Message{msg("a", `{}`), msg("b", `{"n":2}`), msg("c", `{}`)}
	ms[0].Metadata.Set(DeliveredKey, "3")
	ms[1].Metadata.Set(DeliveredKey, "4")
	for _, m := range ms {
		sub.ch <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	got := []string{settled(t, ms[0]), settled(t, ms[1]), settled(t, ms[2])}
	cancel()
	must(t, <-done)
	if fmt.Sprint(got) != "[ack ack ack]" {
		t.Errorf("settled %v, want all acked", got)
	}
	for id, want := range map[string]int{"a": 1, "b": 0, "c": 1} {
		if n := f.out.count(func(ev pipeline.Event) bool { return gjson.GetBytes(ev.Meta, "correlation").String() == id }); n != want {
			t.Errorf("message %s reached the graph %d times, want %d", id, n, want)
		}
	}
	dl := dead.msgs["t"+DeadLetterSuffix]
	if len(dl) != 1 || string(dl[0].Payload) != `{"n":2}` {
		t.Fatalf("dead letters %v, want message b", dl)
	}
	if e := dl[0].Metadata.Get(ErrorKey); !strings.Contains(e, "delivered 4 times, more than max_deliveries 3") {
		t.Errorf("dead letter error %q", e)
	}
	if dl[0].Metadata.Get(CorrelationKey) != "b" || dl[0].Metadata.Get(DeliveredKey) != "" {
		t.Errorf("dead letter metadata %v", dl[0].Metadata)
	}
}

// TestSourceAcksEachMessageWhenItIsDone: a message stuck in a slow branch
// of the graph holds back neither the acks of the messages emitted with it
// nor those of another source.
func TestSourceAcksEachMessageWhenItIsDone(t *testing.T) {
	g := pipeline.New(pipeline.Options{})
	subA := &fakeSub{ch: make(chan *message.Message, 4)}
	subB := &fakeSub{ch: make(chan *message.Message, 4)}
	srcA, err := NewSource(context.Background(), subA, nil, g, SourceOptions{Name: "a", Topic: "a"})
	must(t, err)
	srcB, err := NewSource(context.Background(), subB, nil, g, SourceOptions{Name: "b", Topic: "b"})
	must(t, err)
	release := make(chan struct{})
	// gate holds events with data.hold until release is closed; the
	// others pass through a separate node.
	gate := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			if gjson.GetBytes(ev.Data, "hold").Bool() {
				<-release
			}
			emit.Emit(pipeline.PortOut, ev)
		}
		return nil
	})
	route := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			port := "fast"
			if gjson.GetBytes(ev.Data, "hold").Bool() {
				port = "slow"
			}
			emit.Emit(port, ev)
		}
		return nil
	})
	out := &recorder{}
	must(t, g.AddSource("a", srcA, Ports()...))
	must(t, g.AddSource("b", srcB, Ports()...))
	must(t, g.AddProcessor("route", route, "fast", "slow"))
	must(t, g.AddProcessor("gate", gate, pipeline.PortOut))
	must(t, g.AddProcessor("out", out))
	must(t, g.Link("a", pipeline.PortOut, "route"))
	must(t, g.Link("b", pipeline.PortOut, "route"))
	must(t, g.Link("route", "fast", "out"))
	must(t, g.Link("route", "slow", "gate"))
	must(t, g.Link("gate", pipeline.PortOut, "out"))
	held := msg("held", `{"hold":true}`)
	withIt := msg("with-it", `{}`)
	other := msg("other", `{}`)
	subA.ch <- held
	subA.ch <- withIt
	subB.ch <- other
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	if s := settled(t, withIt); s != "ack" {
		t.Errorf("message emitted with the held one: %s, want ack", s)
	}
	if s := settled(t, other); s != "ack" {
		t.Errorf("message of another source: %s, want ack", s)
	}
	select {
	case <-held.Acked():
		t.Fatal("held message acked before it was done")
	default:
	}
	close(release)
	if s := settled(t, held); s != "ack" {
		t.Errorf("held message: %s, want ack", s)
	}
	cancel()
	close(subA.ch)
	close(subB.ch)
	must(t, <-done)
}

// TestSourceFailRules: what fails a message is the source's choice.
func TestSourceFailRules(t *testing.T) {
	tests := []struct {
		name      string
		failOn    string
		failSinks []string
		payload   string
		want      string
	}{
		{"linked err handles the failure", FailOnUnlinkedErr, nil, `{"fail":true}`, "ack"},
		{"fail on any err", FailOnErr, nil, `{"fail":true}`, "nack"},
		{"reaching a fail sink", FailOnUnlinkedErr, []string{"errs"}, `{"fail":true}`, "nack"},
		{"ok message with fail sink", FailOnUnlinkedErr, []string{"errs"}, `{}`, "ack"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := pipeline.New(pipeline.Options{})
			sub := &fakeSub{ch: make(chan *message.Message, 1)}
			src, err := NewSource(context.Background(), sub, nil, g, SourceOptions{Topic: "t", FailOn: tt.failOn, FailSinks: tt.failSinks})
			must(t, err)
			must(t, g.AddSource("src", src, Ports()...))
			must(t, g.AddProcessor("work", worker, pipeline.PortOut, pipeline.PortErr))
			must(t, g.AddProcessor("out", &recorder{}))
			must(t, g.AddProcessor("errs", &recorder{}))
			must(t, g.Link("src", pipeline.PortOut, "work"))
			must(t, g.Link("work", pipeline.PortOut, "out"))
			must(t, g.Link("work", pipeline.PortErr, "errs"))
			m := msg("m", tt.payload)
			sub.ch <- m
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- g.Run(ctx) }()
			if s := settled(t, m); s != tt.want {
				t.Errorf("settled %s, want %s", s, tt.want)
			}
			cancel()
			close(sub.ch)
			must(t, <-done)
		})
	}
}

func TestSourceRefusesAnUnknownFailSink(t *testing.T) {
	g := pipeline.New(pipeline.Options{})
	sub := &fakeSub{ch: make(chan *message.Message)}
	src, err := NewSource(context.Background(), sub, nil, g, SourceOptions{Topic: "t", FailSinks: []string{"nope"}})
	must(t, err)
	must(t, g.AddSource("src", src, Ports()...))
	if err := g.Run(context.Background()); !errors.Is(err, ErrUnknownSink) {
		t.Fatalf("Run = %v, want ErrUnknownSink", err)
	}
}

// TestSourceRejectDeadLettersThroughTheBroker: with SourceOptions.Reject a
// message to dead-letter (one failing at its last delivery, one delivered
// too often) goes to Reject instead of the dead-letter topic, and Reject
// alone settles it; a failed Reject nacks it for redelivery.
func TestSourceRejectDeadLettersThroughTheBroker(t *testing.T) {
	sub := &fakeSub{ch: make(chan *message.Message, 4)}
	dead := &recordingPub{}
	var mu sync.Mutex
	rejected := map[string]string{}
	reject := func(m *message.Message, reason string) error {
		if m.UUID == "broken" {
			return errors.New("connection lost")
		}
		mu.Lock()
		rejected[m.UUID] = reason
		mu.Unlock()
		m.Nack() // what the amqp connector does: nack without requeue
		return nil
	}
	f := newFlow(t, sub, dead, false, SourceOptions{Topic: "t", MaxDeliveries: 2, Reject: reject})
	ms := []*message.Message{msg("fails", `{"fail":true}`), msg("over", `{}`), msg("ok", `{}`), msg("broken", `{"fail":true}`)}
	ms[0].Metadata.Set(DeliveredKey, "2")
	ms[1].Metadata.Set(DeliveredKey, "3")
	ms[3].Metadata.Set(DeliveredKey, "2")
	for _, m := range ms {
		sub.ch <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	got := []string{settled(t, ms[0]), settled(t, ms[1]), settled(t, ms[2]), settled(t, ms[3])}
	cancel()
	must(t, <-done)
	if fmt.Sprint(got) != "[nack nack ack nack]" {
		t.Errorf("settled %v, want [nack nack ack nack]", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rejected) != 2 || !strings.Contains(rejected["fails"], "delivery 2 of 2") ||
		!strings.Contains(rejected["over"], "delivered 3 times") {
		t.Errorf("rejected %v, want fails and over with their reasons", rejected)
	}
	if len(dead.msgs) != 0 {
		t.Errorf("dead letters published although Reject is set: %v", dead.msgs)
	}
}

// TestSourceDeliveryCountsAreBounded checks that the delivery counts kept
// for a bus without its own stay bounded when every delivery has a new id,
// and still count the deliveries of one id.
func TestSourceDeliveryCountsAreBounded(t *testing.T) {
	src, err := NewSource(context.Background(), &fakeSub{ch: make(chan *message.Message)}, &recordingPub{}, nil, SourceOptions{Topic: "in"})
	must(t, err)
	defer src.Close(context.Background())
	src.maxTries = 100
	for i := range 1000 {
		src.deliveries(msg(fmt.Sprintf("fresh-%d", i), `{}`))
	}
	if n := len(src.tries); n > 100 {
		t.Errorf("%d delivery counts kept, want at most 100", n)
	}
	for want := 1; want <= 3; want++ {
		if got := src.deliveries(msg("same", `{}`)); got != want {
			t.Errorf("delivery %d of one id counted as %d", want, got)
		}
	}
}

// TestSourceWindowsInFlightSettleOnTheirOwn: with several windows in
// flight, a later window that completes first is acked at once, while a
// message of an earlier window still being handled stays unsettled, and
// that message, failing in the end, is nacked, not acked with the window
// that overtook it.
func TestSourceWindowsInFlightSettleOnTheirOwn(t *testing.T) {
	g := pipeline.New(pipeline.Options{})
	sub := &fakeSub{ch: make(chan *message.Message, 8)}
	src, err := NewSource(context.Background(), sub, nil, g, SourceOptions{Name: "src", Topic: "t", Window: 2, WindowsInFlight: 2,
		Linger: time.Hour})
	must(t, err)
	release := make(chan struct{})
	// slow holds events with data.hold until release, then fails them on
	// its unlinked err port; it runs apart from fast, so a later window
	// can overtake the held one.
	slow := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			<-release
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, setString(ev.Meta, "error", "failed late")))
		}
		return nil
	})
	route := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			port := "fast"
			if gjson.GetBytes(ev.Data, "hold").Bool() {
				port = "slow"
			}
			emit.Emit(port, ev)
		}
		return nil
	})
	out := &recorder{}
	must(t, g.AddSource("src", src, Ports()...))
	must(t, g.AddProcessor("route", route, "fast", "slow"))
	must(t, g.AddProcessor("slow", slow, pipeline.PortOut, pipeline.PortErr))
	must(t, g.AddProcessor("out", out))
	must(t, g.Link("src", pipeline.PortOut, "route"))
	must(t, g.Link("route", "fast", "out"))
	must(t, g.Link("route", "slow", "slow"))
	// Window 1: held, a. Window 2: b, c (a window is full at 2).
	held, a, b, c := msg("held", `{"hold":true}`), msg("a", `{}`), msg("b", `{}`), msg("c", `{}`)
	for _, m := range []*message.Message{held, a, b, c} {
		sub.ch <- m
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	for _, m := range []*message.Message{a, b, c} {
		if s := settled(t, m); s != "ack" {
			t.Errorf("message %s: %s, want ack", m.UUID, s)
		}
	}
	select {
	case <-held.Acked():
		t.Fatal("held message acked before it was done, with a window that completed after it")
	case <-held.Nacked():
		t.Fatal("held message nacked before it was done")
	default:
	}
	close(release)
	if s := settled(t, held); s != "nack" {
		t.Errorf("held message that failed: %s, want nack", s)
	}
	cancel()
	close(sub.ch)
	must(t, <-done)
}
