package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/pipeline"
)

// partRecorder is a sink remembering, per partition, the data.i of every
// event it receives, and holding the graph while hold is set and an event
// of partition 0 with data.i >= holdFrom arrives.
type partRecorder struct {
	mu       sync.Mutex
	seen     map[int][]int
	ids      map[string]int    // message_id -> deliveries
	nats     map[[2]int]string // {p, i} -> meta.nats
	holdFrom int
	hold     chan struct{} // closed to let the held slice go
	held     chan struct{} // closed once a slice is held
}

func newPartRecorder() *partRecorder {
	return &partRecorder{seen: map[int][]int{}, ids: map[string]int{}, nats: map[[2]int]string{}, holdFrom: -1}
}

func (r *partRecorder) Process(_ context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
	for _, ev := range b {
		p, i := int(gjson.GetBytes(ev.Data, "p").Int()), int(gjson.GetBytes(ev.Data, "i").Int())
		r.mu.Lock()
		hold := r.hold
		if p == 0 && r.holdFrom >= 0 && i >= r.holdFrom && hold != nil {
			r.holdFrom = -1
			close(r.held)
			r.mu.Unlock()
			<-hold
			r.mu.Lock()
		}
		r.seen[p] = append(r.seen[p], i)
		r.ids[gjson.GetBytes(ev.Meta, MessageIDMeta).String()]++
		r.nats[[2]int{p, i}] = gjson.GetBytes(ev.Meta, NATSMeta).Raw
		r.mu.Unlock()
	}
	return nil
}

// got returns a copy of what partition p received.
func (r *partRecorder) got(p int) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen[p])
}

// firstSeen returns the distinct values of seq in the order of their
// first occurrence.
func firstSeen(seq []int) []int {
	var out []int
	seen := map[int]bool{}
	for _, v := range seq {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func upTo(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// partitionTest is a broker, a base subject whose partition stream
// exists, and a raw JetStream connection to publish and inspect it.
type partitionTest struct {
	url, base, durable, stream string
	js                         nats.JetStreamContext
	seqs                       map[[2]int]uint64 // {p, i} -> stream sequence
}

func newPartitionTest(t *testing.T) *partitionTest {
	t.Helper()
	url := natsURL(t)
	nc, err := nats.Connect(url)
	must(t, err)
	t.Cleanup(nc.Close)
	js, err := nc.JetStream()
	must(t, err)
	pt := &partitionTest{url: url, base: uniqueSubject("part.in"), durable: "t_" + nuid.Next(), js: js, seqs: map[[2]int]uint64{}}
	pt.stream, err = ensurePartitionStream(context.Background(), js, pt.base, "")
	must(t, err)
	return pt
}

// publish publishes {"p":p,"i":i} for i in [from, to) to partition p's
// subject, as a producer knowing the partition would, and records each
// one's stream sequence. Odd messages carry the JSONKeysKey list a
// flowrun sink sets (naming a header "tag" holding JSON).
func (pt *partitionTest) publish(t *testing.T, p, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		m := nats.NewMsg(partition.Subject(pt.base, p))
		m.Data = fmt.Appendf(nil, `{"p":%d,"i":%d}`, p, i)
		if i%2 == 1 {
			m.Header.Set(JSONKeysKey, "tag")
			m.Header.Set("tag", `{"i":1}`)
		}
		ack, err := pt.js.PublishMsg(m)
		must(t, err)
		pt.seqs[[2]int{p, i}] = ack.Sequence
	}
}

// checkNATSMeta checks that every message of partition p that rec
// received had meta.nats {partition, sequence, subject} right.
func (pt *partitionTest) checkNATSMeta(t *testing.T, rec *partRecorder, p int) {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, i := range rec.seen[p] {
		want := fmt.Sprintf(`{"partition":%d,"sequence":%d,"subject":"%s"}`, p, pt.seqs[[2]int{p, i}], partition.Subject(pt.base, p))
		if got := rec.nats[[2]int{p, i}]; got != want {
			t.Errorf("partition %d message %d: meta.nats %s, want %s", p, i, got, want)
			return
		}
	}
}

// source returns a partitioned source on board feeding rec, and runs it
// until the returned stop is called.
func (pt *partitionTest) run(t *testing.T, board *partition.Board, rec *partRecorder, window int) (stop func()) {
	t.Helper()
	g := pipeline.New(pipeline.Options{})
	src, err := NewNATSSource(context.Background(), g, NATSSourceOptions{
		NATSOptions: NATSOptions{URL: pt.url, Subject: pt.base, Durable: pt.durable, AckWait: 30 * time.Second},
		Source:      SourceOptions{Name: "src", Window: window, MaxDeliveries: 100},
		Partitions:  board,
	})
	must(t, err)
	must(t, g.AddSource("src", src, Ports()...))
	must(t, g.AddProcessor("rec", rec))
	must(t, g.Link("src", pipeline.PortOut, "rec"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				must(t, err)
			case <-time.After(30 * time.Second):
				t.Fatal("the flow did not stop")
			}
			must(t, src.Close(context.Background()))
		})
	}
	t.Cleanup(stop)
	return stop
}

