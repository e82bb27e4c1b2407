package mqtt

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/flowrun/flowrun/connectors/bus"
)

// refusingClient is a publishClient answering with codes in turn, then
// success; like paho, a refusing PUBACK comes with an error too.
type refusingClient struct {
	codes []byte
	calls int
}

func (c *refusingClient) Publish(context.Context, *paho5.Publish) (*paho5.PublishResponse, error) {
	c.calls++
	if c.calls > len(c.codes) {
		return &paho5.PublishResponse{ReasonCode: 0}, nil
	}
	code := c.codes[c.calls-1]
	return &paho5.PublishResponse{ReasonCode: code, Properties: &paho5.PublishResponseProperties{ReasonString: "said the broker"}},
		errors.New("error publishing")
}

// TestRefusalsRetriedOrFailed drives publisher5.publish with a fake client:
// a transient refusal (quota, busy) is sent again after an exponential
// backoff until accepted or publish_timeout is spent; a permanent one
// (not authorized, topic invalid, unspecified, ...) fails at once, marked
// bus.Permanent, naming the reason code.
func TestRefusalsRetriedOrFailed(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name      string
		codes     []byte
		timeout   time.Duration
		calls     int
		waits     []time.Duration // the backoff bounds drawn, before jitter
		permanent bool
		refused   bool
		want      string
	}{
		{name: "accepted", calls: 1, timeout: time.Second},
		{name: "quota exceeded then accepted", codes: []byte{0x97, 0x97, 0x89}, calls: 4, timeout: time.Minute,
			waits: []time.Duration{ms, 2 * ms, 4 * ms}},
		{name: "busy past publish_timeout", codes: []byte{0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89},
			timeout: 20 * ms, refused: true, want: "reason code 0x89 Server busy (transient): said the broker"},
		{name: "not authorized", codes: []byte{0x87}, calls: 1, timeout: time.Minute, permanent: true, refused: true,
			want: "reason code 0x87 Not authorized (permanent): said the broker"},
		{name: "topic name invalid", codes: []byte{0x90}, calls: 1, timeout: time.Minute, permanent: true, refused: true,
			want: "0x90 Topic Name invalid"},
		{name: "payload format invalid", codes: []byte{0x99}, calls: 1, timeout: time.Minute, permanent: true, refused: true,
			want: "0x99 Payload format invalid"},
		{name: "packet too large", codes: []byte{0x95}, calls: 1, timeout: time.Minute, permanent: true, refused: true,
			want: "0x95 Packet too large"},
		{name: "unspecified", codes: []byte{0x80}, calls: 1, timeout: time.Minute, permanent: true, refused: true,
			want: "0x80 Unspecified error"},
		{name: "implementation specific (mosquitto's message_size_limit)", codes: []byte{0x83}, calls: 1, timeout: time.Minute,
			permanent: true, refused: true, want: "0x83 Implementation specific error"},
		{name: "unknown code", codes: []byte{0xF0}, calls: 1, timeout: time.Minute, permanent: true, refused: true,
			want: "0xf0 unknown reason code"},
		{name: "quota then permanent", codes: []byte{0x97, 0x87}, calls: 2, timeout: time.Minute, permanent: true, refused: true,
			waits: []time.Duration{ms}, want: "0x87 Not authorized"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var waits []time.Duration
			p := &publisher5{timeout: tt.timeout, logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				retry: bus.Reconnect{Initial: ms, Max: time.Second, Jitter: func(d time.Duration) time.Duration {
					waits = append(waits, d)
					return d
				}}}
			c := &refusingClient{codes: tt.codes}
			err := p.publish(context.Background(), c, &paho5.Publish{Topic: "t", QoS: 1})
			if !tt.refused {
				if err != nil {
					t.Fatalf("publish: %v", err)
				}
			} else {
				if err == nil {
					t.Fatal("publish: no error")
				}
				var re *RefusedError
				if !errors.Is(err, ErrPublishRefused) || !errors.As(err, &re) {
					t.Fatalf("error %v is not a RefusedError", err)
				}
				if got := errors.Is(err, bus.ErrPermanent); got != tt.permanent {
					t.Fatalf("permanent %v, want %v: %v", got, tt.permanent, err)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("error %q does not contain %q", err, tt.want)
				}
			}
			if tt.calls > 0 && c.calls != tt.calls {
				t.Fatalf("%d attempts, want %d", c.calls, tt.calls)
			}
			if tt.waits != nil && !equalDurations(waits, tt.waits) {
				t.Fatalf("backoff bounds %v, want %v", waits, tt.waits)
			}
			if tt.name == "busy past publish_timeout" {
				if c.calls < 2 || c.calls >= len(tt.codes) {
					t.Fatalf("%d attempts in 20ms with a backoff from 1ms: want a few, bounded by publish_timeout", c.calls)
				}
				for i := 1; i < len(waits); i++ {
					if waits[i] != 2*waits[i-1] {
						t.Fatalf("backoff bounds %v do not double", waits)
					}
				}
			}
		})
	}
}

// TestRefusalKeepsTheFlowStoppable checks that a publish retrying a
// transient refusal ends with its context.
func TestRefusalKeepsTheFlowStoppable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p := &publisher5{timeout: time.Hour, retry: bus.Reconnect{Initial: time.Second,
		Jitter: func(d time.Duration) time.Duration { return d }}, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	err := p.publish(ctx, &refusingClient{codes: []byte{0x97, 0x97}}, &paho5.Publish{Topic: "t", QoS: 1})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrPublishRefused) {
		t.Fatalf("publish: %v, want the context's error and the refusal", err)
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
