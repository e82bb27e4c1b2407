package amqp_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/amqp"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// brokerURL returns the broker the tests use, from FLOWRUN_AMQP_URL. Under
// CI (CI=true) a missing or unreachable broker fails the test: CI starts
// one, so its absence is a broken setup, not a reason to skip.
func brokerURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("FLOWRUN_AMQP_URL")
	inCI := os.Getenv("CI") == "true"
	if url == "" {
		msg := "FLOWRUN_AMQP_URL is not set; start a broker with `scripts/rabbitmq.sh start 25673` " +
			"and set FLOWRUN_AMQP_URL=amqp://guest:guest@127.0.0.1:25673/ to run the AMQP tests"
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: amqp091.DefaultDial(2 * time.Second)})
	if err != nil {
		msg := fmt.Sprintf("AMQP broker at FLOWRUN_AMQP_URL is unreachable: %v", err)
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	_ = conn.Close()
	return url
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// uniqueQueue returns a queue name no earlier run used: the broker keeps
// durable queues.
func uniqueQueue(prefix string) string { return prefix + "." + uuid.NewString()[:8] }

// deleteQueues removes the test's queues when it ends.
func deleteQueues(t testing.TB, url string, queues ...string) {
	t.Cleanup(func() {
		conn, err := amqp091.Dial(url)
		if err != nil {
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return
		}
		for _, q := range queues {
			_, _ = ch.QueueDelete(q, false, false, false)
		}
	})
}

type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }

// publishEvents publishes evs to queue with the amqp sink, declaring the
// queue when it is missing.
func publishEvents(t testing.TB, url, queue string, evs []pipeline.Event) {
	t.Helper()
	publishWith(t, amqp.Options{URL: url, Queue: queue, Mandatory: true}, evs)
}

// publishWith publishes evs with the amqp sink.
func publishWith(t testing.TB, o amqp.Options, evs []pipeline.Event) {
	t.Helper()
	s, err := amqp.NewSink(context.Background(), amqp.SinkOptions{Options: o, Name: "test"})
	must(t, err)
	for len(evs) > 0 {
		n := min(len(evs), 1000)
		must(t, s.Process(context.Background(), evs[:n], emitFunc(func(_ string, ev pipeline.Event) {
			t.Errorf("publish failed: %s", ev.Meta)
		})))
		evs = evs[n:]
	}
	must(t, s.Close(context.Background()))
}

// queueReader consumes a queue (declared durable if missing), acking as it
// reads.
type queueReader struct {
	conn *amqp091.Connection
	ds   <-chan amqp091.Delivery
}

func readQueue(t *testing.T, url, queue string) *queueReader {
	t.Helper()
	conn, err := amqp091.Dial(url)
	must(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	must(t, err)
	_, err = ch.QueueDeclare(queue, true, false, false, false, nil)
	must(t, err)
	ds, err := ch.Consume(queue, "", true, false, false, false, nil)
	must(t, err)
	return &queueReader{conn: conn, ds: ds}
}

// next returns up to want events, waiting at most timeout for them.
func (r *queueReader) next(t *testing.T, want int, timeout time.Duration) []pipeline.Event {
	t.Helper()
	var out []pipeline.Event
	deadline := time.After(timeout)
	for len(out) < want {
		select {
		case d := <-r.ds:
			ev, err := bus.ToEvent(amqp.ToMessage(&d))
			if err != nil {
				t.Errorf("result not an event: %v", err)
			}
			out = append(out, ev)
		case <-deadline:
			return out
		}
	}
	return out
}

// runFlow loads and runs a flow file; stop cancels it and returns Run's
// error.
func runFlow(t testing.TB, dir, yaml string) (g *pipeline.Graph, res *component.Resources, stop func() error) {
	t.Helper()
	path := filepath.Join(dir, "flow.yaml")
	must(t, os.WriteFile(path, []byte(yaml), 0o644))
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	res = component.NewResources()
	built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- built.Run(ctx) }()
	var stopped bool
	var runErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(60 * time.Second):
				t.Fatal("flow did not stop within 60s")
			}
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return built.Graph, res, stop
}

