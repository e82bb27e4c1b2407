package mqtt_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/pipeline"
)

// protocols are the MQTT versions the broker tests run with.
var protocols = []string{Protocol311, Protocol5}

// client5 connects an MQTT 5 test client with clientID, Clean Start
// clean and the session expiry expiry; handler, when set, gets every
// message (acknowledged automatically once it returns).
func client5(t testing.TB, rawURL, clientID string, clean bool, expiry time.Duration, handler func(*paho5.Publish)) *paho5.Client {
	t.Helper()
	u, err := url.Parse(rawURL)
	must(t, err)
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	must(t, err)
	cfg := paho5.ClientConfig{ClientID: clientID, Conn: conn, OnClientError: func(error) {}}
	if handler != nil {
		cfg.OnPublishReceived = []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			handler(pr.Packet)
			return true, nil
		}}
	}
	c := paho5.NewClient(cfg)
	exp := uint32(expiry / time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID, CleanStart: clean, KeepAlive: 30,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &exp}}); err != nil {
		t.Fatalf("connect %s (MQTT 5): %v", rawURL, err)
	}
	t.Cleanup(func() { disconnect5(c) })
	return c
}

func disconnect5(c *paho5.Client) {
	select {
	case <-c.Done():
	default:
		_ = c.Disconnect(&paho5.Disconnect{})
	}
}

// subscribe5 subscribes c to filter with QoS 1.
func subscribe5(t testing.TB, c *paho5.Client, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe %s: %v %v", filter, err, sa)
	}
}

// createSessionFor makes the persistent session of clientID subscribed to
// filter with protocol, as a flowrun source would, so that messages
// published before the source first runs wait for it.
func createSessionFor(t testing.TB, protocol, url, clientID, filter string) {
	t.Helper()
	if protocol == Protocol311 {
		createSession(t, url, clientID, filter)
		return
	}
	c := client5(t, url, clientID, false, DefaultSessionExpiry, nil)
	subscribe5(t, c, filter)
	disconnect5(c)
}

// leftover connects to clientID's session with protocol and returns how
// many messages the broker still had for it.
func leftover(t testing.TB, protocol, url, clientID string) int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	if protocol == Protocol311 {
		c := connect(t, url, clientID, false, func(paho.Client, paho.Message) { mu.Lock(); n++; mu.Unlock() })
		time.Sleep(500 * time.Millisecond)
		c.Disconnect(0)
		mu.Lock()
		defer mu.Unlock()
		return n
	}
	c := client5(t, url, clientID, false, DefaultSessionExpiry, func(*paho5.Publish) { mu.Lock(); n++; mu.Unlock() })
	time.Sleep(500 * time.Millisecond)
	disconnect5(c)
	mu.Lock()
	defer mu.Unlock()
	return n
}

