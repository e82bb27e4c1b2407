package bus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/pipeline"
)

// natsURL returns the broker the NATS tests use, from FLOWRUN_NATS_URL.
// Under CI (CI=true) a missing or unreachable broker fails the test: CI
// installs and starts one, so its absence is a broken setup, not a reason
// to skip.
func natsURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("FLOWRUN_NATS_URL")
	inCI := os.Getenv("CI") == "true"
	if url == "" {
		msg := "FLOWRUN_NATS_URL is not set; start a broker with `scripts/nats-server.sh start 14222` " +
			"and set FLOWRUN_NATS_URL=nats://127.0.0.1:14222 to run the NATS tests"
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	nc, err := nats.Connect(url, nats.Timeout(2*time.Second))
	if err != nil {
		msg := fmt.Sprintf("NATS broker at FLOWRUN_NATS_URL=%s is unreachable: %v", url, err)
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	nc.Close()
	return url
}

// uniqueSubject returns a subject no earlier run used: the broker's
// storage may outlive test runs.
func uniqueSubject(prefix string) string {
	return prefix + "." + natstest.Token()
}

// readSubject returns every message stored so far on subject's stream (up
// to want, waiting at most timeout for them), as events.
func readSubject(t *testing.T, url, subject string, want int, timeout time.Duration) []pipeline.Event {
	t.Helper()
	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	// The stream may not exist yet: a sink creates it on its first
	// publish, which may still be on its way.
	deadline := time.Now().Add(timeout)
	sub, err := js.SubscribeSync(subject, nats.DeliverAll(), nats.AckNone())
	for errors.Is(err, nats.ErrNoMatchingStream) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		sub, err = js.SubscribeSync(subject, nats.DeliverAll(), nats.AckNone())
	}
	must(t, err)
	defer sub.Unsubscribe()
	var out []pipeline.Event
	for len(out) < want && time.Now().Before(deadline) {
		m, err := sub.NextMsg(200 * time.Millisecond)
		if err != nil {
			continue
		}
		wm, err := natsUnmarshaler{}.Unmarshal(m)
		must(t, err)
		ev, err := ToEvent(wm)
		must(t, err)
		out = append(out, ev)
	}
	return out
}

// natsFlow builds src (NATS) -> work -> sink (NATS) and returns the graph.
func natsFlow(t *testing.T, url, in, out, durable string) *pipeline.Graph {
	t.Helper()
	g := pipeline.New(pipeline.Options{})
	src, err := NewNATSSource(context.Background(), g, NATSSourceOptions{
		NATSOptions: NATSOptions{URL: url, Subject: in, Durable: durable, AckWait: 2 * time.Second},
		Source:      SourceOptions{Name: "src", Window: 16, MaxDeliveries: 3},
	})
	must(t, err)
	sink, err := NewNATSSink(context.Background(), "sink", NATSOptions{URL: url, Subject: out})
	must(t, err)
	must(t, g.AddSource("src", src, Ports()...))
	must(t, g.AddProcessor("work", worker, pipeline.PortOut, pipeline.PortErr))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", pipeline.PortOut, "work"))
	must(t, g.Link("work", pipeline.PortOut, "sink"))
	return g
}

func publishEvents(t *testing.T, url, subject string, evs []pipeline.Event) {
	t.Helper()
	pub, err := NewNATSSink(context.Background(), "test", NATSOptions{URL: url, Subject: subject})
	must(t, err)
	must(t, pub.Process(context.Background(), evs, emitFunc(func(_ string, ev pipeline.Event) {
		t.Errorf("publish failed: %s", ev.Meta)
	})))
	must(t, pub.Close(context.Background()))
}

