package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/sjson"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrNoTarget reports a sink with neither a queue nor an exchange.
var ErrNoTarget = errors.New("no queue or exchange to publish to")

// ErrRoutingKey reports a routing key expression that gives no string.
var ErrRoutingKey = errors.New("routing_key_expr")

// SinkOptions configure NewSink.
type SinkOptions struct {
	Options
	// Name is the sink node's name, used in errors and logs.
	Name string
	// RoutingKeyExpr, when set, computes each event's routing key (a
	// string or number) instead of Options.RoutingKey.
	RoutingKeyExpr *expr.Expr
	// Reconnect says how publishes that fail for want of a connection are
	// retried; with FailFast, NewSink fails when the broker is unreachable
	// and a failed publish fails its event at once.
	Reconnect bus.Reconnect
	// Health, when set, reports the sink not ready while it cannot
	// publish.
	Health *component.Health
}

// Sink is a pipeline.Processor that publishes every event it receives,
// converted with bus.ToMessage, as a persistent message with publisher
// confirms. Process returns once the broker has confirmed every message of
// the slice, so a bus source upstream acks a message only after its
// results are stored by the broker. While the broker is unreachable
// Process retries with Reconnect's backoff (the flow pauses); messages
// whose confirm was lost with the connection are published again, with
// the same message_id.
//
// An event whose message the broker nacks or returns as unroutable (with
// Mandatory), or whose routing key expression fails, is emitted on "err"
// with meta.error; the Sink declares no output ports, so that event goes
// to the graph's Unlinked hook and makes a bus source upstream redeliver
// the message it derives from.
type Sink struct {
	pub  *publisher
	opts SinkOptions
	log  *slog.Logger
	// blocked holds ErrBlocked while the broker blocks publishing: a
	// publish that succeeds meanwhile (its confirm was on the way) does
	// not make the sink ready.
	blocked atomic.Pointer[error]
}

// NewSink returns a sink publishing to opts.Exchange (default exchange:
// opts.Queue). It connects at once to declare the target; an unreachable
// broker is an error only with Reconnect.FailFast (otherwise the first
// publish retries).
func NewSink(ctx context.Context, opts SinkOptions) (*Sink, error) {
	opts.Options.EnsureDefaults()
	opts.Reconnect.EnsureDefaults()
	if opts.Name == "" {
		opts.Name = "amqp"
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("sink %s: %w", opts.Name, err)
	}
	if opts.Queue == "" && opts.Exchange == "" {
		return nil, fmt.Errorf("sink %s: %w", opts.Name, ErrNoTarget)
	}
	s := &Sink{pub: newPublisher(opts.Name, opts.Options), opts: opts, log: opts.Logger}
	if opts.Health != nil {
		s.pub.onBlocked = func(err error) {
			if err != nil {
				s.log.Warn("the broker blocked publishing", "node", opts.Name, "error", err)
				s.blocked.Store(&err)
			} else {
				s.log.Info("the broker unblocked publishing", "node", opts.Name)
				s.blocked.Store(nil)
			}
			opts.Health.Set(opts.Name, err)
		}
	}
	s.pub.mu.Lock()
	err := s.pub.connect()
	s.pub.mu.Unlock()
	if err != nil {
		if errors.Is(err, bus.ErrPermanent) {
			return nil, fmt.Errorf("sink %s: %w", opts.Name, err)
		}
		if opts.Reconnect.FailFast {
			return nil, fmt.Errorf("sink %s: %w (fail_fast): %w", opts.Name, bus.ErrDisconnected, err)
		}
		if opts.Health != nil {
			opts.Health.Set(opts.Name, err)
		}
		s.log.Warn("broker unreachable, publishing will retry", "node", opts.Name, "error", err)
	}
	return s, nil
}

// Process implements pipeline.Processor.
func (s *Sink) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	failed := make([]error, len(events))
	var idx []int
	var keys []string
	var msgs []*message.Message
	for i, ev := range events {
		key, err := s.routingKey(ev)
		if err != nil {
			failed[i] = err
			continue
		}
		idx = append(idx, i)
		keys = append(keys, key)
		msgs = append(msgs, sinkMessage(ev))
	}
	if len(msgs) == 0 {
		s.emitFailed(events, failed, emit)
		return nil
	}
	err := s.opts.Reconnect.Retry(ctx, s.opts.Name, s.opts.Health, s.log, func(ctx context.Context) error {
		errs := s.pub.publish(ctx, s.opts.Exchange, keys, msgs)
		var retry error
		n := 0
		for j, err := range errs {
			switch {
			case err == nil:
			case errors.Is(err, bus.ErrPermanent):
				failed[idx[j]] = fmt.Errorf("%w to exchange %q, routing key %q: %w", bus.ErrPublish, s.opts.Exchange, keys[j], err)
			default:
				idx[n], keys[n], msgs[n] = idx[j], keys[j], msgs[j]
				n++
				retry = err
			}
		}
		idx, keys, msgs = idx[:n], keys[:n], msgs[:n]
		return retry
	})
	if err != nil {
		for j, i := range idx {
			failed[i] = fmt.Errorf("%w to exchange %q, routing key %q: %w", bus.ErrPublish, s.opts.Exchange, keys[j], err)
		}
	}
	if b := s.blocked.Load(); b != nil && s.opts.Health != nil {
		s.opts.Health.Set(s.opts.Name, *b)
	}
	s.emitFailed(events, failed, emit)
	return nil
}

// emitFailed emits on "err" each event with a failure, with meta.error.
func (s *Sink) emitFailed(events []pipeline.Event, failed []error, emit pipeline.Emitter) {
	for i, ev := range events {
		if failed[i] == nil {
			continue
		}
		meta, serr := sjson.SetBytes(ev.Meta, "error", "sink "+s.opts.Name+": "+failed[i].Error())
		if serr != nil {
			meta = ev.Meta
		}
		emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, meta))
	}
}

// routingKey is the event's routing key: RoutingKeyExpr's value, or the
// fixed RoutingKey.
func (s *Sink) routingKey(ev pipeline.Event) (string, error) {
	if s.opts.RoutingKeyExpr == nil {
		return s.opts.RoutingKey, nil
	}
	v, err := s.opts.RoutingKeyExpr.Eval(ev)
	if err != nil {
		return "", fmt.Errorf("%w %s: %w", ErrRoutingKey, s.opts.RoutingKeyExpr, err)
	}
	if str, ok := v.Str(); ok {
		return str, nil
	}
	if v.Kind() == expr.Number {
		return v.String(), nil
	}
	return "", fmt.Errorf("%w %s: gives %s, want a string", ErrRoutingKey, s.opts.RoutingKeyExpr, v.String())
}

// Close closes the connection. Every publish already waited for its
// confirm.
func (s *Sink) Close(context.Context) error {
	s.pub.close()
	return nil
}

// sinkMessage is the message a sink publishes for ev: bus.ToMessage's,
// without ExchangeMeta and RoutingKeyMeta. Where an upstream source read
// the event is not where this message goes, and a source sets its own
// (dead letters, published by the source, keep them).
func sinkMessage(ev pipeline.Event) *message.Message {
	m := bus.ToMessage(ev)
	delete(m.Metadata, ExchangeMeta)
	delete(m.Metadata, RoutingKeyMeta)
	return m
}