// TestRoundTripThroughKV: 10,000 kv commands published to a queue go
// through amqp -> kv -> amqp; every correlation is answered once (a
// graceful run redelivers nothing), with its kv result.
func TestRoundTripThroughKV(t *testing.T) {
	url := brokerURL(t)
	n := 10_000
	if testing.Short() {
		n = 1000
	}
	in, out := uniqueQueue("rt.in"), uniqueQueue("rt.out")
	deleteQueues(t, url, in, out)
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":{"put":"k/%d"}}`, i, i))}
	}
	start := time.Now()
	publishEvents(t, url, in, evs)
	t.Logf("published %d messages in %v", n, time.Since(start).Round(time.Millisecond))
	results := readQueue(t, url, out)
	start = time.Now()
	_, _, stop := runFlow(t, t.TempDir(), fmt.Sprintf(`name: rt
connectors:
  input:  { type: amqp, mode: read, url: %q, queue: %q }
  store:  { type: kv, dir: state }
  output: { type: amqp, mode: write, url: %q, queue: %q }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, url, out))
	got := results.next(t, n, 60*time.Second)
	t.Logf("%d results in %v", len(got), time.Since(start).Round(time.Millisecond))
	must(t, stop())
	got = append(got, results.next(t, 1, 500*time.Millisecond)...)
	seen := map[int64]int{}
	for _, ev := range got {
		c := gjson.GetBytes(ev.Meta, "correlation")
		if c.Type != gjson.Number || gjson.GetBytes(ev.Meta, "kv.key").String() != fmt.Sprintf("k/%d", c.Int()) ||
			gjson.GetBytes(ev.Meta, "kv.op").String() != "put" {
			t.Fatalf("result meta %s", ev.Meta)
		}
		if gjson.GetBytes(ev.Meta, "message_id").String() == "" {
			t.Fatalf("result without message_id: %s", ev.Meta)
		}
		seen[c.Int()]++
	}
	if len(got) != n || len(seen) != n {
		t.Errorf("%d results for %d correlations, want %d each", len(got), len(seen), n)
	}
}

// TestPoisonMessageIsDeadLettered: a command that always fails (err
// unlinked) is redelivered, then dead-lettered after max_deliveries; the
// other messages flow. Both ways of dead-lettering, on both queue types.
func TestPoisonMessageIsDeadLettered(t *testing.T) {
	url := brokerURL(t)
	for _, tc := range []struct {
		name, queueType string
		dlx             bool
	}{
		{"classic queue, flowrun dead-letter queue", amqp.QueueClassic, false},
		{"quorum queue, dead-letter exchange", amqp.QueueQuorum, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, out := uniqueQueue("poison.in"), uniqueQueue("poison.out")
			dead := in + bus.DeadLetterSuffix
			deleteQueues(t, url, in, out, dead)
			extra := ""
			if tc.dlx {
				dlx := in + ".dlx"
				extra = fmt.Sprintf(", dead_letter_exchange: %q", dlx)
				t.Cleanup(func() {
					if conn, err := amqp091.Dial(url); err == nil {
						if ch, err := conn.Channel(); err == nil {
							_ = ch.ExchangeDelete(dlx, false, false)
						}
						_ = conn.Close()
					}
				})
			}
			results, deadLetters := readQueue(t, url, out), readQueue(t, url, dead)
			_, _, stop := runFlow(t, t.TempDir(), fmt.Sprintf(`name: poison
connectors:
  input:  { type: amqp, mode: read, url: %q, queue: %q, queue_type: %s, max_deliveries: 3, linger: 1ms%s }
  store:  { type: kv, dir: state }
  output: { type: amqp, mode: write, url: %q, queue: %q }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, tc.queueType, extra, url, out))
			var evs []pipeline.Event
			for i := range 20 {
				cmd := fmt.Sprintf(`{"put":"k/%d"}`, i)
				if i == 7 {
					cmd = `{"frobnicate":"k"}`
				}
				evs = append(evs, pipeline.Event{Data: []byte(`1`), Meta: []byte(fmt.Sprintf(`{"correlation":%d,"kv":%s}`, i, cmd))})
			}
			// The source declared the queue (with its arguments).
			publishWith(t, amqp.Options{URL: url, Queue: in, Mandatory: true, Declare: amqp.DeclarePassive}, evs)
			got := results.next(t, 19, 30*time.Second)
			dl := deadLetters.next(t, 1, 30*time.Second)
			must(t, stop())
			if len(got) != 19 {
				t.Errorf("%d results, want 19", len(got))
			}
			if len(dl) != 1 || gjson.GetBytes(dl[0].Meta, "correlation").Int() != 7 {
				t.Fatalf("dead letters %v", dl)
			}
			meta := dl[0].Meta
			if tc.dlx {
				// Dead-lettered by the broker (x-death headers), after
				// three deliveries counted by the quorum queue.
				if r := gjson.GetBytes(meta, `x-first-death-reason`).String(); r != "rejected" || gjson.GetBytes(meta, "error").Exists() {
					t.Errorf("dead letter not from the dead-letter exchange: %s", meta)
				}
			} else if e := gjson.GetBytes(meta, "error").String(); !strings.Contains(e, "delivery 3 of 3") {
				t.Errorf("dead letter error %q, want delivery 3 of 3 (meta %s)", e, meta)
			}
		})
	}
}