// runSource runs a source with opts (codec json, id_from "i") into a
// collecting node until it has seen want messages whose id starts with
// "m-" or d has passed, stops it gracefully and returns those ids. With
// probe set, it first publishes probes to topic until one arrives: the
// source's subscription is then in place.
func runSource(t *testing.T, opts SourceOptions, want int, d time.Duration, probe bool) []string {
	t.Helper()
	var mu sync.Mutex
	var ids []string
	probed := false
	opts.Codec, opts.IDFrom, opts.Source.Name = CodecJSON, "i", "src"
	g := pipeline.New(pipeline.Options{})
	src, err := NewSource(context.Background(), g, opts)
	must(t, err)
	work := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range b {
			id := gjson.GetBytes(ev.Meta, "message_id").String()
			if strings.HasPrefix(id, "m-") {
				ids = append(ids, id)
			} else {
				probed = true
			}
		}
		return nil
	})
	must(t, g.AddSource("src", src, bus.Ports()...))
	must(t, g.AddProcessor("work", work))
	must(t, g.Link("src", pipeline.PortOut, "work"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	state := func() (int, bool) { mu.Lock(); defer mu.Unlock(); return len(ids), probed }
	deadline := time.Now().Add(d)
	for probe && time.Now().Before(deadline) {
		if _, ok := state(); ok {
			break
		}
		publish(t, opts.URL, opts.Topic, [][]byte{[]byte(`{"i":"probe-` + randomID() + `"}`)})
		time.Sleep(100 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		if n, _ := state(); n >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	must(t, <-done)
	if _, ok := state(); probe && !ok {
		t.Fatal("no probe arrived: the source did not subscribe")
	}
	mu.Lock()
	defer mu.Unlock()
	return ids
}

// TestSessionKeepsMessagesWhileDown: a source that has run once (its own
// connection created its session) gets at its next start the messages
// published while it was stopped, with each protocol. With MQTT 5 this
// rests on Clean Start false and the Session Expiry Interval.
func TestSessionKeepsMessagesWhileDown(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) {
			url := mqttURL(t)
			topic := uniqueTopic("down")
			opts := SourceOptions{Options: Options{URL: url, ClientID: "down-" + randomID(), Protocol: protocol}, Topic: topic, QoS: 1}
			if ids := runSource(t, opts, 0, 10*time.Second, true); len(ids) != 0 {
				t.Fatalf("first run saw %v", ids)
			}
			const n = 200
			var payloads [][]byte
			for i := range n {
				payloads = append(payloads, []byte(fmt.Sprintf(`{"i":"m-%d"}`, i)))
			}
			publish(t, url, topic, payloads)
			ids := runSource(t, opts, n, 20*time.Second, false)
			seen := map[string]bool{}
			for _, id := range ids {
				seen[id] = true
			}
			if len(seen) != n {
				t.Fatalf("%d of the %d messages published while the source was stopped arrived at its restart", len(seen), n)
			}
		})
	}
}

// TestSessionExpiry: with MQTT 5 the broker drops the source's session
// session_expiry after it stopped, and with it the messages published
// meanwhile.
func TestSessionExpiry(t *testing.T) {
	url := mqttURL(t)
	topic := uniqueTopic("expiry")
	opts := SourceOptions{Options: Options{URL: url, ClientID: "expiry-" + randomID(), Protocol: Protocol5, SessionExpiry: time.Second},
		Topic: topic, QoS: 1}
	runSource(t, opts, 0, 10*time.Second, true)
	time.Sleep(3 * time.Second) // mosquitto checks expiries every second or so
	publish(t, url, topic, [][]byte{[]byte(`{"i":"m-0"}`)})
	if ids := runSource(t, opts, 1, 2*time.Second, false); len(ids) != 0 {
		t.Fatalf("the session outlived its expiry: %v arrived", ids)
	}
}

