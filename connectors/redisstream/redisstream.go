package redisstream

import (
	"context"
	"fmt"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// publisher is a message.Publisher appending to streams with XADD; Publish
// returns once the server has replied for every message.
type publisher struct {
	client *redis.Client
	maxLen int64
	// sink marks a sink's publisher: StreamMeta and ConsumerMeta, where
	// an upstream source read the event, are not written (a dead letter
	// keeps them: where its entry was).
	sink bool
}

// Publish implements message.Publisher: one XADD per message, pipelined.
// A reply refusing a message (not a transient condition) is marked
// bus.Permanent, so it is not retried.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	_, err := p.PublishBatch(topic, msgs)
	return err
}

// maxPipeline bounds the XADDs sent in one pipeline.
const maxPipeline = 1024

// PublishBatch implements bus.BatchPublisher: one XADD per message,
// pipelined (maxPipeline at a time), so a slice of events costs one round
// trip instead of one per event.
func (p *publisher) PublishBatch(topic string, msgs []*message.Message) (int, error) {
	ctx := context.Background()
	args := func(m *message.Message) *redis.XAddArgs {
		a := &redis.XAddArgs{Stream: topic, Values: p.values(m), ID: "*"}
		if p.maxLen > 0 {
			a.MaxLen, a.Approx = p.maxLen, true
		}
		return a
	}
	if len(msgs) == 1 {
		if err := classify(p.client.XAdd(ctx, args(msgs[0])).Err()); err != nil {
			return 0, err
		}
		return 1, nil
	}
	done := 0
	for done < len(msgs) {
		chunk := msgs[done:min(len(msgs), done+maxPipeline)]
		pipe := p.client.Pipeline()
		cmds := make([]*redis.StringCmd, len(chunk))
		for i, m := range chunk {
			cmds[i] = pipe.XAdd(ctx, args(m))
		}
		_, execErr := pipe.Exec(ctx)
		for _, c := range cmds {
			if err := c.Err(); err != nil {
				return done, classify(err)
			}
			done++
		}
		if execErr != nil && !isReply(execErr) {
			return done, classify(execErr)
		}
	}
	return done, nil
}

// Close implements message.Publisher; the client is closed by its owner.
func (p *publisher) Close() error { return nil }

// transient are the error replies a server gives while it cannot serve
// for now.
var transient = []string{"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "OOM"}

// classify marks an error reply that retrying cannot mend as permanent.
func classify(err error) error {
	if err == nil || !isReply(err) {
		return err
	}
	for _, p := range transient {
		if redis.HasErrorPrefix(err, p) {
			return err
		}
	}
	return bus.Permanent(err)
}

// NewSink returns a bus.Sink appending every event it receives to
// opts.Stream (trimmed to about opts.MaxLen entries when set), each
// append waiting for the server's reply. While the server is unreachable
// the sink retries as r says; with r.FailFast it must be reachable at
// start.
func NewSink(ctx context.Context, name string, opts Options, r bus.Reconnect, health *component.Health) (*bus.Sink, error) {
	opts.EnsureDefaults()
	if opts.Stream == "" {
		return nil, fmt.Errorf("sink %s: %w: no stream", name, ErrConfig)
	}
	if opts.MaxLen < 0 {
		return nil, fmt.Errorf("sink %s: %w: max_len %d is negative", name, ErrConfig, opts.MaxLen)
	}
	ro, err := opts.clientOptions(name)
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", name, err)
	}
	client := redis.NewClient(ro)
	if r.FailFast {
		pctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
		err := client.Ping(pctx).Err()
		cancel()
		if err != nil {
			_ = client.Close()
			return nil, fmt.Errorf("sink %s: %w (fail_fast): %w at %s: %w", name, bus.ErrDisconnected, ErrConnect, opts.redacted(), err)
		}
	}
	return bus.NewSink(&publisher{client: client, maxLen: opts.MaxLen, sink: true}, bus.SinkOptions{
		Name: name, Topic: opts.Stream, OnClose: client.Close,
		Reconnect: &r, Health: health, Logger: opts.Logger,
	})
}

// defaultConsumer is the consumer name used when none is given: the host
// name, stable across restarts of a process on one machine.
func defaultConsumer(hostname func() (string, error)) string {
	h, err := hostname()
	if err != nil || strings.TrimSpace(h) == "" {
		return "flowrun"
	}
	return h
}

// values lays out m as the fields of its stream entry (entryValues),
// without StreamMeta and ConsumerMeta for a sink.
func (p *publisher) values(m *message.Message) []any {
	if p.sink {
		m = withoutDeliveryMeta(m)
	}
	return entryValues(m)
}

// withoutDeliveryMeta returns m without StreamMeta and ConsumerMeta (m
// itself when it has neither; it is left as it is, a sink publishes it
// again after a failure).
func withoutDeliveryMeta(m *message.Message) *message.Message {
	_, stream := m.Metadata[StreamMeta]
	_, consumer := m.Metadata[ConsumerMeta]
	if !stream && !consumer {
		return m
	}
	c := message.NewMessage(m.UUID, m.Payload)
	c.Metadata = make(message.Metadata, len(m.Metadata))
	for k, v := range m.Metadata {
		if k != StreamMeta && k != ConsumerMeta {
			c.Metadata[k] = v
		}
	}
	return c
}
