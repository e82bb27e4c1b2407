package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"

	"github.com/flowrun/flowrun/connectors/bus"
)

// subscriber5 dials MQTT 5 connections for a bus.ReconnectingSubscriber.
//
// How paho.golang v0.23.0 is used: with EnableManualAcknowledgment, every
// QoS 1 and 2 message received is recorded in arrival order and
// Client.Ack marks it done; every ackInterval5 the client sends the acks
// of the leading done messages, in that order (MQTT 5 §4.6), so a message
// done early waits for the ones received before it. The client's session
// state (paho's in-memory State) keeps nothing for received QoS 1
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
	c := newConn5(o.Logger, o.Source.Name, decoder{codec: o.Codec, idFrom: o.IDFrom}, o.MaxInflight, o.ConnectTimeout)
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

// ackCounter is paho's session state counting the acknowledgements
// written to the connection, so that release can wait for them.
type ackCounter struct {
	*state.State
	sent atomic.Int64
}

// Ack implements session.SessionManager.
func (s *ackCounter) Ack(pb *packets.Publish) error {
	err := s.State.Ack(pb)
	s.sent.Add(1)
	return err
}

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
// settlement and marks it done (paho sends the acks in arrival order).
type conn5 struct {
	logger  *slog.Logger
	name    string
	dec     decoder
	client  *paho5.Client
	session *ackCounter
	out     chan *message.Message
	// slots holds a token for each message handed over and not yet
	// settled: at most SourceOptions.MaxInflight.
	slots chan struct{}
	// ackTimeout bounds release's wait for the acks that are ready.
	ackTimeout time.Duration

	// done holds the seqs of the messages marked done with Client.Ack
	// after an earlier one still unsettled; ready counts the leading
	// messages marked done, whose acks paho sends.
	doneMu sync.Mutex
	done   map[uint64]bool
	ready  int64

	ctx    context.Context // ends when the connection is lost or released
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	queue []pending5
	seq   uint64
	wake  chan struct{}

	releaseOnce sync.Once
}

func newConn5(logger *slog.Logger, name string, dec decoder, maxInflight int, ackTimeout time.Duration) *conn5 {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn5{
		logger: logger, name: name, dec: dec, ackTimeout: ackTimeout,
		done:    map[uint64]bool{},
		session: &ackCounter{State: state.NewInMemory()},
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
		c.seq++ // paho tracks the acks of these, in this order
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

// markDone marks p's message done: paho acknowledges it once the messages
// received before it are done too.
func (c *conn5) markDone(p pending5) {
	if p.pb.QoS == 0 {
		return
	}
	if err := c.client.Ack(p.pb); err != nil {
		return // the connection has ended: the broker resends the message
	}
	c.doneMu.Lock()
	defer c.doneMu.Unlock()
	c.done[p.seq] = true
	for n := uint64(c.ready); c.done[n]; n++ {
		delete(c.done, n)
		c.ready++
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
		c.wg.Wait() // the forwarder, the loss watcher and the watchers
		// paho sends the acks of the leading done messages at its
		// next tick: wait for them (the others wait for an earlier
		// message that is not done, and go back to the broker's session).
		c.doneMu.Lock()
		ready := c.ready
		c.doneMu.Unlock()
		for deadline := time.Now().Add(c.ackTimeout); c.session.sent.Load() < ready && time.Now().Before(deadline) && !closed(c.client); {
			time.Sleep(ackInterval5)
		}
		disconnect5(c.client)
		_ = c.session.Close()
	})
	return nil
}
