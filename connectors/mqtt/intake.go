package mqtt

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"strconv"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/connectors/bus"
)

// intake hands the messages of one source connection to the Source and
// acknowledges them, for both protocols; P is the protocol's received
// message (what its acknowledgement needs).
//
// Three goroutines take part, whatever the number of messages: the
// client's router queues each message as it arrives (push, which never
// blocks); the forwarder hands them to out (buffered: it holds every
// unsettled message) as many at once as are queued, at most maxInflight
// unsettled;
// the settler waits for their settlement in the order they arrived (the
// order they are acknowledged in: MQTT 3.1.1 and 5, §4.6) and sends the
// acks of each run of done messages at once (ack). A message done while
// an earlier one is still being processed waits for it, as its ack must.
type intake[P any] struct {
	logger *slog.Logger
	name   string
	out    chan *message.Message
	// ack sends the acknowledgements of ps, in that order, on the
	// connection. It is called by the settler only.
	ack func(ps []P)
	// slots holds a token for each message handed over and not yet
	// settled: at most SourceOptions.MaxInflight.
	slots chan struct{}
	// handed carries the messages handed over, in that order, from the
	// forwarder to the settler; it has room for every slot.
	handed chan pending[P]

	ctx    context.Context // ends when the connection is lost or released
	cancel context.CancelFunc
	wg     sync.WaitGroup // the forwarder and the settler

	mu    sync.Mutex
	queue []pending[P] // received or retried, not handed over
	seq   uint64       // acknowledged messages received so far
	wake  chan struct{}

	// Owned by the settler: done holds the messages done after an
	// earlier one still unsettled, by seq; every message before nextAck
	// is acknowledged or in ready, waiting to be sent.
	done    map[uint64]P
	nextAck uint64
	ready   []P
}

// pending is a message of a connection, waiting to be handed to the Source
// or settled.
type pending[P any] struct {
	seq        uint64 // order of arrival among the acknowledged messages
	acked      bool   // acknowledged (QoS 1 and 2), so counted by seq
	pm         P
	msg        *message.Message
	deliveries int
}

func newIntake[P any](logger *slog.Logger, name string, maxInflight int, ack func([]P)) *intake[P] {
	ctx, cancel := context.WithCancel(context.Background())
	return &intake[P]{
		logger: logger, name: name, ack: ack,
		out:    make(chan *message.Message, maxInflight),
		slots:  make(chan struct{}, maxInflight),
		handed: make(chan pending[P], maxInflight),
		ctx:    ctx, cancel: cancel,
		wake: make(chan struct{}, 1),
		done: map[uint64]P{},
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push queues a received message; acked says whether it is acknowledged
// (QoS 1 and 2). It runs on the client's router goroutine, in arrival
// order, and never blocks.
func (c *intake[P]) push(pm P, msg *message.Message, acked bool) {
	c.mu.Lock()
	p := pending[P]{seq: c.seq, acked: acked, pm: pm, msg: msg, deliveries: 1}
	if acked {
		c.seq++
	}
	c.queue = append(c.queue, p)
	c.mu.Unlock()
	signal(c.wake)
}

// start starts the forwarder and the settler.
func (c *intake[P]) start() {
	c.wg.Add(2)
	go c.forward()
	go c.settle()
}

// stop ends the connection's intake: out is closed, and the acks of the
// messages acked by then are sent. It returns once both goroutines have.
func (c *intake[P]) stop() {
	c.cancel()
	c.wg.Wait()
}

// forward hands queued messages to out, in arrival order (a message
// handed over again after a nack goes to the end), until the connection
// ends; then it closes out. It takes everything queued that free slots
// allow in one go: out has room for every slot, so handing a run of
// messages over costs one wake-up of the forwarder, not one handoff per
// message. Messages still in out when the connection ends are taken back
// (they stay with the broker's session, unacknowledged), so that a lost
// connection's messages are not processed after it.
func (c *intake[P]) forward() {
	defer c.wg.Done()
	defer func() {
		for {
			select {
			case <-c.out:
			default:
				close(c.out)
				return
			}
		}
	}()
	var batch []pending[P]
	for {
		// Wait for a slot: the broker may send more than its window
		// (mosquitto 2.0 does, for a 3.1.1 session's queued messages),
		// but no more than MaxInflight messages are processed and
		// unsettled.
		select {
		case c.slots <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
		held := 1
		c.mu.Lock()
		n := len(c.queue)
	more:
		for held < n {
			select {
			case c.slots <- struct{}{}:
				held++
			default:
				break more
			}
		}
		k := min(held, n)
		batch = append(batch[:0], c.queue[:k]...)
		clear(c.queue[:k])
		c.queue = c.queue[k:]
		c.mu.Unlock()
		for range held - k {
			<-c.slots
		}
		if k == 0 {
			select {
			case <-c.wake:
				continue
			case <-c.ctx.Done():
				return
			}
		}
		for i := range batch {
			p := &batch[i]
			p.msg.Metadata.Set(bus.DeliveredKey, strconv.Itoa(p.deliveries))
			c.handed <- *p // never blocks: p holds a slot
			select {
			case c.out <- p.msg: // never blocks either
			case <-c.ctx.Done():
				return
			}
		}
		clear(batch)
	}
}

// settled reports whether the Source has acked or nacked m.
func settled(m *message.Message) bool {
	select {
	case <-m.Acked():
		return true
	case <-m.Nacked():
		return true
	default:
		return false
	}
}

// settle waits for the messages handed over to be settled, in the order
// they arrived (a retried message comes before the later ones again),
// until the connection ends. An ack marks the message done; a nack hands
// it over again (MQTT has no nack: the broker would resend it only on a
// new connection). The acks that are ready are sent before each wait for
// a message not yet settled, so a run of done messages costs one wake-up
// and one send. When the connection ends, the messages acked by then are
// marked done too and the acks that are ready are sent (they are lost
// with a lost connection: the broker resends the messages); messages
// nacked then stay with the broker's session.
func (c *intake[P]) settle() {
	defer c.wg.Done()
	defer c.flush()
	// waiting holds the messages handed over and not yet settled, in
	// arrival order.
	var waiting []pending[P]
	for {
		// Take what the forwarder has handed over meanwhile.
		for more := true; more; {
			select {
			case p := <-c.handed:
				waiting = insert(waiting, p)
			default:
				more = false
			}
		}
		if len(waiting) == 0 || !settled(waiting[0].msg) {
			c.flush()
		}
		var head <-chan struct{}
		var headNack <-chan struct{}
		if len(waiting) > 0 {
			head, headNack = waiting[0].msg.Acked(), waiting[0].msg.Nacked()
		}
		select {
		case p := <-c.handed:
			waiting = insert(waiting, p)
		case <-head:
			<-c.slots
			c.markDone(waiting[0])
			waiting[0] = pending[P]{}
			waiting = waiting[1:]
		case <-headNack:
			<-c.slots
			c.retry(waiting[0])
			waiting[0] = pending[P]{}
			waiting = waiting[1:]
		case <-c.ctx.Done():
			for more := true; more; {
				select {
				case p := <-c.handed:
					waiting = insert(waiting, p)
				default:
					more = false
				}
			}
			for _, p := range waiting {
				select {
				case <-p.msg.Acked():
					c.markDone(p)
				default:
				}
			}
			return
		}
	}
}

// insert inserts p into waiting, which is in arrival order: a message
// received without acknowledgement (QoS 0) comes before the acknowledged
// one that followed it, as its seq is that one's.
func insert[P any](waiting []pending[P], p pending[P]) []pending[P] {
	key := func(p pending[P]) uint64 {
		if p.acked {
			return 2*p.seq + 1
		}
		return 2 * p.seq
	}
	k := key(p)
	if len(waiting) == 0 || key(waiting[len(waiting)-1]) <= k {
		return append(waiting, p)
	}
	i, _ := slices.BinarySearchFunc(waiting, k, func(w pending[P], k uint64) int { return cmp.Compare(key(w), k) })
	return slices.Insert(waiting, i, p)
}

// markDone marks p done: its ack is ready once every message received
// before it is done.
func (c *intake[P]) markDone(p pending[P]) {
	if !p.acked {
		return
	}
	if p.seq != c.nextAck {
		c.done[p.seq] = p.pm
		return
	}
	c.ready = append(c.ready, p.pm)
	c.nextAck++
	for len(c.done) > 0 {
		pm, ok := c.done[c.nextAck]
		if !ok {
			return
		}
		delete(c.done, c.nextAck)
		c.ready = append(c.ready, pm)
		c.nextAck++
	}
}

// flush sends the acks that are ready.
func (c *intake[P]) flush() {
	if len(c.ready) == 0 {
		return
	}
	c.ack(c.ready)
	clear(c.ready)
	c.ready = c.ready[:0]
}

// retry queues p, nacked, to be handed over again with one delivery more,
// unless the connection has ended.
func (c *intake[P]) retry(p pending[P]) {
	if c.ctx.Err() != nil {
		return
	}
	again := message.NewMessage(p.msg.UUID, p.msg.Payload)
	for k, v := range p.msg.Metadata {
		again.Metadata.Set(k, v)
	}
	again.SetContext(p.msg.Context()) // the event decode attached, if any
	p.msg, p.deliveries = again, p.deliveries+1
	c.mu.Lock()
	c.queue = append(c.queue, p)
	c.mu.Unlock()
	signal(c.wake)
}
