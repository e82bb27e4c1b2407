package mqtt_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	. "github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/internal/proctest"
	"github.com/flowrun/flowrun/pipeline"
)

// privateBroker is a mosquitto of the test's own, started with
// scripts/mosquitto.sh on a free port, its persistence in a directory that
// outlives a stop.
type privateBroker struct {
	t          *testing.T
	port       string
	dir, run   string
	url        string
	script     string
	inCI       bool
	stoppedOut bool
	// extra is added to the broker's configuration (MOSQUITTO_EXTRA_CONF).
	extra string
}

func startPrivateBroker(t *testing.T) *privateBroker {
	t.Helper()
	return startPrivateBrokerWith(t, "")
}

// startPrivateBrokerWith starts a private broker with the configuration
// lines extra added.
func startPrivateBrokerWith(t *testing.T, extra string) *privateBroker {
	t.Helper()
	mqttURL(t) // the same skip rule as the other broker tests
	script, err := filepath.Abs("../../scripts/mosquitto.sh")
	must(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	must(t, l.Close())
	b := &privateBroker{t: t, port: port, dir: t.TempDir(), run: t.TempDir(), script: script,
		url: "tcp://127.0.0.1:" + port, extra: extra}
	b.start()
	t.Cleanup(b.stop)
	return b
}

func (b *privateBroker) cmd(args ...string) {
	b.t.Helper()
	cmd := exec.Command(b.script, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+b.run, "MOSQUITTO_EXTRA_CONF="+b.extra)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.t.Fatalf("mosquitto.sh %v: %v\n%s", args, err, out)
	}
}

func (b *privateBroker) start() { b.t.Helper(); b.cmd("start", b.port, b.dir) }
func (b *privateBroker) stop()  { b.t.Helper(); b.cmd("stop", b.port) }

// TestBrokerRestartMidRun stops the broker (which saves its sessions) while
// a flow mqtt -> work -> mqtt is running and starts it again with the same
// persistence: the flow reports itself not ready meanwhile, reconnects by
// itself, and every message comes out, those published before the stop and
// those published after the restart. It runs with each protocol.
func TestBrokerRestartMidRun(t *testing.T) {
	for _, protocol := range protocols {
		t.Run("protocol="+protocol, func(t *testing.T) { testBrokerRestartMidRun(t, protocol) })
	}
}

func testBrokerRestartMidRun(t *testing.T, protocol string) {
	b := startPrivateBroker(t)
	const n = 3000
	in, out := uniqueTopic("restart-in"), uniqueTopic("restart-out")
	clientID := "restart-" + randomID()
	col := collect(t, b.url, out)
	createSessionFor(t, protocol, b.url, clientID, in)
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i)), Meta: []byte(fmt.Sprintf(`{"correlation":"m-%d"}`, i))}
	}
	// Half before the run, half once the broker is back: those reach the
	// flow only if its source connected again.
	publish(t, b.url, in, envelopes(evs[:n/2]))

	health := component.HealthOf(component.NewResources())
	reconnect := bus.Reconnect{Initial: 50 * time.Millisecond, Max: 300 * time.Millisecond}
	g := pipeline.New(pipeline.Options{})
	src, err := NewSource(context.Background(), g, SourceOptions{
		Options: Options{URL: b.url, ClientID: clientID, KeepAlive: 2 * time.Second, ConnectTimeout: 2 * time.Second, Protocol: protocol},
		Topic:   in, QoS: 1, Codec: CodecEvent,
		Source: bus.SourceOptions{Name: "src", Window: 64}, Reconnect: reconnect, Health: health,
	})
	must(t, err)
	sink, err := NewSink(context.Background(), SinkOptions{
		Options: Options{URL: b.url, ClientID: "restart-sink-" + randomID(), ConnectTimeout: 2 * time.Second, Protocol: protocol},
		Name:    "sink", Topic: out, QoS: 1, Codec: CodecEvent, PublishTimeout: 2 * time.Second,
		Reconnect: &reconnect, Health: health,
	})
	must(t, err)
	var handled atomic.Int64
	slow := pipeline.ProcessorFunc(func(_ context.Context, b []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range b {
			handled.Add(1)
			time.Sleep(200 * time.Microsecond)
			emit.Emit(pipeline.PortOut, ev)
		}
		return nil
	})
	must(t, g.AddSource("src", src, bus.Ports()...))
	must(t, g.AddProcessor("work", slow, pipeline.PortOut))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", pipeline.PortOut, "work"))
	must(t, g.Link("work", pipeline.PortOut, "sink"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	if !col.waitFor(n/10, 30*time.Second) {
		t.Fatalf("only %d results before the restart", col.distinct())
	}
	b.stop()
	atStop := col.distinct()
	notReady := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && !notReady; time.Sleep(10 * time.Millisecond) {
		notReady = health.Err() != nil
	}
	time.Sleep(300 * time.Millisecond)
	t.Logf("broker stopped with %d of %d results out; not ready: %v (%v)", atStop, n, notReady, health.Err())
	if !notReady {
		t.Error("the flow stayed ready while the broker was down")
	}
	b.start()
	publish(t, b.url, in, envelopes(evs[n/2:]))
	ok := col.waitFor(n, 60*time.Second)
	events, total, _ := col.snapshot()
	t.Logf("after the restart: %d of %d results, %d published, %d handled", col.distinct(), n, total, handled.Load())
	cancel()
	must(t, <-done)
	if !ok {
		log, _ := os.ReadFile(filepath.Join(b.dir, "mosquitto.log"))
		t.Fatalf("lost messages: %d of %d results; broker log:\n%s", col.distinct(), n, proctest.Tail(string(log), 3000))
	}
	if err := health.Err(); err != nil {
		t.Errorf("still not ready after reconnecting: %v", err)
	}
	for _, ev := range events {
		if c, i := gjson.GetBytes(ev.Meta, "correlation").String(), gjson.GetBytes(ev.Data, "i").Int(); c != fmt.Sprintf("m-%d", i) {
			t.Fatalf("result %s %s", ev.Data, ev.Meta)
		}
	}
}