// consumerExists reports whether partition p's durable consumer exists.
func (pt *partitionTest) consumerExists(t *testing.T, p int) bool {
	t.Helper()
	_, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, p))
	if errors.Is(err, nats.ErrConsumerNotFound) {
		return false
	}
	must(t, err)
	return true
}

// TestPartitionedSourceConsumesServedPartitionsOnly: of four partitions
// with input waiting, only the two served are consumed (the others have no
// consumer at all), each in stream order, each event with its partition,
// stream sequence and subject in meta.nats; serving a third later
// consumes it too.
func TestPartitionedSourceConsumesServedPartitionsOnly(t *testing.T) {
	pt := newPartitionTest(t)
	const n = 30
	for p := range 4 {
		pt.publish(t, p, 0, n)
	}
	board := partition.BoardOf(component.NewResources(), "store")
	must(t, board.Declare(4))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	board.Serve(ctx, 0)
	board.Serve(ctx, 2)
	rec := newPartRecorder()
	stop := pt.run(t, board, rec, 8)

	waitUntil(t, "partitions 0 and 2", func() bool { return len(rec.got(0)) >= n && len(rec.got(2)) >= n })
	for _, p := range []int{0, 2} {
		if got := rec.got(p); !slices.Equal(got, upTo(n)) {
			t.Errorf("partition %d received %v, want 0..%d in order, once each", p, got, n-1)
		}
		if !pt.consumerExists(t, p) {
			t.Errorf("partition %d: no consumer %s", p, PartitionDurable(pt.durable, p))
		}
		pt.checkNATSMeta(t, rec, p)
	}
	for _, p := range []int{1, 3} {
		if got := rec.got(p); len(got) != 0 {
			t.Errorf("partition %d is not served but %d of its messages were consumed", p, len(got))
		}
		if pt.consumerExists(t, p) {
			t.Errorf("partition %d is not served but has a consumer", p)
		}
	}
	board.Serve(ctx, 3)
	waitUntil(t, "partition 3 once served", func() bool { return len(rec.got(3)) >= n })
	stop()
	if got := rec.got(3); !slices.Equal(got, upTo(n)) {
		t.Errorf("partition 3 received %v, want 0..%d in order", got, n-1)
	}
	if got := rec.got(1); len(got) != 0 {
		t.Errorf("partition 1 is not served but %d of its messages were consumed", len(got))
	}
	// Every message consumed was acknowledged.
	for _, p := range []int{0, 2, 3} {
		info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, p))
		must(t, err)
		if info.NumAckPending != 0 || info.NumPending != 0 || info.AckFloor.Stream == 0 {
			t.Errorf("partition %d: %d unacknowledged, %d pending, ack floor %d", p, info.NumAckPending, info.NumPending, info.AckFloor.Stream)
		}
	}
}

