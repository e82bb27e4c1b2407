package mqtt

import (
	"context"
	"fmt"
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
		if err := p.publish(ctx, pub); err != nil {
			p.drop()
			return fmt.Errorf("%w: %w", bus.ErrPublish, err)
		}
	}
	return nil
}

// publish sends pub and waits for its acknowledgement.
func (p *publisher5) publish(ctx context.Context, pub *paho5.Publish) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := p.client.Publish(ctx, pub)
	if err != nil {
		return err
	}
	// paho returns a refusing PUBREC (QoS 2) without an error.
	if resp != nil && resp.ReasonCode >= 0x80 {
		reason := ""
		if resp.Properties != nil {
			reason = resp.Properties.ReasonString
		}
		return fmt.Errorf("refused by the broker (reason code %#x) %s", resp.ReasonCode, reason)
	}
	return nil
}

// Close disconnects.
func (p *publisher5) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop()
	p.closed = true
	return nil
}
