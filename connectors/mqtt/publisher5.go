package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/flowrun/flowrun/connectors/bus"
)

// publisher5 is a watermill message.Publisher on one MQTT 5 client,
// connected on first use and again after a failure. Publish returns once
// the broker has acknowledged every message with a success reason code
// (PUBACK for QoS 1, PUBREC and PUBCOMP for QoS 2; for QoS 0, once it is
// written). With CodecJSON a message's metadata goes in user properties
// (UserProperties).
//
// A publish the broker refuses (reason code 0x80 or more, RefusedError)
// keeps the connection. A transient refusal (0x97 Quota exceeded, 0x89
// Server busy, ...) is sent again on it after retry's backoff (exponential,
// full jitter: reconnect_initial, reconnect_max) for at most timeout in
// all (publish_timeout), then fails as a transient error, which a sink
// with Reconnect retries again; any other refusal fails at once, marked
// bus.Permanent, so the event goes to "err" without a retry.
type publisher5 struct {
	opts     Options
	clientID string
	qos      byte
	retain   bool
	codec    string
	timeout  time.Duration
	// deadLetters marks the dead-letter publisher: the MQTT fields of the
	// failed message are kept as SourceMetaKey.
	deadLetters bool
	// retry paces the attempts after a transient refusal. Its defaults are
	// filled in on first use.
	retry bus.Reconnect
	// logger receives the retried refusals. Default slog.Default().
	logger *slog.Logger

	mu     sync.Mutex
	client *paho5.Client
	closed bool
}

// connect connects p's client if it is not connected. p.mu is held.
func (p *publisher5) connect(ctx context.Context) error {
	if p.closed {
		return bus.Permanent(errClosed)
	}
	if p.client != nil && !closed(p.client) {
		return nil
	}
	p.drop()
	// A clean session that ends with the connection: a publish whose
	// acknowledgement is lost fails and is published again by the sink's
	// retry (at least once).
	client, _, err := client5{opts: p.opts, clientID: p.clientID, cleanStart: true, packetTimeout: p.timeout}.connect(ctx)
	if err != nil {
		return fmt.Errorf("%w at %s: %w", bus.ErrConnect, p.opts.URL, err)
	}
	p.client = client
	return nil
}

// drop closes the client after a failure, so the next publish connects
// again. p.mu is held.
func (p *publisher5) drop() {
	if p.client != nil {
		disconnect5(p.client)
		p.client = nil
	}
}

// Publish implements message.Publisher.
func (p *publisher5) Publish(topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx := context.Background()
	if err := p.connect(ctx); err != nil {
		return err
	}
	for _, m := range msgs {
		if p.deadLetters {
			m = keepSource(m)
		}
		pub := &paho5.Publish{QoS: p.qos, Retain: p.retain, Topic: topic, Payload: encode(m, p.codec)}
		if p.codec == CodecJSON {
			pub.Properties = &paho5.PublishProperties{User: UserProperties(m)}
		}
		if err := p.publish(ctx, p.client, pub); err != nil {
			if !errors.Is(err, ErrPublishRefused) {
				p.drop() // the connection is in doubt; a refusal leaves it sound
			}
			return fmt.Errorf("%w: %w", bus.ErrPublish, err)
		}
	}
	return nil
}

// publishClient is what publish needs of a connected client: paho's
// Publish, which waits for the acknowledgement of QoS 1 and 2 and returns
// a refusing PUBACK with an error, a refusing PUBREC without one.
type publishClient interface {
	Publish(ctx context.Context, p *paho5.Publish) (*paho5.PublishResponse, error)
}

// publish sends pub with c and waits for its acknowledgement, each attempt
// for at most p.timeout. A transient refusal is sent again after
// p.retry's backoff while the attempts and waits fit in p.timeout; then
// the last RefusedError is returned (not Permanent). A permanent refusal
// returns its RefusedError marked bus.Permanent at once.
func (p *publisher5) publish(ctx context.Context, c publishClient, pub *paho5.Publish) error {
	p.retry.EnsureDefaults()
	if p.logger == nil {
		p.logger = slog.Default()
	}
	start := time.Now()
	for n := 0; ; n++ {
		actx, cancel := context.WithTimeout(ctx, p.timeout)
		resp, err := c.Publish(actx, pub)
		cancel()
		if resp == nil || resp.ReasonCode < 0x80 {
			return err
		}
		refused := &RefusedError{Code: resp.ReasonCode}
		if resp.Properties != nil {
			refused.Reason = resp.Properties.ReasonString
		}
		if !refused.Transient() {
			return bus.Permanent(refused)
		}
		wait := p.retry.Backoff(n)
		if elapsed := time.Since(start); elapsed+wait >= p.timeout {
			return fmt.Errorf("%w; %d attempts in %s (publish_timeout %s)", refused, n+1, elapsed.Round(time.Millisecond), p.timeout)
		}
		p.logger.Warn("publish refused by the broker, retrying", "topic", pub.Topic, "reason_code", fmt.Sprintf("%#02x", refused.Code),
			"reason", ReasonName(refused.Code), "attempt", n+1, "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), refused)
		case <-t.C:
		}
	}
}

// Close disconnects.
func (p *publisher5) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop()
	p.closed = true
	return nil
}
