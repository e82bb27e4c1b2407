package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/flowrun/flowrun/connectors/bus"
)

// clientOptions returns the paho options common to every client of o.
func clientOptions(o Options, clientID string) *paho.ClientOptions {
	co := paho.NewClientOptions().
		AddBroker(o.URL).
		SetClientID(clientID).
		SetConnectTimeout(o.ConnectTimeout).
		SetKeepAlive(o.KeepAlive).
		SetPingTimeout(min(o.KeepAlive, 10*time.Second)).
		SetWriteTimeout(o.ConnectTimeout).
		// Reconnecting is bus.Reconnect's job: a lost connection ends
		// its message channel (source) or fails the publish (sink).
		SetAutoReconnect(false).
		SetConnectRetry(false)
	if o.Username != "" {
		co.SetUsername(o.Username).SetPassword(o.Password)
	}
	if o.TLS != nil {
		co.SetTLSConfig(o.TLS)
	}
	return co
}

// wait waits for tok, at most timeout or until ctx ends.
func wait(ctx context.Context, tok paho.Token, timeout time.Duration, what string) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return fmt.Errorf("%s: no answer within %v", what, timeout)
	}
}

// subscriber dials connections for a bus.ReconnectingSubscriber.
type subscriber struct {
	opts SourceOptions
}

// dial implements bus.Dial: it connects with a persistent session,
// subscribes to topic and returns the connection's messages.
func (s *subscriber) dial(ctx context.Context, topic string) (<-chan *message.Message, func() error, error) {
	o := s.opts
	c := newConn(o.Logger, o.Source.Name, decoder{codec: o.Codec, idFrom: o.IDFrom}, o.MaxInflight)
	co := clientOptions(o.Options, o.ClientID).
		SetCleanSession(false).
		SetAutoAckDisabled(true).
		// Handlers run one at a time in the order messages arrive (the
		// order acks must follow) on paho's router goroutine; handle only
		// queues, so never blocks.
		SetOrderMatters(true).
		// Messages of the session the broker sends before the
		// subscription is renewed have no route: they reach the default
		// handler, which every message of this client goes to.
		SetDefaultPublishHandler(c.handle).
		SetConnectionLostHandler(c.lost).
		// The connection writes its PUBACKs itself (see acks.go).
		SetCustomOpenConnectionFn(openConn(&c.net)).
		SetStore(ackStore{paho.NewMemoryStore()})
	client := paho.NewClient(co)
	c.client = client
	if err := wait(ctx, client.Connect(), o.ConnectTimeout, "connect"); err != nil {
		client.Disconnect(0)
		return nil, nil, fmt.Errorf("%w at %s: %w", bus.ErrConnect, o.URL, err)
	}
	tok := client.Subscribe(topic, o.QoS, nil)
	if err := wait(ctx, tok, o.ConnectTimeout, "subscribe"); err != nil {
		client.Disconnect(0)
		return nil, nil, fmt.Errorf("%w to %q at %s: %w", bus.ErrSubscribe, topic, o.URL, err)
	}
	if st, ok := tok.(*paho.SubscribeToken); ok {
		if granted, ok := st.Result()[topic]; ok && granted > 2 {
			client.Disconnect(0)
			return nil, nil, fmt.Errorf("%w: %q (code %#x)", ErrRefused, topic, granted)
		}
	}
	c.start()
	return c.out, c.release, nil
}

// conn is one MQTT 3.1.1 connection of the subscriber: an intake (see
// there) whose acks the connection's acker goroutine sends, in order, so
// that the intake's settler, which queues them, never waits for the
// network: the PUBACKs of a run in one write on the connection (see
// acks.go), a PUBREC (QoS 2) through paho (Message.Ack).
type conn struct {
	*intake[paho.Message]
	dec    decoder
	client paho.Client
	net    *ackConn // set by paho's connect, before start
	ackBuf []byte   // the acker's

	ackMu     sync.Mutex
	toAck     []paho.Message // ready, in order, not yet sent
	ackWake   chan struct{}
	ackerDone chan struct{}

	releaseOnce sync.Once
}

func newConn(logger *slog.Logger, name string, dec decoder, maxInflight int) *conn {
	c := &conn{dec: dec, ackWake: make(chan struct{}, 1), ackerDone: make(chan struct{})}
	c.intake = newIntake(logger, name, maxInflight, c.queueAcks)
	return c
}

// queueAcks queues the acks of pms for the acker.
func (c *conn) queueAcks(pms []paho.Message) {
	c.ackMu.Lock()
	c.toAck = append(c.toAck, pms...)
	c.ackMu.Unlock()
	signal(c.ackWake)
}

func (c *conn) start() {
	c.intake.start()
	go c.acker()
}

// acker sends the queued acks until the connection ends; release sends
// the last ones.
func (c *conn) acker() {
	defer close(c.ackerDone)
	for {
		select {
		case <-c.ackWake:
			c.sendAcks()
		case <-c.ctx.Done():
			return
		}
	}
}

// sendAcks sends the queued acks. One goroutine at a time calls it: the
// acker, then release.
func (c *conn) sendAcks() {
	c.ackMu.Lock()
	pms := c.toAck
	c.toAck = nil
	c.ackMu.Unlock()
	buf := slices.Grow(c.ackBuf[:0], pubackLen*len(pms))
	for _, pm := range pms {
		if pm.Qos() == 1 && c.net != nil {
			buf = appendPuback(buf, pm.MessageID())
			continue
		}
		pm.Ack()
	}
	if len(buf) > 0 {
		// An error is the connection's end, which paho reports (lost):
		// the broker resends the messages whose acks are lost with it.
		_, _ = c.net.Write(buf)
	}
	c.ackBuf = buf[:0]
}

// handle queues a received message. It runs on the client's router
// goroutine, in arrival order, and never blocks.
func (c *conn) handle(_ paho.Client, pm paho.Message) {
	msg := c.dec.decode(received{topic: pm.Topic(), payload: pm.Payload(), qos: pm.Qos(),
		retained: pm.Retained(), duplicate: pm.Duplicate()})
	c.push(pm, msg, true)
}

// lost ends the connection's message channel: the reconnecting subscriber
// then releases it and dials again.
func (c *conn) lost(_ paho.Client, err error) {
	c.logger.Warn("mqtt connection lost", "node", c.name, "error", err)
	c.cancel()
}

// release ends the connection: the acks that are ready are sent, then the
// client disconnects. Messages not acked stay with the broker's session.
func (c *conn) release() error {
	c.releaseOnce.Do(func() {
		c.stop() // the settler has queued the acks that are ready
		<-c.ackerDone
		c.sendAcks()
		if c.client != nil {
			c.client.Disconnect(disconnectQuiesce)
		}
	})
	return nil
}
