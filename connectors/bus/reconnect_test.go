package bus

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// noJitter makes Backoff's waits the upper bounds themselves.
func noJitter(d time.Duration) time.Duration { return d }

var quiet = slog.New(slog.DiscardHandler)

func TestReconnectBackoffDoublesUpToMax(t *testing.T) {
	r := Reconnect{Initial: 10 * time.Millisecond, Max: 70 * time.Millisecond, Jitter: noJitter}
	r.EnsureDefaults()
	want := []time.Duration{10, 20, 40, 70, 70, 70}
	for n, w := range want {
		if got := r.Backoff(n); got != w*time.Millisecond {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, w*time.Millisecond)
		}
	}
	// Full jitter draws from [0, bound].
	r.Jitter = func(d time.Duration) time.Duration { return d / 2 }
	if got := r.Backoff(1); got != 10*time.Millisecond {
		t.Errorf("jittered Backoff(1) = %v, want 10ms", got)
	}
}

func TestReconnectRetry(t *testing.T) {
	down := errors.New("connection refused")
	tests := []struct {
		name      string
		failFast  bool
		failures  int   // try fails this many times, then succeeds
		failWith  error // what it fails with
		wantTries int
		wantErr   error // nil: success
	}{
		{name: "retries until connected", failures: 3, failWith: down, wantTries: 4},
		{name: "connected at once", failures: 0, wantTries: 1},
		{name: "fail fast", failFast: true, failures: 3, failWith: down, wantTries: 1, wantErr: ErrDisconnected},
		{name: "permanent not retried", failures: 3, failWith: Permanent(down), wantTries: 1, wantErr: ErrPermanent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &component.Health{}
			r := Reconnect{Initial: time.Millisecond, Max: 2 * time.Millisecond, FailFast: tc.failFast}
			tries := 0
			var notReadyWhileFailing bool
			err := r.Retry(context.Background(), "src", h, quiet, func(context.Context) error {
				tries++
				if tries > 1 && errors.Is(h.Err(), component.ErrNotReady) {
					notReadyWhileFailing = true
				}
				if tries <= tc.failures {
					return tc.failWith
				}
				return nil
			})
			if tries != tc.wantTries {
				t.Errorf("tries = %d, want %d", tries, tc.wantTries)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Retry: %v", err)
				}
				if h.Err() != nil {
					t.Errorf("health after success: %v", h.Err())
				}
				if tc.failures > 0 && !notReadyWhileFailing {
					t.Error("health said ready while the broker was unreachable")
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !errors.Is(err, down) {
				t.Errorf("Retry = %v, want %v wrapping %v", err, tc.wantErr, down)
			}
		})
	}
}

func TestReconnectRetryStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := Reconnect{Initial: time.Hour, Max: time.Hour}
	done := make(chan error, 1)
	go func() {
		done <- r.Retry(ctx, "src", nil, quiet, func(context.Context) error { return errors.New("down") })
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Retry = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Retry kept waiting after its context ended")
	}
}

// fakeBroker is a Dial whose connections the test opens, feeds and drops.
type fakeBroker struct {
	mu       sync.Mutex
	down     bool
	dials    int
	conns    []chan *message.Message
	released int
	dialed   chan struct{} // receives after each successful dial
}

func newFakeBroker() *fakeBroker { return &fakeBroker{dialed: make(chan struct{}, 16)} }

func (b *fakeBroker) dial(context.Context, string) (<-chan *message.Message, func() error, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dials++
	if b.down {
		return nil, nil, errors.New("connection refused")
	}
	ch := make(chan *message.Message)
	b.conns = append(b.conns, ch)
	b.dialed <- struct{}{}
	var once sync.Once
	return ch, func() error {
		once.Do(func() {
			b.mu.Lock()
			b.released++
			b.mu.Unlock()
		})
		return nil
	}, nil
}

func (b *fakeBroker) setDown(down bool) {
	b.mu.Lock()
	b.down = down
	b.mu.Unlock()
}

// drop loses the newest connection.
func (b *fakeBroker) drop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.conns[len(b.conns)-1])
}

func (b *fakeBroker) conn() chan *message.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conns[len(b.conns)-1]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func recv(t *testing.T, ch <-chan *message.Message) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("subscription closed")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
		return nil
	}
}

