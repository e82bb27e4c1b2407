package bus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// privateNATS is a nats-server of one test's own, on a fixed port and
// store directory, so that it can be stopped and started again like a
// restarted broker.
type privateNATS struct {
	t    *testing.T
	port int
	dir  string
	cmd  *exec.Cmd
}

// newPrivateNATS returns a broker not yet started. Without the nats-server
// binary it fails the test under CI and skips it otherwise.
func newPrivateNATS(t *testing.T) *privateNATS {
	t.Helper()
	if _, err := exec.LookPath("nats-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nats-server is not installed")
		}
		t.Skip("nats-server is not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	must(t, ln.Close())
	p := &privateNATS{t: t, port: port, dir: t.TempDir()}
	t.Cleanup(p.stop)
	return p
}

func (p *privateNATS) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", p.port) }

func (p *privateNATS) start() {
	p.t.Helper()
	p.cmd = exec.Command("nats-server", "-js", "-a", "127.0.0.1", "-p", strconv.Itoa(p.port), "-sd", p.dir)
	must(p.t, p.cmd.Start())
	waitFor(p.t, "nats-server to accept connections", func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p.port), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// stop stops the broker gracefully (its stored messages survive).
func (p *privateNATS) stop() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
	p.cmd = nil
}

// reconnectFlow is natsFlow with fast reconnection and health reporting.
func reconnectFlow(t *testing.T, url, in, out string, r Reconnect, h *component.Health) *pipeline.Graph {
	t.Helper()
	g := pipeline.New(pipeline.Options{})
	no := NATSOptions{URL: url, Subject: in, Durable: "reconnect", AckWait: 2 * time.Second,
		ConnectTimeout: 500 * time.Millisecond, Reconnect: r, Health: h, Logger: quiet}
	src, err := NewNATSSource(context.Background(), g, NATSSourceOptions{NATSOptions: no, Source: SourceOptions{Name: "src", Window: 16}})
	must(t, err)
	no.Subject = out
	sink, err := NewNATSSink(context.Background(), "sink", no)
	must(t, err)
	must(t, g.AddSource("src", src, Ports()...))
	must(t, g.AddProcessor("work", worker, pipeline.PortOut, pipeline.PortErr))
	must(t, g.AddProcessor("sink", sink))
	must(t, g.Link("src", pipeline.PortOut, "work"))
	must(t, g.Link("work", pipeline.PortOut, "sink"))
	return g
}

func correlated(from, to int) []pipeline.Event {
	var evs []pipeline.Event
	for i := from; i < to; i++ {
		evs = append(evs, pipeline.Event{Data: []byte(`{}`), Meta: []byte(fmt.Sprintf(`{"correlation":%d}`, i))})
	}
	return evs
}

// TestNATSWaitsForTheBrokerAndSurvivesItsRestart starts a flow while its
// broker is down, then restarts the broker mid-run: the flow waits, reports
// itself not ready meanwhile, resumes by itself, and every message is
// answered.
func TestNATSWaitsForTheBrokerAndSurvivesItsRestart(t *testing.T) {
	b := newPrivateNATS(t)
	in, out := uniqueSubject("rc.in"), uniqueSubject("rc.out")
	h := &component.Health{}
	g := reconnectFlow(t, b.url(), in, out, Reconnect{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond}, h)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("flow did not stop")
		}
	}()
	waitFor(t, "not ready while the broker is down", func() bool { return errors.Is(h.Err(), component.ErrNotReady) })

	b.start()
	publishEvents(t, b.url(), in, correlated(0, 100))
	got := readSubject(t, b.url(), out, 100, 20*time.Second)
	waitFor(t, "ready once connected", func() bool { return h.Err() == nil })

	b.stop()
	waitFor(t, "not ready while the broker is away", func() bool { return h.Err() != nil })
	b.start()
	publishEvents(t, b.url(), in, correlated(100, 200))
	got = readSubject(t, b.url(), out, 200, 30*time.Second)
	seen := map[int64]bool{}
	for _, ev := range got {
		seen[gjson.GetBytes(ev.Meta, "correlation").Int()] = true
	}
	for i := int64(0); i < 200; i++ {
		if !seen[i] {
			t.Fatalf("correlation %d never answered (%d answers, %d distinct)", i, len(got), len(seen))
		}
	}
	waitFor(t, "ready after the broker came back", func() bool { return h.Err() == nil })
}

// TestNATSFailFastFailsTheFlowWhenTheBrokerGoes checks fail_fast: a
// lost broker ends the flow with an error instead of a wait.
func TestNATSFailFastFailsTheFlowWhenTheBrokerGoes(t *testing.T) {
	b := newPrivateNATS(t)
	b.start()
	g := reconnectFlow(t, b.url(), uniqueSubject("ff.in"), uniqueSubject("ff.out"), Reconnect{FailFast: true}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	time.Sleep(100 * time.Millisecond)
	b.stop()
	select {
	case err := <-done:
		if !errors.Is(err, ErrDisconnected) {
			t.Errorf("Run = %v, want ErrDisconnected", err)
		}
	case <-ctx.Done():
		t.Fatal("the flow kept running after its fail_fast broker went away")
	}
}