// TestUserPropertiesCarryMeta: with MQTT 5 and codec json, a sink
// publishes event meta as user properties (non-string values listed in
// flowrun_json) and a source reads them back as meta: strings, JSON
// values and the correlation as they were, meta.message_id the sink's
// message id. A foreign producer's user properties are string meta fields,
// its "message_id" the message's id.
func TestUserPropertiesCarryMeta(t *testing.T) {
	url := mqttURL(t)
	topic := uniqueTopic("props")
	clientID := "props-" + randomID()
	createSessionFor(t, Protocol5, url, clientID, topic)
	raw := make(chan *paho5.Publish, 4)
	watcher := client5(t, url, "watch-"+randomID(), true, 0, func(p *paho5.Publish) { raw <- p })
	subscribe5(t, watcher, topic)

	sink, err := NewSink(context.Background(), SinkOptions{Options: Options{URL: url, ClientID: "props-sink-" + randomID(), Protocol: Protocol5},
		Topic: topic, QoS: 1})
	must(t, err)
	must(t, sink.Process(context.Background(), []pipeline.Event{{Data: []byte(`{"v":1}`),
		Meta: []byte(`{"correlation":"c1","kv":{"put":"k"},"tenant":"acme","n":5,"message_id":"not-copied"}`)}},
		emitFunc(func(_ string, ev pipeline.Event) { t.Errorf("publish failed: %s", ev.Meta) })))
	must(t, sink.Close(context.Background()))
	var sent *paho5.Publish
	select {
	case sent = <-raw:
	case <-time.After(5 * time.Second):
		t.Fatal("the sink's message did not arrive")
	}
	up := sent.Properties.User
	if up.Get("correlation") != "c1" || up.Get("tenant") != "acme" || up.Get("kv") != `{"put":"k"}` || up.Get("n") != "5" ||
		!strings.Contains(up.Get("flowrun_json"), "kv") || up.Get("message_id") == "" || up.Get("message_id") == "not-copied" ||
		string(sent.Payload) != `{"v":1}` {
		t.Errorf("published %s with user properties %v", sent.Payload, up)
	}

	foreign := client5(t, url, "foreign-"+randomID(), true, 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := foreign.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(`{"v":2}`),
		Properties: &paho5.PublishProperties{User: paho5.UserProperties{{Key: "message_id", Value: "ext-1"},
			{Key: "tenant", Value: "x"}, {Key: "looks", Value: `{"a":1}`}, {Key: "mqtt", Value: "ignored"}}}}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	got := map[int64]pipeline.Event{}
	g := pipeline.New(pipeline.Options{})
	src, err := NewSource(context.Background(), g, SourceOptions{Options: Options{URL: url, ClientID: clientID, Protocol: Protocol5},
		Topic: topic, QoS: 1, Source: bus.SourceOptions{Name: "src"}})
	must(t, err)
	must(t, g.AddSource("src", src, bus.Ports()...))
	must(t, g.AddProcessor("work", pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range b {
			got[gjson.GetBytes(ev.Data, "v").Int()] = ev
		}
		return nil
	})))
	must(t, g.Link("src", pipeline.PortOut, "work"))
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(runCtx) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 2 {
			break
		}
	}
	stop()
	must(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	m1 := gjson.ParseBytes(got[1].Meta)
	if m1.Get("correlation").String() != "c1" || m1.Get("tenant").String() != "acme" || m1.Get("kv.put").String() != "k" ||
		m1.Get("n").Type != gjson.Number || m1.Get("message_id").String() != up.Get("message_id") || m1.Get("mqtt.topic").String() != topic ||
		m1.Get("flowrun_json").Exists() {
		t.Errorf("meta from the sink's message: %s", got[1].Meta)
	}
	m2 := gjson.ParseBytes(got[2].Meta)
	if m2.Get("message_id").String() != "ext-1" || m2.Get("tenant").String() != "x" || m2.Get("looks").String() != `{"a":1}` ||
		m2.Get("mqtt.topic").String() != topic {
		t.Errorf("meta from the foreign message: %s", got[2].Meta)
	}
}

// TestReceiveMaximum: with MQTT 5 the broker sends a source at most
// max_inflight messages unacknowledged (its Receive Maximum). A connection
// takes 4 of 50 queued messages and ends without acknowledging them: on
// the session's next connection only those 4 come again as duplicates, the
// other 46 had never been sent.
func TestReceiveMaximum(t *testing.T) {
	url := mqttURL(t)
	topic := uniqueTopic("recvmax")
	clientID := "recvmax-" + randomID()
	createSessionFor(t, Protocol5, url, clientID, topic)
	const n, window = 50, 4
	var payloads [][]byte
	for i := range n {
		payloads = append(payloads, []byte(fmt.Sprintf(`{"i":%d}`, i)))
	}
	publish(t, url, topic, payloads)
	msgs, release, err := Dial5(context.Background(), SourceOptions{Options: Options{URL: url, ClientID: clientID, Protocol: Protocol5},
		Topic: topic, QoS: 1, MaxInflight: window, Source: bus.SourceOptions{Window: window}})
	must(t, err)
	for range window {
		select {
		case <-msgs:
		case <-time.After(5 * time.Second):
			t.Fatal("no message")
		}
	}
	time.Sleep(300 * time.Millisecond) // more would arrive now, without the limit
	must(t, release())
	var mu sync.Mutex
	total, dup := 0, 0
	c := client5(t, url, clientID, false, DefaultSessionExpiry, func(p *paho5.Publish) {
		mu.Lock()
		defer mu.Unlock()
		total++
		if p.Duplicate() {
			dup++
		}
	})
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		got := total
		mu.Unlock()
		if got >= n {
			break
		}
	}
	disconnect5(c)
	mu.Lock()
	defer mu.Unlock()
	if total != n || dup != window {
		t.Errorf("next connection got %d messages, %d of them sent before; want %d and %d", total, dup, n, window)
	}
}

