package kafka

import (
	"context"
	"fmt"

	"github.com/flowrun/flowrun/connectors/bus"
)

// NewSource returns a bus.Source feeding graph with the records of
// opts.Topic, read in consumer group opts.Group (see the package doc for
// offsets, retries and rebalances). The brokers are contacted in the
// background: while they are unreachable the source retries with
// opts.Reconnect's backoff and reports itself not ready; with FailFast,
// NewSource fails instead. Dead letters are produced to
// opts.Source.DeadLetter (default the topic + ".dead") with the original
// record's key and its coordinates in header OriginHeader.
func NewSource(ctx context.Context, graph bus.Graph, opts SourceOptions) (*bus.Source, error) {
	opts.EnsureDefaults()
	so := opts.Source
	so.Topic = opts.Topic
	if so.Name == "" {
		so.Name = opts.Name
	}
	if so.Logger == nil {
		so.Logger = opts.Logger
	}
	so.EnsureDefaults()
	opts.Source = so
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("source %s: %w: %w", so.Name, bus.ErrSubscribe, err)
	}
	if opts.Group == "" {
		return nil, fmt.Errorf("source %s: %w: no consumer group", so.Name, bus.ErrSubscribe)
	}
	client, err := newClient(opts.Options)
	if err != nil {
		return nil, fmt.Errorf("source %s: dead letters: %w", so.Name, err)
	}
	dead := &publisher{client: client, dead: true}
	d := &sourceDialer{opts: opts}
	sub := bus.NewReconnectingSubscriber(so.Name, d.dial, opts.Reconnect, opts.Health, opts.Logger)
	so.OnClose = func() error {
		err := sub.Close()
		_ = dead.Close()
		return err
	}
	src, err := bus.NewSource(ctx, sub, dead, graph, so)
	if err != nil {
		_ = sub.Close()
		_ = dead.Close()
		return nil, err
	}
	return src, nil
}