// TestPartitionHandOverRedeliversUnsettled stops serving a partition while
// the flow holds one of its messages with a full window unacknowledged:
// the messages in flight complete and are acknowledged after the
// hand-over, nothing is consumed while the partition is not served, and
// once it is served again its consumer resumes from the ack floor: nothing
// is lost, and the partition's messages are first seen in stream order.
// (The messages pulled and not handed over at a hand-over are the subject
// of TestPartitionEndNacksWhatWasNotHandedOver.)
func TestPartitionHandOverRedeliversUnsettled(t *testing.T) {
	pt := newPartitionTest(t)
	const n = 60
	pt.publish(t, 0, 0, n)
	board := partition.BoardOf(component.NewResources(), "store")
	must(t, board.Declare(2))
	rec := newPartRecorder()
	rec.holdFrom, rec.hold, rec.held = 10, make(chan struct{}), make(chan struct{})
	ctx0, end0 := context.WithCancel(context.Background())
	board.Serve(ctx0, 0)
	stop := pt.run(t, board, rec, 16)

	select {
	case <-rec.held:
	case <-time.After(30 * time.Second):
		t.Fatal("message 10 never arrived")
	}
	// The window is full: messages after 10 are pulled and wait.
	waitUntil(t, "the partition's window to fill", func() bool {
		info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0))
		return err == nil && info.NumAckPending == 16
	})
	end0() // the partition is handed over
	close(rec.hold)
	// The messages handed over (10 and those behind it in the flow)
	// complete and are acked: the ack floor reaches the last of them and
	// stays there.
	settledIn := func() bool {
		info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0))
		return err == nil && len(rec.got(0)) > 10 && info.AckFloor.Stream == uint64(len(rec.got(0)))
	}
	waitUntil(t, "the partition's in-flight messages to complete", func() bool {
		if !settledIn() {
			return false
		}
		time.Sleep(500 * time.Millisecond)
		return settledIn()
	})
	before := rec.got(0)
	if len(before) >= n {
		t.Fatalf("all %d messages consumed before the hand-over: the test proves nothing", len(before))
	}
	pt.publish(t, 0, n, n+10)
	time.Sleep(2 * partitionPollWait)
	for _, i := range rec.got(0) {
		if i >= n {
			t.Fatalf("message %d, published after the hand-over, consumed while the partition was not served", i)
		}
	}
	info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0))
	must(t, err)
	if int(info.AckFloor.Stream) < len(before) {
		t.Errorf("ack floor %d after %d messages completed: in-flight messages were not acknowledged", info.AckFloor.Stream, len(before))
	}

	ctx1, end1 := context.WithCancel(context.Background())
	defer end1()
	board.Serve(ctx1, 0)
	waitUntil(t, "every message after the partition is served again", func() bool { return len(firstSeen(rec.got(0))) >= n+10 })
	stop()
	got := rec.got(0)
	if fs := firstSeen(got); !slices.Equal(fs, upTo(n+10)) {
		t.Errorf("partition 0: messages first seen in order %v, want 0..%d", fs, n+9)
	}
	t.Logf("%d messages before the hand-over, %d deliveries in all for %d messages", len(before), len(got), n+10)
	info, err = pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0))
	must(t, err)
	if info.NumAckPending != 0 || info.NumPending != 0 {
		t.Errorf("after the run: %d unacknowledged, %d pending", info.NumAckPending, info.NumPending)
	}
}

// TestPartitionedSourceStopsWithoutADeclaredCount: a source whose board
// never gets a count, nor a partition, stops at once when the flow stops.
func TestPartitionedSourceStopsWithoutADeclaredCount(t *testing.T) {
	pt := newPartitionTest(t)
	board := partition.BoardOf(component.NewResources(), "store")
	stop := pt.run(t, board, newPartRecorder(), 4)
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	stop() // fails the test after 30 s
	t.Logf("stopped in %v", time.Since(start))
}

// readPartitions returns the events stored on each partition subject of
// base, up to want in all.
func readPartitions(t *testing.T, url, base string, count, want int) map[int][]pipeline.Event {
	t.Helper()
	out := map[int][]pipeline.Event{}
	total := 0
	deadline := time.Now().Add(10 * time.Second)
	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	sub, err := js.SubscribeSync(PartitionFilter(base), nats.DeliverAll(), nats.AckNone())
	must(t, err)
	defer sub.Unsubscribe()
	for total < want && time.Now().Before(deadline) {
		m, err := sub.NextMsg(200 * time.Millisecond)
		if err != nil {
			continue
		}
		p, err := partition.ParseSubject(base, m.Subject, count)
		must(t, err)
		wm, err := natsUnmarshaler{}.Unmarshal(m)
		must(t, err)
		ev, err := ToEvent(wm)
		must(t, err)
		out[p] = append(out[p], ev)
		total++
	}
	// Nothing more than want.
	if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
		t.Errorf("more than %d messages stored: %s on %s", want, m.Data, m.Subject)
	}
	return out
}