// TestNATSRoundTripRestartAndDeadLetter runs a flow between two JetStream
// subjects twice (a graceful restart in between), with one poison message.
func TestNATSRoundTripRestartAndDeadLetter(t *testing.T) {
	url := natsURL(t)
	in, out := uniqueSubject("test.in"), uniqueSubject("test.out")
	durable := "t_" + nuid.Next()
	batch := func(from, to int) []pipeline.Event {
		var evs []pipeline.Event
		for i := from; i < to; i++ {
			data := fmt.Sprintf(`{"i":%d}`, i)
			if i == 7 {
				data = `{"fail":true}`
			}
			evs = append(evs, pipeline.Event{Data: []byte(data), Meta: []byte(fmt.Sprintf(`{"correlation":%d,"tag":"t%d"}`, i, i))})
		}
		return evs
	}
	run := func(wantOut int) {
		g := natsFlow(t, url, in, out, durable)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- g.Run(ctx) }()
		deadline := time.Now().Add(20 * time.Second)
		for {
			n := 0
			for _, c := range g.Counts() {
				if c.Node == "sink" && c.Port == pipeline.PortIn {
					n = int(c.Events)
				}
			}
			if n >= wantOut || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		must(t, <-done)
	}

	publishEvents(t, url, in, batch(0, 50))
	run(49) // message 7 is dead-lettered
	publishEvents(t, url, in, batch(50, 100))
	run(50)

	got := readSubject(t, url, out, 200, 3*time.Second)
	seen := map[int64]int{}
	for _, ev := range got {
		c := gjson.GetBytes(ev.Meta, "correlation")
		if c.Type != gjson.Number {
			t.Fatalf("correlation not kept as a number: %s", ev.Meta)
		}
		if tag := gjson.GetBytes(ev.Meta, "tag").String(); tag != fmt.Sprintf("t%d", c.Int()) {
			t.Errorf("meta.tag = %q for correlation %d", tag, c.Int())
		}
		seen[c.Int()]++
	}
	// A graceful stop acks everything it processed: nothing is redelivered
	// to the second run, so each result is published exactly once.
	if len(got) != 99 || len(seen) != 99 || seen[7] != 0 {
		t.Errorf("published %d results for %d correlations (7 seen %d times), want 99, 99, 0", len(got), len(seen), seen[7])
	}
	dead := readSubject(t, url, in+DeadLetterSuffix, 1, 5*time.Second)
	if len(dead) != 1 || gjson.GetBytes(dead[0].Meta, "correlation").Int() != 7 ||
		!strings.Contains(gjson.GetBytes(dead[0].Meta, "error").String(), "delivery 3 of 3") {
		t.Fatalf("dead letters: %v", dead)
	}
}

func TestNATSConnectErrors(t *testing.T) {
	g := pipeline.New(pipeline.Options{})
	failFast := Reconnect{FailFast: true}
	_, err := NewNATSSource(context.Background(), g, NATSSourceOptions{
		NATSOptions: NATSOptions{URL: "nats://127.0.0.1:1", Subject: "x", Durable: "d", ConnectTimeout: 500 * time.Millisecond, Reconnect: failFast},
	})
	if !errors.Is(err, ErrConnect) || !strings.Contains(err.Error(), "nats://127.0.0.1:1") {
		t.Errorf("unreachable broker under fail_fast: %v", err)
	}
	if _, err := NewNATSSource(context.Background(), g, NATSSourceOptions{NATSOptions: NATSOptions{Subject: "x"}}); err == nil {
		t.Error("source without durable accepted")
	}
	if _, err := NewNATSSink(context.Background(), "s", NATSOptions{URL: "nats://127.0.0.1:1", Subject: "x", ConnectTimeout: 500 * time.Millisecond, Reconnect: failFast}); !errors.Is(err, ErrDisconnected) {
		t.Errorf("sink to an unreachable broker under fail_fast: %v", err)
	}
	// Without fail_fast both build, and wait for the broker.
	h := &component.Health{}
	src, err := NewNATSSource(context.Background(), g, NATSSourceOptions{
		NATSOptions: NATSOptions{URL: "nats://127.0.0.1:1", Subject: "x", Durable: "d", ConnectTimeout: 100 * time.Millisecond, Health: h},
	})
	if err != nil {
		t.Fatalf("source to an unreachable broker: %v", err)
	}
	waitFor(t, "the source to report itself not ready", func() bool { return h.Err() != nil })
	must(t, src.Close(context.Background()))
}

var _ BatchPublisher = (*natsSinkPublisher)(nil)