func TestReconnectingSubscriberResumesAfterTheBrokerReturns(t *testing.T) {
	b := newFakeBroker()
	b.setDown(true)
	h := &component.Health{}
	s := NewReconnectingSubscriber("src", b.dial, Reconnect{Initial: time.Millisecond, Max: 5 * time.Millisecond}, h, quiet)
	out, err := s.Subscribe(context.Background(), "t")
	if err != nil {
		t.Fatalf("Subscribe with the broker down and no fail_fast: %v", err)
	}
	waitFor(t, "a failed dial to mark the source not ready", func() bool { return h.Err() != nil })
	if !errors.Is(h.Err(), component.ErrNotReady) {
		t.Errorf("health = %v", h.Err())
	}
	b.setDown(false)
	<-b.dialed
	go func() { b.conn() <- msg("1", `1`) }()
	if m := recv(t, out); m.UUID != "1" {
		t.Errorf("got %s", m.UUID)
	}
	waitFor(t, "ready once connected", func() bool { return h.Err() == nil })

	// The connection is lost: not ready, then connected again and
	// messages flow from the new connection.
	b.setDown(true)
	b.drop()
	waitFor(t, "not ready after the connection is lost", func() bool { return h.Err() != nil })
	b.setDown(false)
	<-b.dialed
	go func() { b.conn() <- msg("2", `2`) }()
	if m := recv(t, out); m.UUID != "2" {
		t.Errorf("got %s", m.UUID)
	}
	waitFor(t, "ready after reconnecting", func() bool { return h.Err() == nil })

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-out; ok {
		t.Error("subscription still open after Close")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.released != 2 {
		t.Errorf("%d connections released, want 2", b.released)
	}
	if s.Err() != nil {
		t.Errorf("Err = %v after a normal Close", s.Err())
	}
}

func TestReconnectingSubscriberFailFast(t *testing.T) {
	b := newFakeBroker()
	b.setDown(true)
	h := &component.Health{}
	r := Reconnect{Initial: time.Millisecond, FailFast: true}
	s := NewReconnectingSubscriber("src", b.dial, r, h, quiet)
	if _, err := s.Subscribe(context.Background(), "t"); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Subscribe with the broker down: %v, want ErrDisconnected", err)
	}
	if h.Err() == nil {
		t.Error("ready while the broker is down")
	}

	b.setDown(false)
	s = NewReconnectingSubscriber("src", b.dial, r, h, quiet)
	out, err := s.Subscribe(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	b.drop()
	if _, ok := <-out; ok {
		t.Fatal("message after the connection was lost")
	}
	if !errors.Is(s.Err(), ErrDisconnected) {
		t.Errorf("Err = %v, want ErrDisconnected", s.Err())
	}
	b.mu.Lock()
	dials := b.dials
	b.mu.Unlock()
	if dials != 2 {
		t.Errorf("%d dials, want 2 (no reconnection under fail_fast)", dials)
	}
}

// A fail_fast source whose broker goes away fails the flow.
func TestSourceFailsWhenAFailFastSubscriptionIsLost(t *testing.T) {
	b := newFakeBroker()
	sub := NewReconnectingSubscriber("src", b.dial, Reconnect{FailFast: true}, nil, quiet)
	f := newFlow(t, sub, &recordingPub{}, false, SourceOptions{Name: "src", Topic: "t", Linger: time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.g.Run(ctx) }()
	m := msg("1", `{}`)
	b.conn() <- m
	if got := settled(t, m); got != "ack" {
		t.Fatalf("message %s", got)
	}
	b.drop()
	select {
	case err := <-done:
		if !errors.Is(err, ErrDisconnected) {
			t.Errorf("Run = %v, want ErrDisconnected", err)
		}
	case <-ctx.Done():
		t.Fatal("flow kept running after its fail_fast source lost the broker")
	}
}

// flakyPub fails its first n publishes.
type flakyPub struct {
	mu        sync.Mutex
	n         int
	published int
	err       error
	health    *component.Health
	sawDown   bool
}

func (p *flakyPub) Publish(string, ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.health != nil && p.health.Err() != nil {
		p.sawDown = true
	}
	if p.n > 0 {
		p.n--
		return p.err
	}
	p.published++
	return nil
}
func (p *flakyPub) Close() error { return nil }

func TestSinkRetriesWhileTheBrokerIsAway(t *testing.T) {
	tests := []struct {
		name          string
		reconnect     *Reconnect
		err           error
		wantPublished int
		wantErrEvents int
	}{
		{name: "retried until published", reconnect: &Reconnect{Initial: time.Millisecond, Max: time.Millisecond},
			err: errors.New("broker down"), wantPublished: 2},
		{name: "permanent failure not retried", reconnect: &Reconnect{Initial: time.Millisecond},
			err: Permanent(errors.New("message too large")), wantPublished: 0, wantErrEvents: 2},
		{name: "fail fast", reconnect: &Reconnect{FailFast: true}, err: errors.New("broker down"), wantErrEvents: 2},
		{name: "no reconnect", err: errors.New("broker down"), wantErrEvents: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &component.Health{}
			pub := &flakyPub{n: 3, err: tc.err, health: h}
			s, err := NewSink(pub, SinkOptions{Name: "results", Topic: "out", Reconnect: tc.reconnect, Health: h, Logger: quiet})
			must(t, err)
			errEvents := 0
			emit := emitFunc(func(port string, _ pipeline.Event) {
				if port == pipeline.PortErr {
					errEvents++
				}
			})
			tr := pipeline.NewTracker(2, nil, nil)
			events := []pipeline.Event{tr.Track(0, pipeline.Event{Data: []byte(`1`)}), tr.Track(1, pipeline.Event{Data: []byte(`2`)})}
			must(t, s.Process(context.Background(), events, emit))
			if pub.published != tc.wantPublished || errEvents != tc.wantErrEvents {
				t.Errorf("published %d, err events %d; want %d, %d", pub.published, errEvents, tc.wantPublished, tc.wantErrEvents)
			}
			if tc.wantPublished > 0 && (!pub.sawDown || h.Err() != nil) {
				t.Errorf("health: not ready while retrying %v, after %v", pub.sawDown, h.Err())
			}
		})
	}
}

// TestReconnectingSubscriberWithBuffer: with WithBuffer(n) a connection's
// messages are handed on into the subscription's buffer without waiting
// for the reader to take each one; without it each waits for the reader.
func TestReconnectingSubscriberWithBuffer(t *testing.T) {
	b := newFakeBroker()
	s := NewReconnectingSubscriber("src", b.dial, Reconnect{Initial: time.Millisecond}, nil, quiet).WithBuffer(3)
	defer s.Close()
	out, err := s.Subscribe(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	<-b.dialed
	conn := b.conn()
	for i := range 3 {
		select {
		case conn <- message.NewMessage(string(rune('a'+i)), []byte(`{}`)):
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not taken while nothing reads the subscription", i)
		}
	}
	waitFor(t, "3 messages buffered", func() bool { return len(out) == 3 })
	for _, want := range []string{"a", "b", "c"} {
		if m := recv(t, out); m.UUID != want {
			t.Fatalf("message %s, want %s", m.UUID, want)
		}
	}
}