// TestAcksInArrivalOrder5: an MQTT 5 source acknowledges a message only
// once it and every message received before it are done (MQTT 5 §4.6),
// and sends the acknowledgements that are ready when its connection is
// released. A connection takes the first 4 of 10 queued messages, acks
// some and ends; the session's next connection gets every message the
// broker had no acknowledgement for.
func TestAcksInArrivalOrder5(t *testing.T) { testAcksReachTheBroker(t, Protocol5) }

// TestAcksReachTheBroker is TestAcksInArrivalOrder5 with MQTT 3.1.1, whose
// PUBACKs the connection writes itself, a run of them at once.
func TestAcksReachTheBroker(t *testing.T) { testAcksReachTheBroker(t, Protocol311) }

// testAcksReachTheBroker takes 4 of 10 queued messages on one connection
// with protocol, acks some of them and releases the connection: the
// broker got the acks of the first ones acked in arrival order (those
// after a message not acked are not sent), and sends the rest again on the
// next connection.
func testAcksReachTheBroker(t *testing.T, protocol string) {
	url := mqttURL(t)
	for _, tc := range []struct {
		name    string
		ack     []int // of the 4 messages taken
		wantAck int   // acknowledgements the broker got
	}{
		{"all", []int{0, 1, 2, 3}, 4},
		{"first two", []int{0, 1}, 2},
		{"all but the first", []int{1, 2, 3}, 0},
		{"none", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := uniqueTopic("ackorder")
			clientID := "ackorder-" + randomID()
			createSessionFor(t, protocol, url, clientID, topic)
			const n, window = 10, 4
			var payloads [][]byte
			for i := range n {
				payloads = append(payloads, []byte(fmt.Sprintf(`{"i":%d}`, i)))
			}
			publish(t, url, topic, payloads)
			dial := Dial5
			if protocol == Protocol311 {
				dial = Dial
			}
			msgs, release, err := dial(context.Background(), SourceOptions{Options: Options{URL: url, ClientID: clientID, Protocol: protocol},
				Topic: topic, QoS: 1, MaxInflight: window, Source: bus.SourceOptions{Window: window}})
			must(t, err)
			var taken []*message.Message
			for range window {
				select {
				case m := <-msgs:
					taken = append(taken, m)
				case <-time.After(5 * time.Second):
					t.Fatal("no message")
				}
			}
			for _, i := range tc.ack {
				taken[i].Ack()
			}
			must(t, release())
			var mu sync.Mutex
			total := 0
			count := func() { mu.Lock(); total++; mu.Unlock() }
			var stop func()
			if protocol == Protocol311 {
				c := connect(t, url, clientID, false, func(paho.Client, paho.Message) { count() })
				stop = func() { c.Disconnect(0) }
			} else {
				c := client5(t, url, clientID, false, DefaultSessionExpiry, func(*paho5.Publish) { count() })
				stop = func() { disconnect5(c) }
			}
			want := n - tc.wantAck
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				mu.Lock()
				got := total
				mu.Unlock()
				if got >= want {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
			stop()
			mu.Lock()
			defer mu.Unlock()
			if total != want {
				t.Errorf("next connection got %d messages, want %d: the broker had %d acknowledgements, want %d", total, want, n-total, tc.wantAck)
			}
		})
	}
}

