package mqtt_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

// mqttURL returns the broker the MQTT tests use, from FLOWRUN_MQTT_URL.
// Under CI (CI=true) a missing or unreachable broker fails the test: CI
// installs and starts one, so its absence is a broken setup.
func mqttURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("FLOWRUN_MQTT_URL")
	inCI := os.Getenv("CI") == "true"
	if url == "" {
		msg := "FLOWRUN_MQTT_URL is not set; start a broker with `scripts/mosquitto.sh start 21883` " +
			"and set FLOWRUN_MQTT_URL=tcp://127.0.0.1:21883 to run the MQTT tests"
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("probe-" + randomID()).SetConnectTimeout(2 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(3*time.Second) || tok.Error() != nil {
		msg := fmt.Sprintf("MQTT broker at FLOWRUN_MQTT_URL=%s is unreachable: %v", url, tok.Error())
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	c.Disconnect(0)
	return url
}

func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// uniqueTopic returns a topic no earlier run used: the broker keeps
// sessions and retained messages between runs.
func uniqueTopic(prefix string) string { return "flowrun-test/" + prefix + "/" + randomID() }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// connect returns a connected test client.
func connect(t testing.TB, url, id string, clean bool, handler paho.MessageHandler) paho.Client {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).
		SetMaxReconnectInterval(200 * time.Millisecond).SetOrderMatters(false)
	if handler != nil {
		o.SetDefaultPublishHandler(handler)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", url, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// subscribe subscribes c to filter and waits for the broker's answer.
func subscribe(t testing.TB, c paho.Client, filter string, qos byte) {
	t.Helper()
	if st := c.Subscribe(filter, qos, nil); !st.WaitTimeout(5*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, st.Error())
	}
}

// createSession makes the persistent session of clientID subscribed to
// filter, as a flowrun source would, so that messages published before
// the source first runs wait for it.
func createSession(t testing.TB, url, clientID, filter string) {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(clientID).SetCleanSession(false))
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if st := c.Subscribe(filter, 1, nil); !st.WaitTimeout(5*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	c.Disconnect(100)
}

// publish publishes payloads to topic with QoS 1 and waits for every
// PUBACK.
func publish(t testing.TB, url, topic string, payloads [][]byte) {
	t.Helper()
	c := connect(t, url, "pub-"+randomID(), true, nil)
	defer c.Disconnect(100)
	const inflight = 1000
	toks := make([]paho.Token, 0, inflight)
	flush := func() {
		for _, tok := range toks {
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
		}
		toks = toks[:0]
	}
	for _, p := range payloads {
		toks = append(toks, c.Publish(topic, 1, false, p))
		if len(toks) == inflight {
			flush()
		}
	}
	flush()
}

// envelopes returns the codec event payloads of evs.
func envelopes(evs []pipeline.Event) [][]byte {
	out := make([][]byte, len(evs))
	for i, ev := range evs {
		out[i] = Encode(bus.ToMessage(ev), CodecEvent)
	}
	return out
}

// collector records the events published on a topic (codec event), by
// meta.correlation, through a persistent session that outlives broker
// restarts.
type collector struct {
	mu     sync.Mutex
	seen   map[string]int
	total  int
	events []pipeline.Event
	bad    []string
}

func collect(t testing.TB, url, filter string) *collector {
	t.Helper()
	col := &collector{seen: map[string]int{}}
	id := "collector-" + randomID()
	c := connect(t, url, id, false, func(_ paho.Client, m paho.Message) {
		ev, err := Decode(m.Topic(), m.Payload(), m.Qos(), m.Retained(), CodecEvent, "")
		col.mu.Lock()
		defer col.mu.Unlock()

		if err != nil {
			col.bad = append(col.bad, err.Error())
			return
		}
		col.seen[gjson.GetBytes(ev.Meta, "correlation").String()]++
		col.total++
		col.events = append(col.events, ev)
	})
	if st := c.Subscribe(filter, 1, nil); !st.WaitTimeout(5*time.Second) || st.Error() != nil {
		t.Fatalf("subscribe: %v", st.Error())
	}
	return col
}

// snapshot returns what has been collected so far, copied under the lock
// (the client's callbacks keep appending).
func (c *collector) snapshot() (events []pipeline.Event, total int, bad []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]pipeline.Event(nil), c.events...), c.total, append([]string(nil), c.bad...)
}

