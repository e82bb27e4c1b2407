package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"

	"github.com/flowrun/flowrun/connectors/bus"
)

// subscriber5 dials MQTT 5 connections for a bus.ReconnectingSubscriber.
//
// How paho.golang v0.23.0 is used: EnableManualAcknowledgment stops the
// client from acknowledging a message as soon as its handler returns. Its
// own ordered acknowledgement (Client.Ack marks a message, a ticker sends
// the acks of the leading marked ones) is not relied on: Connect clears
// its record of received messages after it has started reading, so the
// messages a session delivers right after CONNACK can be missing from it
// and could then never be acknowledged on that connection (seen under
// -race). The connection numbers the QoS 1 and 2 messages in arrival
// order itself and writes the ack of each, through the session state
// (session5.ackNow), once it and every message before it are done (MQTT 5
// §4.6). Client.Ack is still called, so that paho's record is emptied;
// the acks its ticker would send are dropped (session5.Ack). The client's
// session state (paho's in-memory State) keeps nothing for received QoS 1
// messages: the broker's session holds them until acknowledged and resends
// them on the next connection, to a new client.
type subscriber5 struct {
	opts SourceOptions
}

// dial implements bus.Dial: it connects with Clean Start false, the
// Session Expiry Interval opts.SessionExpiry and the Receive Maximum
// opts.MaxInflight, subscribes to topic and returns the connection's
// messages.
func (s *subscriber5) dial(ctx context.Context, topic string) (<-chan *message.Message, func() error, error) {
	o := s.opts
	c := newConn5(o.Logger, o.Source.Name, decoder{codec: o.Codec, idFrom: o.IDFrom}, o.MaxInflight)
	client, err := client5{opts: o.Options, clientID: o.ClientID, cleanStart: false, sessionExpiry: o.SessionExpiry,
		receiveMax: o.MaxInflight, packetTimeout: o.ConnectTimeout, onPublish: c.handle, session: c.session}.connect(ctx)
	if err != nil {
		_ = c.session.Close()
		return nil, nil, fmt.Errorf("%w at %s: %w", bus.ErrConnect, o.URL, err)
	}
	c.client = client
	sctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	sa, err := client.Subscribe(sctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: topic, QoS: o.QoS}}})
	if err == nil && (len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80) {
		err = fmt.Errorf("%w: %q (reason codes %x)", ErrRefused, topic, sa.Reasons)
	}
	if err != nil {
		disconnect5(client)
		_ = c.session.Close()
		return nil, nil, fmt.Errorf("%w to %q at %s: %w", bus.ErrSubscribe, topic, o.URL, err)
	}
	c.start()
	return c.out, c.release, nil
}

// session5 is paho's in-memory session state, the acknowledgements left
// to the connection (see subscriber5).
type session5 struct {
	*state.State
}

// Ack implements session.SessionManager: it drops the acks paho's ticker
// sends, conn5 sends them itself.
func (s *session5) Ack(*packets.Publish) error { return nil }

// ackNow acknowledges pb (PUBACK, or PUBREC for QoS 2) on the connection.
func (s *session5) ackNow(pb *paho5.Publish) error { return s.State.Ack(pb.Packet()) }

// pending5 is a message of a connection waiting to be handed to the Source.
type pending5 struct {
	seq        uint64 // order of arrival among the QoS 1 and 2 messages
	pb         *paho5.Publish
	msg        *message.Message
	deliveries int
}

// conn5 is one MQTT 5 connection of the subscriber. The client's router
// goroutine queues the messages (handle); the forwarder goroutine hands
// them to out, and one watcher goroutine per message waits for its
// settlement and marks it done (markDone, which writes the acks in arrival
// order, under ackMu).
type conn5 struct {
	logger  *slog.Logger
	name    string
	dec     decoder
	client  *paho5.Client
	session *session5
	out     chan *message.Message
	// slots holds a token for each message handed over and not yet
	// settled: at most SourceOptions.MaxInflight.
	slots chan struct{}
	// ackMu serialises the acks. done holds the messages done after an
	// earlier one still unsettled, by seq; every message before nextAck
	// is acknowledged.
	ackMu   sync.Mutex
	done    map[uint64]*paho5.Publish
	nextAck uint64

	ctx    context.Context // ends when the connection is lost or released
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	queue []pending5
	seq   uint64
	wake  chan struct{}

	releaseOnce sync.Once
}