// TestRoundTripUserProperties is TestRoundTripThroughKV with MQTT 5 and
// codec json: 10,000 kv commands whose meta (correlation, kv command,
// message_id) travels in user properties, queued while the flow is not
// running, go through mqtt -> kv (idem_from: message_id) -> mqtt, and
// every correlation is answered once, its result's meta in user
// properties too.
func TestRoundTripUserProperties(t *testing.T) {
	url := mqttURL(t)
	n := 10_000
	if testing.Short() {
		n = 1000
	}
	in, out := uniqueTopic("rt5-in"), uniqueTopic("rt5-out")
	clientID := "rt5-" + randomID()
	var mu sync.Mutex
	seen := map[string]int{}
	var bad []string
	col := client5(t, url, "rt5-col-"+randomID(), true, 0, func(pb *paho5.Publish) {
		ev, err := Decode5(pb, CodecJSON, "")
		mu.Lock()
		defer mu.Unlock()
		if err != nil || gjson.GetBytes(ev.Meta, "kv.op").String() == "" {
			bad = append(bad, fmt.Sprintf("%v %s", err, ev.Meta))
			return
		}
		seen[gjson.GetBytes(ev.Meta, "correlation").String()]++
	})
	subscribe5(t, col, out)
	createSessionFor(t, Protocol5, url, clientID, in)

	pub := client5(t, url, "rt5-pub-"+randomID(), true, 0, nil)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range n {
		m := bus.ToMessage(kvInput(i, 100))
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := pub.Publish(ctx, &paho5.Publish{Topic: in, QoS: 1, Payload: m.Payload,
				Properties: &paho5.PublishProperties{User: UserProperties(m)}}); err != nil {
				t.Errorf("publish: %v", err)
			}
		}()
	}
	wg.Wait()
	t.Logf("published %d messages in %v", n, time.Since(start).Round(time.Millisecond))

	built := loadFlow(t, t.TempDir(), fmt.Sprintf(`name: rt5
connectors:
  input:  { type: mqtt, mode: read, url: %q, topic: %q, client_id: %s, protocol: "5" }
  store:  { type: kv, dir: state, idem_from: message_id }
  output: { type: mqtt, mode: write, url: %q, topic: %q, protocol: "5" }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, clientID, url, out), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- built.Run(ctx) }()
	distinct := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	for deadline := time.Now().Add(60 * time.Second); distinct() < n && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d of %d correlations answered in %v", distinct(), n, time.Since(start).Round(time.Millisecond))
	time.Sleep(200 * time.Millisecond) // duplicates, if any, arrive
	cancel()
	must(t, <-done)
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, k := range seen {
		total += k
	}
	if len(seen) != n || total != n || len(bad) > 0 {
		t.Fatalf("%d correlations answered, %d results, want %d; %d without their meta (%v)", len(seen), total, n, len(bad), bad[:min(3, len(bad))])
	}
	if k := leftover(t, Protocol5, url, clientID); k != 0 {
		t.Errorf("%d messages redelivered to the session after a graceful stop", k)
	}
}

// TestPermanentRefusalFailsAtOnce publishes, with protocol 5, to a topic
// a private broker's ACL denies: mosquitto answers PUBACK 0x87 Not
// authorized, and the sink, though it retries failures (Reconnect, not
// fail_fast), fails the event at once on "err" naming the reason code,
// instead of holding the flow back retrying; a topic the ACL allows is
// published on the same sink.
func TestPermanentRefusalFailsAtOnce(t *testing.T) {
	acl := filepath.Join(t.TempDir(), "acl")
	must(t, os.WriteFile(acl, []byte("topic readwrite allowed/#\n"), 0o600))
	b := startPrivateBrokerWith(t, "acl_file "+acl)
	r := bus.Reconnect{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	for _, tt := range []struct {
		topic string
		want  string // "" for published
	}{
		{topic: "denied/x", want: "reason code 0x87 Not authorized (permanent)"},
		{topic: "allowed/x"},
	} {
		sink, err := NewSink(context.Background(), SinkOptions{Options: Options{URL: b.url, ClientID: "refused-" + randomID(), Protocol: Protocol5},
			Topic: tt.topic, QoS: 1, Codec: CodecEvent, PublishTimeout: 5 * time.Second, Reconnect: &r})
		must(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var failed []string
		must(t, sink.Process(ctx, []pipeline.Event{{Data: []byte(`{"v":1}`), Meta: []byte(`{"correlation":"c1"}`)}},
			emitFunc(func(port string, ev pipeline.Event) {
				failed = append(failed, port+": "+gjson.GetBytes(ev.Meta, "error").String())
			})))
		if ctx.Err() != nil {
			t.Fatalf("%s: the refused publish was retried until the test's deadline", tt.topic)
		}
		cancel()
		must(t, sink.Close(context.Background()))
		switch {
		case tt.want == "" && len(failed) > 0:
			t.Errorf("%s: %v", tt.topic, failed)
		case tt.want != "" && (len(failed) != 1 || !strings.HasPrefix(failed[0], "err: ") || !strings.Contains(failed[0], tt.want)):
			t.Errorf("%s: failed %q, want one event on err with %q", tt.topic, failed, tt.want)
		}
	}
}