// TestPartitionedSinkRoutesEachKeyToItsPartition: every event is published
// to the subject of partition.OfString(key, count), key being
// partition_key's value; an event without a key goes to err.
func TestPartitionedSinkRoutesEachKeyToItsPartition(t *testing.T) {
	url := natsURL(t)
	base := uniqueSubject("part.route")
	const count, n = 8, 64
	for _, tt := range []struct {
		name, key string
		ev        func(i int) pipeline.Event
		keyOf     func(i int) string
	}{
		{"default: the kv command's key", "", func(i int) pipeline.Event {
			return pipeline.Event{Data: fmt.Appendf(nil, `{"i":%d}`, i), Meta: fmt.Appendf(nil, `{"kv":{"increment":"player/%d"}}`, i)}
		}, nil},
		{"an expression", `"c/" + string(data.customer)`, func(i int) pipeline.Event {
			return pipeline.Event{Data: fmt.Appendf(nil, `{"i":%d,"customer":%d}`, i, i*7)}
		}, func(i int) string { return fmt.Sprintf("c/%d", i*7) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			subject := base + "." + fmt.Sprint(len(tt.key))
			sink, err := NewNATSPartitionedSink(context.Background(), "sink", NATSOptions{URL: url, Subject: subject},
				PartitionSinkOptions{Count: count, Key: tt.key})
			must(t, err)
			defer sink.Close(context.Background())
			var evs []pipeline.Event
			for i := range n {
				evs = append(evs, tt.ev(i))
			}
			evs = append(evs, pipeline.Event{Data: []byte(`{"i":-1}`), Meta: []byte(`{"kv":{"get_all":true}}`)})
			var errs []pipeline.Event
			must(t, sink.Process(context.Background(), evs, emitFunc(func(port string, ev pipeline.Event) {
				errs = append(errs, ev)
			})))
			if len(errs) != 1 || !gjson.GetBytes(errs[0].Meta, "error").Exists() {
				t.Fatalf("err events %v, want the one without a key", errs)
			}
			t.Logf("keyless event: %s", gjson.GetBytes(errs[0].Meta, "error"))
			got := readPartitions(t, url, subject, count, n)
			used := 0
			for p, evs := range got {
				used++
				for _, ev := range evs {
					i := int(gjson.GetBytes(ev.Data, "i").Int())
					key := fmt.Sprintf("player/%d", i)
					if tt.keyOf != nil {
						key = tt.keyOf(i)
					}
					if want := partition.OfString(key, count); p != want {
						t.Errorf("event %d (key %q) on partition %d, want %d", i, key, p, want)
					}
				}
			}
			if used < 2 {
				t.Errorf("%d events all on %d partitions", n, used)
			}
		})
	}
}

// TestPartitionedSinkRepublishIsDropped: publishing the same events again
// (a crash after publishing, before the input message's ack) stores
// nothing more: the broker's duplicate window drops them by their
// Nats-Msg-Id. Two different events derived from one message are both
// kept, and the consumer of the partition sees ids that are the same for
// the same event.
func TestPartitionedSinkRepublishIsDropped(t *testing.T) {
	url := natsURL(t)
	base := uniqueSubject("part.dup")
	const count = 4
	evs := func() []pipeline.Event {
		var out []pipeline.Event
		for i := range 20 {
			// Two events from each input message, different keys.
			for _, k := range []string{"a", "b"} {
				out = append(out, pipeline.Event{Data: fmt.Appendf(nil, `{"i":%d,"k":%q}`, i, k),
					Meta: fmt.Appendf(nil, `{"message_id":"orders_in:%d","kv":{"put":"%s%d"}}`, i+1, k, i)})
			}
		}
		// Events from no bus message have no id: always published.
		out = append(out, pipeline.Event{Data: []byte(`{"i":-1}`), Meta: []byte(`{"kv":{"put":"x"}}`)})
		return out
	}
	for range 2 {
		sink, err := NewNATSPartitionedSink(context.Background(), "sink", NATSOptions{URL: url, Subject: base},
			PartitionSinkOptions{Count: count})
		must(t, err)
		must(t, sink.Process(context.Background(), evs(), emitFunc(func(_ string, ev pipeline.Event) {
			t.Errorf("publish failed: %s", ev.Meta)
		})))
		must(t, sink.Close(context.Background()))
	}
	got := readPartitions(t, url, base, count, 42)
	ids := map[string]bool{}
	total := 0
	for _, evs := range got {
		for _, ev := range evs {
			total++
			id := gjson.GetBytes(ev.Meta, MessageIDMeta).String()
			if i := gjson.GetBytes(ev.Data, "i").Int(); i >= 0 {
				if want := fmt.Sprintf("orders_in:%d/", i+1); len(id) != len(want)+16 || id[:len(want)] != want {
					t.Errorf("event %s has message_id %q, want %s + 16 hex digits", ev.Data, id, want)
				}
			}
			ids[id] = true
		}
	}
	if total != 42 || len(ids) != 42 {
		t.Errorf("%d messages stored with %d ids, want 40 + 2 without an input id, each once", total, len(ids))
	}
}