func newConn5(logger *slog.Logger, name string, dec decoder, maxInflight int) *conn5 {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn5{
		logger: logger, name: name, dec: dec,
		done:    map[uint64]*paho5.Publish{},
		session: &session5{State: state.NewInMemory()},
		slots:   make(chan struct{}, maxInflight),
		out:     make(chan *message.Message),
		ctx:     ctx, cancel: cancel,
		wake: make(chan struct{}, 1),
	}
}

// handle queues a received message. It runs on the client's router
// goroutine, in arrival order, and never blocks.
func (c *conn5) handle(pr paho5.PublishReceived) (bool, error) {
	msg := c.dec.decode5(pr.Packet)
	c.mu.Lock()
	p := pending5{seq: c.seq, pb: pr.Packet, msg: msg, deliveries: 1}
	if pr.Packet.QoS > 0 {
		c.seq++ // these are acknowledged, in this order
	}
	c.queue = append(c.queue, p)
	c.mu.Unlock()
	signal(c.wake)
	return true, nil
}

func (c *conn5) start() {
	c.wg.Add(2)
	go c.forward()
	go func() {
		defer c.wg.Done()
		select {
		case <-c.client.Done():
			if c.ctx.Err() == nil {
				c.logger.Warn("mqtt connection lost", "node", c.name)
			}
			c.cancel()
		case <-c.ctx.Done():
		}
	}()
}

// forward hands queued messages to out, in arrival order (a message
// handed over again after a nack goes to the end), until the connection
// ends; then it closes out.
func (c *conn5) forward() {
	defer c.wg.Done()
	defer close(c.out)
	for {
		// Wait for a slot: no more than MaxInflight messages are
		// processed and unsettled, whatever the broker sends.
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
		c.mu.Lock()
		var p pending5
		ok := len(c.queue) > 0
		if ok {
			p = c.queue[0]
			c.queue[0] = pending5{}
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

// markDone marks p's message done and sends the acks it no longer holds
// back: its own once every message received before it is done, and those
// of the later done messages that waited for it.
func (c *conn5) markDone(p pending5) {
	if p.pb.QoS == 0 {
		return
	}
	_ = c.client.Ack(p.pb) // empties paho's record (see subscriber5)
	c.ackMu.Lock()
	defer c.ackMu.Unlock()
	c.done[p.seq] = p.pb
	for {
		pb, ok := c.done[c.nextAck]
		if !ok {
			return
		}
		delete(c.done, c.nextAck)
		c.nextAck++
		if err := c.session.ackNow(pb); err != nil {
			// The connection is lost: the broker resends the message.
			c.logger.Debug("mqtt ack not sent", "node", c.name, "error", err)
		}
	}
}

// watch settles p once the Source acks or nacks it: an ack marks it done;
// a nack hands the message over again (MQTT has no nack: the broker would
// resend it only on a new connection), unless the connection has ended,
// in which case the broker resends it on the next one.
func (c *conn5) watch(p pending5) {
	defer c.wg.Done()
	select {
	case <-p.msg.Acked():
		<-c.slots
		c.markDone(p)
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
		// An ack made just before the connection ended still counts,
		// when the connection is still there (release).
		select {
		case <-p.msg.Acked():
			c.markDone(p)
		default:
		}
	}
}

// release ends the connection: the acks that are ready are sent, then the
// client disconnects. Messages not acked stay with the broker's session.
func (c *conn5) release() error {
	c.releaseOnce.Do(func() {
		c.cancel()
		// The forwarder, the loss watcher and the watchers: the acks
		// that are ready are written once they return.
		c.wg.Wait()
		disconnect5(c.client)
		_ = c.session.Close()
	})
	return nil
}
