package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrPublish reports an event that could not be published.
var ErrPublish = errors.New("cannot publish")

// SinkOptions configure a Sink.
type SinkOptions struct {
	// Name is the sink node's name, used in errors. Default "bus".
	Name string
	// Topic is the topic (NATS subject) published to. Required.
	Topic string
	// OnClose, when set, is called by Close to release what the sink owns
	// (a broker connection).
	OnClose func() error
	// Reconnect, when set, retries a publish that fails (but for a
	// Permanent error) with its backoff until it succeeds or the flow
	// stops, holding the slice back meanwhile: the flow pauses while the
	// broker is away. With Reconnect.FailFast, or without Reconnect, a
	// failed publish fails its event at once.
	Reconnect *Reconnect
	// Health, when set, reports the sink not ready while its publishes
	// fail and are retried.
	Health *component.Health
	// Logger receives the retries. Default slog.Default().
	Logger *slog.Logger
	// Route, when set, gives each message's topic in place of Topic (a
	// partitioned sink publishes each event to its partition's subject)
	// and may set the message's id and metadata. An event it returns an
	// error for goes to "err" at once, without a retry; the rest of the
	// slice is published.
	Route func(ev pipeline.Event, m *message.Message) (topic string, err error)
}

// EnsureDefaults fills unset fields with their defaults.
func (o *SinkOptions) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "bus"
	}
	if o.Reconnect != nil {
		o.Reconnect.EnsureDefaults()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Sink is a pipeline.Processor that publishes every event it receives to a
// topic, converted with ToMessage. Process returns only once the publisher
// has accepted each message (for JetStream: the broker stored it), so a bus
// Source acking after the graph is idle never acks a message whose results
// are not yet published.
//
// An event that cannot be published is emitted on "err" with meta.error;
// the Sink declares no output ports, so that event goes to the graph's
// Unlinked hook (logged) and makes a bus Source upstream redeliver the
// message it derives from. After a failure the rest of the slice is not
// attempted (the broker is most likely unreachable) and fails the same way.
type Sink struct {
	pub  message.Publisher
	opts SinkOptions
}

// NewSink returns a sink publishing with pub.
func NewSink(pub message.Publisher, opts SinkOptions) (*Sink, error) {
	opts.EnsureDefaults()
	if opts.Topic == "" {
		return nil, fmt.Errorf("sink %s: %w: no topic", opts.Name, ErrPublish)
	}
	return &Sink{pub: pub, opts: opts}, nil
}

// Process implements pipeline.Processor.
func (s *Sink) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	var failed error
	for _, ev := range events {
		if failed == nil {
			if err := ctx.Err(); err != nil {
				return err
			}
			m, topic := ToMessage(ev), s.opts.Topic
			if s.opts.Route != nil {
				var err error
				if topic, err = s.opts.Route(ev, m); err != nil {
					emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, setString(ev.Meta, "error", fmt.Sprintf("sink %s: %v", s.opts.Name, err))))
					continue
				}
			}
			if err := s.publish(ctx, topic, m); err != nil {
				failed = fmt.Errorf("sink %s: %w to %q: %w", s.opts.Name, ErrPublish, topic, err)
			}
		}
		if failed != nil {
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, setString(ev.Meta, "error", failed.Error())))
		}
	}
	return nil
}

// publish publishes m to topic, retrying as opts.Reconnect says.
func (s *Sink) publish(ctx context.Context, topic string, m *message.Message) error {
	if s.opts.Reconnect == nil || s.opts.Reconnect.FailFast {
		return s.pub.Publish(topic, m)
	}
	return s.opts.Reconnect.Retry(ctx, s.opts.Name, s.opts.Health, s.opts.Logger, func(context.Context) error {
		return s.pub.Publish(topic, m)
	})
}

// Close releases the publisher through OnClose.
func (s *Sink) Close(context.Context) error {
	if s.opts.OnClose == nil {
		return nil
	}
	if err := s.opts.OnClose(); err != nil {
		return fmt.Errorf("sink %s: close: %w", s.opts.Name, err)
	}
	return nil
}