// TestMessageIDFor: the id depends on the input message's id and the
// published content, nothing else.
func TestMessageIDFor(t *testing.T) {
	ev := func(meta, data string) (pipeline.Event, string) {
		e := pipeline.Event{Data: []byte(data), Meta: []byte(meta)}
		return e, MessageIDFor(e, ToMessage(e))
	}
	_, a := ev(`{"message_id":"s:1","kv":{"put":"k"}}`, `{"v":1}`)
	_, a2 := ev(`{"message_id":"s:1","kv":{"put":"k"}}`, `{"v":1}`)
	_, b := ev(`{"message_id":"s:1","kv":{"put":"k"}}`, `{"v":2}`)
	_, c := ev(`{"message_id":"s:2","kv":{"put":"k"}}`, `{"v":1}`)
	_, d := ev(`{"message_id":"s:1","kv":{"put":"j"}}`, `{"v":1}`)
	_, none := ev(`{"kv":{"put":"k"}}`, `{"v":1}`)
	if a != a2 || a == b || a == c || a == d || none != "" {
		t.Errorf("ids: same %q %q, other data %q, other message %q, other meta %q, no message %q", a, a2, b, c, d, none)
	}
}

func TestCommandKey(t *testing.T) {
	for _, tt := range []struct{ meta, want string }{
		{`{"kv":{"increment":"player/7","by":2}}`, "player/7"},
		{`{"kv":{"op":"get","key":"p_1","found":true}}`, "p_1"},
		{`{"kv":{"put":"k","value":{"key":"not this"}}}`, "k"},
		{`{"kv":{"batch":[{"cas":"a","value":1},{"put":"b","value":2}]}}`, "a"},
		{`{"kv":{"scan":"prefix/"}}`, "prefix/"},
		{`{"kv":{"get_all":true}}`, ""},
		{`{"kv":"put"}`, ""},
		{`{}`, ""},
	} {
		got, err := CommandKey(pipeline.Event{Meta: []byte(tt.meta)})
		if got != tt.want || (tt.want == "") != errors.Is(err, ErrPartitionKey) {
			t.Errorf("CommandKey(%s) = %q, %v; want %q", tt.meta, got, err, tt.want)
		}
	}
}