// distinct returns how many correlations have been seen.
func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// waitFor waits until n correlations have been seen, at most d.
func (c *collector) waitFor(n int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c.distinct() >= n {
			return true
		}
	}
	return c.distinct() >= n
}

// loadFlow loads and builds a flow file written into dir.
func loadFlow(t testing.TB, dir, yaml string, res *component.Resources) *flows.Built {
	t.Helper()
	path := filepath.Join(dir, "flow.yaml")
	must(t, os.WriteFile(path, []byte(yaml), 0o644))
	f, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	if res == nil {
		res = component.NewResources()
	}
	built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
	must(t, err)
	return built
}

// kvInput is message i of the round-trip and kill tests: even ones
// increment one of counters counters, odd ones put a value under their
// own key.
func kvInput(i, counters int) pipeline.Event {
	corr := fmt.Sprintf(`"m-%d"`, i)
	if i%2 == 0 {
		return pipeline.Event{Data: []byte(`{}`),
			Meta: []byte(fmt.Sprintf(`{"correlation":%s,"kv":{"increment":"c/%d"}}`, corr, (i/2)%counters))}
	}
	return pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)),
		Meta: []byte(fmt.Sprintf(`{"correlation":%s,"kv":{"put":"p/%d"}}`, corr, i))}
}

// TestRoundTripThroughKV publishes 10,000 kv commands (codec event) while
// the flow is not running, runs mqtt -> kv -> mqtt from a flow file, and
// checks that every correlation is answered once, and that the source's
// session is left with nothing to deliver; with each protocol.
func TestRoundTripThroughKV(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) { testRoundTripThroughKV(t, protocol) })
	}
}