// TestSinkReportsUnroutableAndBadRoutingKeys: with mandatory publishing a
// message no queue receives goes to err, and so does an event whose
// routing key expression gives no string; the others are delivered, routed
// by the expression.
func TestSinkReportsUnroutableAndBadRoutingKeys(t *testing.T) {
	url := brokerURL(t)
	ex := uniqueQueue("ex")
	q := ex + ".eu"
	deleteQueues(t, url, q)
	t.Cleanup(func() {
		if conn, err := amqp091.Dial(url); err == nil {
			if ch, err := conn.Channel(); err == nil {
				_ = ch.ExchangeDelete(ex, false, false)
			}
			_ = conn.Close()
		}
	})
	// The source declares the exchange and binds its queue with key "eu".
	_, _, stop := runFlow(t, t.TempDir(), fmt.Sprintf(`name: bind
connectors:
  input: { type: amqp, mode: read, url: %q, queue: %q, exchange: %q, routing_key: eu }
  sink:  { type: null }
links:
  - input/out -> sink/in
`, url, q, ex))
	must(t, stop())
	results := readQueue(t, url, q)
	var failed []string
	e, err := expr.Parse(`data.region`)
	must(t, err)
	s, err := amqp.NewSink(context.Background(), amqp.SinkOptions{Options: amqp.Options{URL: url, Exchange: ex, Mandatory: true},
		Name: "out", RoutingKeyExpr: e})
	must(t, err)
	defer s.Close(context.Background())
	must(t, s.Process(context.Background(), []pipeline.Event{
		{Data: []byte(`{"region":"eu","n":1}`)},
		{Data: []byte(`{"region":"us","n":2}`)},
		{Data: []byte(`{"n":3}`)},
		{Data: []byte(`{"region":"eu","n":4}`)},
	}, emitFunc(func(port string, ev pipeline.Event) {
		failed = append(failed, port+" "+gjson.GetBytes(ev.Data, "n").String()+" "+gjson.GetBytes(ev.Meta, "error").String())
	})))
	got := results.next(t, 2, 10*time.Second)
	if len(got) != 2 || gjson.GetBytes(got[0].Data, "n").Int() != 1 || gjson.GetBytes(got[1].Data, "n").Int() != 4 {
		t.Errorf("delivered %v, want n 1 and 4", got)
	}
	if len(failed) != 2 || !strings.HasPrefix(failed[0], "err 2 ") || !strings.Contains(failed[0], "unroutable") ||
		!strings.HasPrefix(failed[1], "err 3 ") || !strings.Contains(failed[1], "routing_key_expr") {
		t.Errorf("failed events %q, want 2 unroutable and 3 without a routing key", failed)
	}
}

// TestSpecRefusesImpossibleConfigs: a flow file with an amqp connector
// that cannot work is refused when loaded, naming the option.
func TestSpecRefusesImpossibleConfigs(t *testing.T) {
	for _, tc := range []struct{ conn, want string }{
		{`{ type: amqp, mode: write }`, "queue"},
		{`{ type: amqp, mode: read }`, "queue"},
		{`{ type: amqp, mode: read, queue: q, routing_key: k }`, "routing_key"},
		{`{ type: amqp, mode: read, queue: q, queue_type: stream }`, "queue_type"},
		{`{ type: amqp, mode: write, queue: q, routing_key_expr: 'data.' }`, "routing_key_expr"},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "flow.yaml")
		src := "name: bad\nconnectors:\n  io: " + tc.conn + "\n  other: { type: null }\nlinks:\n  - io/out -> other/in\n"
		if strings.Contains(tc.conn, "write") {
			src = "name: bad\nconnectors:\n  lines: { type: stdin }\n  io: " + tc.conn + "\nlinks:\n  - lines/out -> io/in\n"
		}
		must(t, os.WriteFile(path, []byte(src), 0o644))
		_, diags, err := flows.Load(path, builtin.NewRegistry())
		if err == nil || !strings.Contains(fmt.Sprint(err, diags), tc.want) {
			t.Errorf("%s: loaded (err %v, diags %v), want an error naming %s", tc.conn, err, diags, tc.want)
		}
	}
}