// TestPartitionEndNacksWhatWasNotHandedOver drives one connection of a
// partitioned source directly, nobody taking its messages: the partition's
// consumer pulls a window, one message is taken (handed over), the rest
// wait. When the partition stops being served, the waiting ones are
// nacked, and the one handed over is still acked; served again, the nacked
// ones come back at once (ack_wait is a minute), in stream order, with a
// delivery count of 2 and the id of their first delivery (STREAM:SEQ),
// then the rest.
func TestPartitionEndNacksWhatWasNotHandedOver(t *testing.T) {
	pt := newPartitionTest(t)
	const n, window = 20, 8
	pt.publish(t, 0, 0, n)
	board := partition.BoardOf(component.NewResources(), "store")
	must(t, board.Declare(1))
	so := SourceOptions{Name: "src", Topic: pt.base, Window: window}
	so.EnsureDefaults()
	opts := NATSOptions{URL: pt.url, Subject: pt.base, Durable: pt.durable, AckWait: time.Minute, uncappedAckWait: true}
	opts.EnsureDefaults()
	msgs, release, err := dialNATSPartitions(context.Background(), so, opts, board, &natsDeadLetters{})
	must(t, err)
	defer func() { must(t, release()) }()
	next := func() (i int, delivered string) {
		t.Helper()
		select {
		case m := <-msgs:
			m.Ack()
			i := int(gjson.GetBytes(m.Payload, "i").Int())
			// The id is the stream sequence, the same on a redelivery.
			if want := fmt.Sprintf("%s:%d", pt.stream, i+1); m.UUID != want {
				t.Errorf("message %d has id %q, want %q", i, m.UUID, want)
			}
			return i, m.Metadata.Get(DeliveredKey)
		case <-time.After(30 * time.Second):
			t.Fatal("no message within 30 s")
			return 0, ""
		}
	}
	consumer := func() *nats.ConsumerInfo {
		info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0))
		must(t, err)
		return info
	}

	ctx0, end0 := context.WithCancel(context.Background())
	board.Serve(ctx0, 0)
	var first *message.Message
	select {
	case first = <-msgs:
	case <-time.After(30 * time.Second):
		t.Fatal("no message within 30 s")
	}
	waitUntil(t, "a full window pulled", func() bool { return consumer().NumAckPending == window })
	end0()
	// The message handed over completes after the hand-over: its ack
	// still goes out.
	first.Ack()
	waitUntil(t, "the first message's ack", func() bool { return consumer().AckFloor.Stream == 1 })

	ctx1, end1 := context.WithCancel(context.Background())
	defer end1()
	board.Serve(ctx1, 0)
	for want := 1; want < n; want++ {
		i, delivered := next()
		wantDelivered := "1"
		if want < window {
			wantDelivered = "2" // pulled, nacked at the hand-over, redelivered
		}
		if i != want || delivered != wantDelivered {
			t.Fatalf("message %d (delivery %s), want %d (delivery %s)", i, delivered, want, wantDelivered)
		}
	}
	waitUntil(t, "every ack", func() bool { return consumer().AckFloor.Stream == n })
}

// TestPartitionKeepsSlowMessages: a partition consumer's ack wait is
// capped (so a dead owner's messages come back about when its lease
// lapses), and a message that stays in the flow longer than that wait is
// reported in progress, so the broker does not deliver it a second time
// while it is processed.
func TestPartitionKeepsSlowMessages(t *testing.T) {
	pt := newPartitionTest(t)
	pt.publish(t, 0, 0, 1)
	board := partition.BoardOf(component.NewResources(), "store")
	must(t, board.Declare(1))
	so := SourceOptions{Name: "src", Topic: pt.base, Window: 4}
	so.EnsureDefaults()
	opts := NATSOptions{URL: pt.url, Subject: pt.base, Durable: pt.durable, AckWait: time.Second}
	opts.EnsureDefaults()
	msgs, release, err := dialNATSPartitions(context.Background(), so, opts, board, &natsDeadLetters{})
	must(t, err)
	defer func() { must(t, release()) }()
	ctx, end := context.WithCancel(context.Background())
	defer end()
	board.Serve(ctx, 0)
	var m *message.Message
	select {
	case m = <-msgs:
	case <-time.After(30 * time.Second):
		t.Fatal("no message within 30 s")
	}
	// Held for three ack waits: never delivered again.
	select {
	case again := <-msgs:
		t.Fatalf("message delivered again while in the flow (delivery %s)", again.Metadata.Get(DeliveredKey))
	case <-time.After(3 * time.Second):
	}
	m.Ack()
	waitUntil(t, "the ack", func() bool {
		info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0))
		return err == nil && info.AckFloor.Stream == 1 && info.NumRedelivered == 0
	})
	if info, err := pt.js.ConsumerInfo(pt.stream, PartitionDurable(pt.durable, 0)); err != nil || info.Config.AckWait != time.Second {
		t.Fatalf("consumer ack wait %v (%v), want 1s", info.Config.AckWait, err)
	}
}