// streamFor connects to url and makes a stream capturing subject with the
// limits of cfg, deleted (and the connection closed) when the test ends.
func streamFor(t *testing.T, url, subject string, cfg nats.StreamConfig) (*nats.Conn, nats.JetStreamContext, string) {
	t.Helper()
	nc, err := nats.Connect(url)
	must(t, err)
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	must(t, err)
	cfg.Name, cfg.Subjects = strings.ReplaceAll(subject, ".", "_"), []string{subject}
	_, err = js.AddStream(&cfg)
	must(t, err)
	t.Cleanup(func() { _ = js.DeleteStream(cfg.Name) })
	return nc, js, cfg.Name
}

// TestNATSSinkPublishesBatches: a slice of events larger than one
// asynchronous chunk is stored whole and in order; when the stream
// refuses part of a batch, PublishBatch counts exactly the messages
// stored and the sink sends the rest to err.
func TestNATSSinkPublishesBatches(t *testing.T) {
	url := natsURL(t)
	events := func(n int) []pipeline.Event {
		evs := make([]pipeline.Event, n)
		for i := range evs {
			evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)), Meta: []byte(`{}`)}
		}
		return evs
	}
	t.Run("in order", func(t *testing.T) {
		subject := uniqueSubject("batch")
		n := 2*publishBatchChunk + 300
		publishEvents(t, url, subject, events(n))
		got := readSubject(t, url, subject, n, 20*time.Second)
		if len(got) != n {
			t.Fatalf("stored %d messages, want %d", len(got), n)
		}
		for i, ev := range got {
			if v := gjson.GetBytes(ev.Data, "i").Int(); v != int64(i) {
				t.Fatalf("message %d carries i=%d: out of order", i, v)
			}
		}
	})
	t.Run("acknowledgements lost", func(t *testing.T) {
		// A batch whose acknowledgements never come (the stream gone, a
		// subscriber swallowing the publishes without replying, as when
		// a stream's leader dies with them) times out; once the stream
		// answers again the next batch is stored: the futures the first
		// left pending do not stall it.
		subject := uniqueSubject("ackslost")
		nc, js, stream := streamFor(t, url, subject, nats.StreamConfig{})
		pub := &natsSinkPublisher{name: "lost", opts: NATSOptions{URL: url, Subject: subject}}
		pub.opts.EnsureDefaults()
		must(t, pub.connect(context.Background()))
		defer pub.close()
		must(t, js.DeleteStream(stream))
		swallow, err := nc.Subscribe(subject, func(*nats.Msg) {})
		must(t, err)
		must(t, nc.Flush())
		msgs := func(n int) []*message.Message {
			out := make([]*message.Message, n)
			for i := range out {
				out[i] = ToMessage(pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)), Meta: []byte(`{}`)})
			}
			return out
		}
		if n, err := pub.PublishBatch(subject, msgs(publishBatchChunk)); n != 0 || !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("batch without acknowledgements: %d published, %v; want 0 and a timeout", n, err)
		}
		must(t, swallow.Unsubscribe())
		_, err = js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{subject}})
		must(t, err)
		if n, err := pub.PublishBatch(subject, msgs(10)); n != 10 || err != nil {
			t.Fatalf("batch once the stream answers: %d published, %v; want 10", n, err)
		}
	})
	t.Run("refused midway", func(t *testing.T) {
		subject := uniqueSubject("batchfull")
		_, js, stream := streamFor(t, url, subject, nats.StreamConfig{MaxMsgs: 100, Discard: nats.DiscardNew})
		sink, err := NewNATSSink(context.Background(), "full", NATSOptions{URL: url, Subject: subject,
			Reconnect: Reconnect{FailFast: true}})
		must(t, err)
		defer sink.Close(context.Background())
		failed := 0
		must(t, sink.Process(context.Background(), events(300), emitFunc(func(port string, ev pipeline.Event) {
			if port != pipeline.PortErr || !strings.Contains(string(ev.Meta), "maximum messages") {
				t.Errorf("unexpected %s event %s", port, ev.Meta)
			}
			if v := gjson.GetBytes(ev.Data, "i").Int(); v != int64(100+failed) {
				t.Errorf("failed event %d carries i=%d, want %d", failed, v, 100+failed)
			}
			failed++
		})))
		if failed != 200 {
			t.Fatalf("%d events failed, want the 200 past the stream's limit", failed)
		}
		info, err := js.StreamInfo(stream)
		must(t, err)
		if info.State.Msgs != 100 {
			t.Fatalf("stream holds %d messages, want 100", info.State.Msgs)
		}
	})
}
