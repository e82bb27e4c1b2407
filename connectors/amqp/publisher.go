package amqp

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/connectors/bus"
)

// confirmChunk is the most messages published before their confirms are
// awaited; the channel receiving returns holds as many, so the client's
// reader never blocks on it.
const confirmChunk = 512

// errConnLost reports a publish whose outcome is unknown because the
// channel closed before the broker confirmed it: publish it again.
var errConnLost = errors.New("connection to the broker lost before the confirm")

// publisher publishes with publisher confirms on one channel, connecting
// (and declaring its target) on first use and again after the connection
// is lost. It is safe for concurrent use; publishes are serialised.
type publisher struct {
	name string
	o    Options

	// onBlocked, when set, is told each connection.blocked (nil once
	// unblocked) the broker sends on the publisher's connections.
	onBlocked func(error)

	mu      sync.Mutex
	conn    *amqp091.Connection
	ch      *amqp091.Channel
	returns chan amqp091.Return
}

func newPublisher(name string, o Options) *publisher {
	o.EnsureDefaults()
	return &publisher{name: name, o: o}
}

// watchBlocked tells p.onBlocked each change of blocked until it is
// closed (with its connection): a connection that ends blocked ends its
// block too, and the next publish connects again.
func (p *publisher) watchBlocked(blocked <-chan amqp091.Blocking) {
	active := false
	for b := range blocked {
		active = b.Active
		if active {
			p.onBlocked(fmt.Errorf("%w: %s", ErrBlocked, b.Reason))
		} else {
			p.onBlocked(nil)
		}
	}
	if active {
		p.onBlocked(nil)
	}
}

// connect makes sure p has an open channel in confirm mode. p.mu is held.
func (p *publisher) connect() error {
	if p.ch != nil && !p.ch.IsClosed() {
		return nil
	}
	p.drop()
	conn, err := dial(&p.o, p.name)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = setup(ch, &p.o)
	}
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		_ = conn.Close()
		return permanent(fmt.Errorf("%w at %s: %w", ErrConnect, redacted(p.o.URL), err))
	}
	p.conn, p.ch = conn, ch
	p.returns = ch.NotifyReturn(make(chan amqp091.Return, confirmChunk))
	if p.onBlocked != nil {
		go p.watchBlocked(conn.NotifyBlocked(make(chan amqp091.Blocking, 1)))
	}
	return nil
}

// drop closes the connection, if any. p.mu is held.
func (p *publisher) drop() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
	p.conn, p.ch, p.returns = nil, nil, nil
}

func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.drop()
}

// publish publishes msgs[i] to exchange with routing key keys[i] and waits
// for the broker's confirms. errs[i] is nil once msgs[i] is confirmed; a
// message nacked (ErrNacked) or returned (ErrUnroutable) has an error
// marked bus.Permanent; one whose outcome is unknown (no connection, the
// connection lost before its confirm, ctx done) has a plain error and may
// be published again.
func (p *publisher) publish(ctx context.Context, exchange string, keys []string, msgs []*message.Message) (errs []error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	errs = make([]error, len(msgs))
	fill := func(from int, err error) {
		for i := from; i < len(errs); i++ {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	if err := p.connect(); err != nil {
		fill(0, err)
		return errs
	}
	for start := 0; start < len(msgs); start += confirmChunk {
		end := min(start+confirmChunk, len(msgs))
		dcs := make([]*amqp091.DeferredConfirmation, end-start)
		ids := make(map[string]int, end-start)
		for i := start; i < end; i++ {
			pub := toPublishing(msgs[i])
			dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, keys[i], p.o.Mandatory, false, pub)
			if err != nil {
				if errors.Is(err, amqp091.ErrClosed) {
					err = errConnLost
				}
				errs[i] = fmt.Errorf("publish: %w", err)
				fill(i+1, errs[i])
				end = i
				break
			}
			dcs[i-start] = dc
			ids[pub.MessageId] = i
		}
		for i := start; i < end; i++ {
			acked, err := dcs[i-start].WaitContext(ctx)
			switch {
			case err != nil:
				errs[i] = err
			case acked:
			case p.ch.IsClosed():
				errs[i] = errConnLost
			default:
				errs[i] = bus.Permanent(ErrNacked)
			}
		}
		// A return comes before the ack of its message: those of this
		// chunk are all in p.returns by now.
	drain:
		for {
			select {
			case r, ok := <-p.returns:
				if !ok {
					break drain
				}
				if i, ok := ids[r.MessageId]; ok {
					errs[i] = bus.Permanent(fmt.Errorf("%w: exchange %q, routing key %q: %d %s",
						ErrUnroutable, r.Exchange, r.RoutingKey, r.ReplyCode, r.ReplyText))
				}
			default:
				break drain
			}
		}
		if next := min(start+confirmChunk, len(msgs)); end < next || p.ch.IsClosed() {
			p.drop()
			fill(next, errConnLost) // the chunks not published
			return errs
		}
	}
	return errs
}
