package mqtt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/flowrun/flowrun/connectors/bus"
)

// errClosed reports a publish on a closed publisher.
var errClosed = errors.New("publisher closed")

// publisher is a watermill message.Publisher on one MQTT client, connected
// on first use and again after a failure. Publish returns once the broker
// has acknowledged every message (PUBACK for QoS 1, PUBCOMP for QoS 2; for
// QoS 0, once it is written).
type publisher struct {
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
	client paho.Client
	closed bool
}

// connect connects p's client if it is not connected. p.mu is held.
func (p *publisher) connect(ctx context.Context) error {
	if p.closed {
		return bus.Permanent(errClosed)
	}
	if p.client != nil && p.client.IsConnectionOpen() {
		return nil
	}
	p.drop()
	// A clean session: a publish whose acknowledgement is lost fails and
	// is published again by the sink's retry (at least once).
	client := paho.NewClient(clientOptions(p.opts, p.clientID).SetCleanSession(true))
	if err := wait(ctx, client.Connect(), p.opts.ConnectTimeout, "connect"); err != nil {
		client.Disconnect(0)
		return fmt.Errorf("%w at %s: %w", bus.ErrConnect, p.opts.URL, err)
	}
	p.client = client
	return nil
}

// drop closes the client after a failure, so the next publish connects
// again. p.mu is held.
func (p *publisher) drop() {
	if p.client != nil {
		p.client.Disconnect(0)
		p.client = nil
	}
}

// Publish implements message.Publisher.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
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
		tok := p.client.Publish(topic, p.qos, p.retain, encode(m, p.codec))
		if err := wait(ctx, tok, p.timeout, "publish"); err != nil {
			p.drop()
			return fmt.Errorf("%w: %w", bus.ErrPublish, err)
		}
	}
	return nil
}

// maxUnacked bounds the messages PublishBatch sends before awaiting their
// acknowledgements (each holds one of the client's 65,535 packet ids).
const maxUnacked = 1024

// PublishBatch implements bus.BatchPublisher: the messages are sent, in
// order, before the broker's acknowledgements are awaited (QoS 1 and 2),
// maxUnacked at a time, so a slice of events costs about one round trip
// instead of one per event.
func (p *publisher) PublishBatch(topic string, msgs []*message.Message) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx := context.Background()
	if err := p.connect(ctx); err != nil {
		return 0, err
	}
	done := 0
	toks := make([]paho.Token, 0, min(len(msgs), maxUnacked))
	for done < len(msgs) {
		toks = toks[:0]
		for _, m := range msgs[done:min(len(msgs), done+maxUnacked)] {
			if p.deadLetters {
				m = keepSource(m)
			}
			toks = append(toks, p.client.Publish(topic, p.qos, p.retain, encode(m, p.codec)))
		}
		for _, tok := range toks {
			if err := wait(ctx, tok, p.timeout, "publish"); err != nil {
				p.drop()
				return done, fmt.Errorf("%w: %w", bus.ErrPublish, err)
			}
			done++
		}
	}
	return done, nil
}

// Close disconnects, letting publishes in progress finish.
func (p *publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		p.client.Disconnect(disconnectQuiesce)
		p.client = nil
	}
	p.closed = true
	return nil
}

// keepSource returns m with its MetaKey metadata renamed SourceMetaKey.
func keepSource(m *message.Message) *message.Message {
	info := m.Metadata.Get(MetaKey)
	if info == "" {
		return m
	}
	c := message.NewMessage(m.UUID, m.Payload)
	for k, v := range m.Metadata {
		c.Metadata.Set(k, v)
	}
	delete(c.Metadata, MetaKey)
	c.Metadata.Set(SourceMetaKey, info)
	keys := strings.Split(c.Metadata.Get(bus.JSONKeysKey), ",")
	for i, k := range keys {
		if k == MetaKey {
			keys[i] = SourceMetaKey
		}
	}
	c.Metadata.Set(bus.JSONKeysKey, strings.Join(keys, ","))
	return c
}
