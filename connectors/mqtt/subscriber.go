package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
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
		// order acks must follow); handle only queues, so never blocks.
		SetOrderMatters(true).
		// Messages of the session the broker sends before the
		// subscription is renewed have no route: they reach the default
		// handler, which every message of this client goes to.
		SetDefaultPublishHandler(c.handle).
		SetConnectionLostHandler(c.lost)
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

// pending is a message of a connection waiting to be handed to the Source.
type pending struct {
	seq        uint64       // order of arrival on the connection
	pm         paho.Message // the MQTT message, acked through the connection
	msg        *message.Message
	deliveries int
}

// conn is one connection of the subscriber. The client's router goroutine
// queues the messages (handle); the forwarder goroutine hands them to out,
// one watcher goroutine per message waits for its settlement, and the
// acker goroutine sends the acks in the order the messages arrived.
type conn struct {
	logger *slog.Logger
	name   string
	dec    decoder
	client paho.Client
	out    chan *message.Message
	// slots holds a token for each message handed over and not yet
	// settled: at most SourceOptions.MaxInflight.
	slots chan struct{}

	ctx    context.Context // ends when the connection is lost or released
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	queue []pending
	seq   uint64
	wake  chan struct{}

	ackMu   sync.Mutex
	settled map[uint64]paho.Message // done, waiting for the earlier ones
	nextAck uint64                  // every message before it is acked
	ackWake chan struct{}

	ackerDone   chan struct{}
	releaseOnce sync.Once
}

func newConn(logger *slog.Logger, name string, dec decoder, maxInflight int) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{
		logger: logger, name: name, dec: dec,
		slots: make(chan struct{}, maxInflight),
		out:   make(chan *message.Message),
		ctx:   ctx, cancel: cancel,
		wake:      make(chan struct{}, 1),
		settled:   map[uint64]paho.Message{},
		ackWake:   make(chan struct{}, 1),
		ackerDone: make(chan struct{}),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// handle queues a received message. It runs on the client's router
// goroutine, in arrival order, and never blocks.
func (c *conn) handle(_ paho.Client, pm paho.Message) {
	msg := c.dec.decode(received{topic: pm.Topic(), payload: pm.Payload(), qos: pm.Qos(),
		retained: pm.Retained(), duplicate: pm.Duplicate()})
	c.mu.Lock()
	c.queue = append(c.queue, pending{seq: c.seq, pm: pm, msg: msg, deliveries: 1})
	c.seq++
	c.mu.Unlock()
	signal(c.wake)
}

// lost ends the connection's message channel: the reconnecting subscriber
// then releases it and dials again.
func (c *conn) lost(_ paho.Client, err error) {
	c.logger.Warn("mqtt connection lost", "node", c.name, "error", err)
	c.cancel()
}

func (c *conn) start() {
	c.wg.Add(1)
	go c.forward()
	go c.acker()
}

// forward hands queued messages to out, in arrival order (a message
// handed over again after a nack goes to the end), until the connection
// ends; then it closes out.
func (c *conn) forward() {
	defer c.wg.Done()
	defer close(c.out)
	for {
		// Wait for a slot: the broker may send more than its window
		// (mosquitto 2.0 does, for a session's queued messages), but no
		// more than MaxInflight messages are processed and unsettled.
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
		c.mu.Lock()
		var p pending
		ok := len(c.queue) > 0
		if ok {
			p = c.queue[0]
			c.queue[0] = pending{}
			c.queue = c.queue[1:]
		}
		c.mu.Unlock()
		if !ok {
			<-c.slots
			select {
			case <-c.wake:
				continue
			case <-c.ctx.Done():
				return
			}
		}
		p.msg.Metadata.Set(bus.DeliveredKey, strconv.Itoa(p.deliveries))
		c.wg.Add(1)
		go c.watch(p)
		select {
		case c.out <- p.msg:
		case <-c.ctx.Done():
			return
		}
	}
}

// watch settles p once the Source acks or nacks it: an ack is queued for
// the acker; a nack hands the message over again (MQTT has no nack: the
// broker would resend it only after a reconnect), unless the connection
// has ended, in which case the broker resends it on the next session.
func (c *conn) watch(p pending) {
	defer c.wg.Done()
	select {
	case <-p.msg.Acked():
		<-c.slots
		c.ackMu.Lock()
		c.settled[p.seq] = p.pm
		c.ackMu.Unlock()
		signal(c.ackWake)
	case <-p.msg.Nacked():
		<-c.slots
		if c.ctx.Err() != nil {
			return
		}
		again := message.NewMessage(p.msg.UUID, p.msg.Payload)
		for k, v := range p.msg.Metadata {
			again.Metadata.Set(k, v)
		}
		p.msg, p.deliveries = again, p.deliveries+1
		c.mu.Lock()
		c.queue = append(c.queue, p)
		c.mu.Unlock()
		signal(c.wake)
	case <-c.ctx.Done():
		// An ack made just before the connection ended still counts:
		// release sends it.
		select {
		case <-p.msg.Acked():
			c.ackMu.Lock()
			c.settled[p.seq] = p.pm
			c.ackMu.Unlock()
		default:
		}
	}
}

// acker sends the acks of settled messages in arrival order (MQTT 3.1.1
// §4.6) until the connection ends; release sends the last ones.
func (c *conn) acker() {
	defer close(c.ackerDone)
	for {
		select {
		case <-c.ackWake:
			c.flushAcks()
		case <-c.ctx.Done():
			return
		}
	}
}

// flushAcks acks the settled messages that no earlier unsettled one holds
// back. One goroutine at a time calls it: the acker, then release.
func (c *conn) flushAcks() {
	c.ackMu.Lock()
	var ready []paho.Message
	for {
		pm, ok := c.settled[c.nextAck]
		if !ok {
			break
		}
		delete(c.settled, c.nextAck)
		c.nextAck++
		ready = append(ready, pm)
	}
	c.ackMu.Unlock()
	for _, pm := range ready {
		pm.Ack()
	}
}

// release ends the connection: the acks that are ready are sent, then the
// client disconnects. Messages not acked stay with the broker's session.
func (c *conn) release() error {
	c.releaseOnce.Do(func() {
		c.cancel()
		c.wg.Wait() // the forwarder and the watchers
		<-c.ackerDone
		c.flushAcks()
		if c.client != nil {
			c.client.Disconnect(disconnectQuiesce)
		}
	})
	return nil
}