func testRoundTripThroughKV(t *testing.T, protocol string) {
	url := mqttURL(t)
	n := 10_000
	if testing.Short() {
		n = 1000
	}
	dir := t.TempDir()
	in, out := uniqueTopic("rt-in"), uniqueTopic("rt-out")
	clientID := "rt-" + randomID()
	col := collect(t, url, out)
	createSessionFor(t, protocol, url, clientID, in)
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = kvInput(i, 100)
	}
	start := time.Now()
	publish(t, url, in, envelopes(evs))
	t.Logf("published %d messages in %v", n, time.Since(start).Round(time.Millisecond))

	built := loadFlow(t, dir, fmt.Sprintf(`name: rt
connectors:
  input:  { type: mqtt, mode: read, url: %q, topic: %q, codec: event, client_id: %s, protocol: %q }
  store:  { type: kv, dir: state, idem_from: message_id }
  output: { type: mqtt, mode: write, url: %q, topic: %q, codec: event, protocol: %q }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, clientID, protocol, url, out, protocol), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- built.Run(ctx) }()
	ok := col.waitFor(n, 60*time.Second)
	t.Logf("%d of %d correlations answered in %v", col.distinct(), n, time.Since(start).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond) // duplicates, if any, arrive
	cancel()
	must(t, <-done)
	if !ok {
		t.Fatalf("only %d of %d correlations answered", col.distinct(), n)
	}
	events, total, bad := col.snapshot()
	if total != n || len(bad) > 0 {
		t.Errorf("%d results for %d correlations, %d undecodable (%v)", total, n, len(bad), bad)
	}
	for _, ev := range events[:min(10, len(events))] {
		c := gjson.GetBytes(ev.Meta, "correlation").String()
		op := gjson.GetBytes(ev.Meta, "kv.op").String()
		if i := strings.TrimPrefix(c, "m-"); op != map[bool]string{true: "increment", false: "put"}[strings.ContainsAny(i[len(i)-1:], "02468")] {
			t.Errorf("result %s has op %q", ev.Meta, op)
		}
	}
	// A graceful stop acked everything: the session has nothing left.
	if n := leftover(t, protocol, url, clientID); n != 0 {
		t.Errorf("%d messages redelivered to the session after a graceful stop", n)
	}
}

// graphSource builds src (mqtt) -> work -> sink (mqtt), work calling seen
// with each event and failing those whose data has "fail": true.
func graphSource(t *testing.T, opts SourceOptions, sink SinkOptions, seen func(pipeline.Event)) *pipeline.Graph {
	t.Helper()
	g := pipeline.New(pipeline.Options{})
	src, err := NewSource(context.Background(), g, opts)
	must(t, err)
	snk, err := NewSink(context.Background(), sink)
	must(t, err)
	work := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			if seen != nil {
				seen(ev)
			}
			if gjson.GetBytes(ev.Data, "fail").Bool() {
				meta, _ := sjson.SetBytes(append([]byte(nil), ev.Meta...), "error", "asked to fail")
				emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, meta))
				continue
			}
			emit.Emit(pipeline.PortOut, ev)
		}
		return nil
	})
	must(t, g.AddSource("src", src, bus.Ports()...))
	must(t, g.AddProcessor("work", work, pipeline.PortOut, pipeline.PortErr))
	must(t, g.AddProcessor("sink", snk))
	must(t, g.Link("src", pipeline.PortOut, "work"))
	must(t, g.Link("work", pipeline.PortOut, "sink"))
	return g
}

// TestWildcardsMetaAndDeadLetters: a source on a filter with wildcards
// (codec json, id_from a data field) gives each message's topic, QoS and
// flags in meta.mqtt; a message that keeps failing is dead-lettered after
// max_deliveries with its error and the rest flows; a payload that is not
// JSON is dead-lettered at once. It runs with each protocol.
func TestWildcardsMetaAndDeadLetters(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) { testWildcardsMetaAndDeadLetters(t, protocol) })
	}
}

func testWildcardsMetaAndDeadLetters(t *testing.T, protocol string) {
	url := mqttURL(t)
	root := uniqueTopic("wild")
	filter, dead, out := root+"/+/temp", root+"-dead", root+"-out"
	clientID := "wild-" + randomID()
	createSessionFor(t, protocol, url, clientID, filter)
	var payloads [][]byte
	for i := range 20 {
		p := fmt.Sprintf(`{"id":"e-%d","room":"r%d"}`, i, i%3)
		if i == 7 {
			p = `{"id":"e-7","fail":true}`
		}
		payloads = append(payloads, []byte(p))
	}
	for i, p := range payloads {
		publish(t, url, fmt.Sprintf("%s/r%d/temp", root, i%3), [][]byte{p})
	}
	publish(t, url, root+"/r0/temp", [][]byte{[]byte("not json")})
	publish(t, url, root+"/r0/humidity", [][]byte{[]byte(`{"id":"other"}`)}) // not matched

	deadCol := collect(t, url, dead)
	res := map[string]pipeline.Event{}
	var mu sync.Mutex
	outC := connect(t, url, "out-"+randomID(), true, func(_ paho.Client, m paho.Message) {
		ev, err := Decode(m.Topic(), m.Payload(), m.Qos(), false, CodecJSON, "id")
		if err == nil {
			mu.Lock()
			res[gjson.GetBytes(ev.Data, "id").String()] = ev
			mu.Unlock()
		}
	})
	subscribe(t, outC, out, 1)
	time.Sleep(100 * time.Millisecond)

	// The sink publishes the event's data (codec json): meta.mqtt is
	// checked on what the source emitted, through the work node.
	var metas sync.Map
	g := graphSource(t,
		SourceOptions{Options: Options{URL: url, ClientID: clientID, Protocol: protocol}, Topic: filter, QoS: 1, IDFrom: "id",
			Source: bus.SourceOptions{Name: "src", Window: 8, MaxDeliveries: 3, DeadLetter: dead}},
		SinkOptions{Options: Options{URL: url, ClientID: "sink-" + randomID(), Protocol: protocol}, Topic: out, QoS: 1},
		func(ev pipeline.Event) { metas.Store(gjson.GetBytes(ev.Meta, "message_id").String(), string(ev.Meta)) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(res)
		mu.Unlock()
		deadEvents, _, _ := deadCol.snapshot()
		if (n >= 19 && deadCol.distinct() >= 1 && len(deadEvents) >= 2) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	must(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	if len(res) != 19 {
		t.Errorf("%d results, want 19 (all but e-7)", len(res))
	}
	if _, ok := res["e-7"]; ok {
		t.Error("the failing message was published")
	}
	if _, ok := res["other"]; ok {
		t.Error("a topic outside the filter was read")
	}
	m, ok := metas.Load("e-4")
	if !ok || gjson.Get(m.(string), "mqtt.topic").String() != root+"/r1/temp" || gjson.Get(m.(string), "mqtt.qos").Int() != 1 ||
		gjson.Get(m.(string), "mqtt.retained").Bool() {
		t.Errorf("meta of e-4: %v", m)
	}
	var reasons []string
	deadEvents, _, _ := deadCol.snapshot()
	for _, ev := range deadEvents {
		reasons = append(reasons, gjson.GetBytes(ev.Meta, "error").String())
		if gjson.GetBytes(ev.Data, "id").String() == "e-7" {
			if r := gjson.GetBytes(ev.Meta, "error").String(); !strings.Contains(r, "asked to fail") || !strings.Contains(r, "delivery 3 of 3") {
				t.Errorf("dead letter of e-7: %s", ev.Meta)
			}
			if gjson.GetBytes(ev.Meta, "mqtt_source.topic").String() != root+"/r1/temp" {
				t.Errorf("dead letter of e-7 lost its topic: %s", ev.Meta)
			}
		}
	}
	if len(deadEvents) != 2 || !strings.Contains(strings.Join(reasons, "|"), "not JSON (delivery 1 of 3)") {
		t.Errorf("dead letters: %v", reasons)
	}
}

// TestSinkQoS2Retained: the sink publishes with QoS 2 and retain; a client
// subscribing afterwards gets the retained message. It runs with each
// protocol.
func TestSinkQoS2Retained(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) { testSinkQoS2Retained(t, protocol) })
	}
}

func testSinkQoS2Retained(t *testing.T, protocol string) {
	url := mqttURL(t)
	topic := uniqueTopic("retain")
	sink, err := NewSink(context.Background(), SinkOptions{Options: Options{URL: url, ClientID: "retain-" + randomID(), Protocol: protocol},
		Topic: topic, QoS: 2, Retain: true, Codec: CodecEvent})
	must(t, err)
	must(t, sink.Process(context.Background(), []pipeline.Event{{Data: []byte(`{"v":1}`), Meta: []byte(`{"correlation":"r1"}`)}},
		emitFunc(func(_ string, ev pipeline.Event) { t.Errorf("publish failed: %s", ev.Meta) })))
	must(t, sink.Close(context.Background()))
	got := make(chan paho.Message, 1)
	c := connect(t, url, "late-"+randomID(), true, func(_ paho.Client, m paho.Message) { got <- m })
	subscribe(t, c, topic, 2)
	select {
	case m := <-got:
		if !m.Retained() || gjson.GetBytes(m.Payload(), "meta.correlation").String() != "r1" || gjson.GetBytes(m.Payload(), "data.v").Int() != 1 {
			t.Errorf("retained %v %s", m.Retained(), m.Payload())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no retained message")
	}
	// Clear the retained message.
	c.Publish(topic, 1, true, []byte{}).WaitTimeout(2 * time.Second)
}

type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }
