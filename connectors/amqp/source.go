package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// ErrNoQueue reports a source without a queue.
var ErrNoQueue = errors.New("no queue")

// SourceOptions configure NewSource.
type SourceOptions struct {
	Options
	// Source configures the windowed acknowledgement; its Topic is
	// Options.Queue, and InFlight() (Window × WindowsInFlight) is the
	// consumer's prefetch count.
	// DeadLetter is the dead-letter queue (default Queue + ".dead").
	Source bus.SourceOptions
	// Reconnect says how a lost or unreachable broker is retried.
	Reconnect bus.Reconnect
	// Health, when set, reports the source not ready while disconnected.
	Health *component.Health
}

// NewSource returns a bus.Source consuming opts.Queue and feeding graph.
// It connects in the background (with Reconnect.FailFast, at once, and an
// unreachable broker is NewSource's error), and again whenever the
// connection is lost; meanwhile the flow pauses. Each connection declares
// what opts.Declare says, sets the prefetch to Window × WindowsInFlight
// (several windows in flight: the broker sends the next ones while earlier
// ones are synced and acked) and consumes with
// manual acknowledgement.
func NewSource(ctx context.Context, graph bus.Graph, opts SourceOptions) (*bus.Source, error) {
	opts.Options.EnsureDefaults()
	so := opts.Source
	so.Topic = opts.Queue
	if so.Logger == nil {
		so.Logger = opts.Logger
	}
	so.EnsureDefaults()
	if opts.Queue == "" {
		return nil, fmt.Errorf("source %s: %w: %w", so.Name, bus.ErrSubscribe, ErrNoQueue)
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("source %s: %w", so.Name, err)
	}
	c := &consumer{name: so.Name, o: opts.Options, prefetch: so.InFlight(), maxDeliveries: so.MaxDeliveries, deadQueue: so.DeadLetter}
	sub := bus.NewReconnectingSubscriber(so.Name, c.dial, opts.Reconnect, opts.Health, so.Logger)
	var dead *publisher
	var deadPub message.Publisher
	if opts.DeadLetterExchange != "" {
		so.Reject = reject
	} else {
		do := opts.Options
		do.Exchange, do.Queue, do.RoutingKey = "", so.DeadLetter, so.DeadLetter
		do.QueueType, do.DeadLetterExchange, do.Mandatory = QueueClassic, "", true
		dead = newPublisher(so.Name+" dead letters", do)
		deadPub = deadLetterPublisher{dead}
	}
	so.OnClose = func() error {
		err := sub.Close()
		if dead != nil {
			dead.close()
		}
		return err
	}
	src, err := bus.NewSource(ctx, sub, deadPub, graph, so)
	if err != nil {
		_ = sub.Close()
		if dead != nil {
			dead.close()
		}
		return nil, err
	}
	return src, nil
}

// consumer dials the broker for a bus.ReconnectingSubscriber.
type consumer struct {
	name          string
	o             Options
	prefetch      int
	maxDeliveries int
	deadQueue     string
}

// handleKey finds the delivery behind a message, for reject.
type handleKey struct{}

// handle is a delivery handed to the source as a message.
type handle struct {
	d        amqp091.Delivery
	rejected atomic.Bool // settled by reject: ignore the message's nack
}

// settleWait bounds how long releasing a connection waits for the acks
// and nacks of messages already settled to be sent.
const settleWait = 5 * time.Second

// dial implements bus.Dial: one connection, one channel consuming queue.
func (c *consumer) dial(ctx context.Context, queue string) (<-chan *message.Message, func() error, error) {
	conn, err := dial(&c.o, c.name)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (<-chan *message.Message, func() error, error) {
		_ = conn.Close()
		return nil, nil, permanent(fmt.Errorf("%w at %s: %w", ErrConnect, redacted(c.o.URL), err))
	}
	ch, err := conn.Channel()
	if err != nil {
		return fail(err)
	}
	if err := setup(ch, &c.o); err != nil {
		return fail(err)
	}
	if c.o.DeadLetterExchange != "" && c.o.Declare == DeclareDurable {
		if err := setupDeadLetterExchange(ch, c.o.DeadLetterExchange, c.deadQueue); err != nil {
			return fail(err)
		}
	}
	if err := ch.Qos(c.prefetch, 0, false); err != nil {
		return fail(fmt.Errorf("prefetch %d: %w", c.prefetch, err))
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		return fail(fmt.Errorf("consume queue %q: %w", queue, err))
	}
	// gone closes once the channel (or its connection) is closed: acks
	// can no longer be sent, and the broker requeues what is unacked.
	gone := make(chan struct{})
	closes := ch.NotifyClose(make(chan *amqp091.Error, 1))
	go func() {
		if err := <-closes; err != nil {
			c.o.Logger.Warn("AMQP channel closed", "node", c.name, "error", err)
		}
		close(gone)
	}()
	out := make(chan *message.Message)
	stop := make(chan struct{})
	// settlers counts the settle goroutines; no new one starts once
	// stopped is set (under mu), so release can wait for them.
	var settlers sync.WaitGroup
	var mu sync.Mutex
	stopped := false
	go func() {
		defer close(out)
		for d := range deliveries {
			mu.Lock()
			if stopped {
				mu.Unlock()
				_ = d.Nack(false, true) // until release closes the connection
				continue
			}
			settlers.Add(1)
			mu.Unlock()
			h := &handle{d: d}
			m := toMessage(&h.d, &c.o, c.maxDeliveries)
			m.SetContext(context.WithValue(context.Background(), handleKey{}, h))
			select {
			case out <- m:
				go func() {
					defer settlers.Done()
					settle(h, m, gone)
				}()
			case <-stop:
				settlers.Done()
				_ = d.Nack(false, true)
			}
		}
	}()
	var once sync.Once
	release := func() error {
		var err error
		once.Do(func() {
			mu.Lock()
			stopped = true
			close(stop)
			mu.Unlock()
			// The acks of messages settled before the release go out
			// before the connection closes, so that a graceful stop
			// leaves nothing to redeliver.
			waited := make(chan struct{})
			go func() { settlers.Wait(); close(waited) }()
			t := time.NewTimer(settleWait)
			select {
			case <-waited:
			case <-gone:
			case <-t.C:
			}
			t.Stop()
			if cerr := conn.Close(); cerr != nil && !errors.Is(cerr, amqp091.ErrClosed) {
				err = cerr
			}
		})
		return err
	}
	return out, release, nil
}

// settle sends m's ack or nack (with requeue) for its delivery, once the
// source settles m, unless the channel is gone first (the broker then
// requeues it) or reject settled it.
func settle(h *handle, m *message.Message, gone <-chan struct{}) {
	select {
	case <-m.Acked():
		_ = h.d.Ack(false)
	case <-m.Nacked():
		if !h.rejected.Load() {
			_ = h.d.Nack(false, true)
		}
	case <-gone:
	}
}

// reject is bus.SourceOptions.Reject with a dead-letter exchange: a nack
// without requeue, which makes the broker dead-letter the message.
func reject(m *message.Message, _ string) error {
	h, ok := m.Context().Value(handleKey{}).(*handle)
	if !ok {
		return errors.New("not an AMQP delivery")
	}
	h.rejected.Store(true)
	if err := h.d.Nack(false, false); err != nil {
		return fmt.Errorf("nack without requeue: %w", err)
	}
	m.Nack() // ends its settle goroutine, which sends nothing more
	return nil
}

// deadLetterPublisher is the message.Publisher of the source's own dead
// letters: each waits for the broker's confirm.
type deadLetterPublisher struct{ p *publisher }

// deadLetterTimeout bounds publishing one dead letter; past it the
// message is redelivered and tried again.
const deadLetterTimeout = 30 * time.Second

func (d deadLetterPublisher) Publish(queue string, msgs ...*message.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), deadLetterTimeout)
	defer cancel()
	keys := make([]string, len(msgs))
	for i := range keys {
		keys[i] = queue
	}
	for _, err := range d.p.publish(ctx, "", keys, msgs) {
		if err != nil {
			return err
		}
	}
	return nil
}

func (d deadLetterPublisher) Close() error { d.p.close(); return nil }
