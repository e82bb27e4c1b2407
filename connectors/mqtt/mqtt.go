package mqtt

import (
	"context"
	"fmt"
	"math"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/connectors/bus"
)

// EnsureDefaults fills unset fields with their defaults.
func (o *SourceOptions) EnsureDefaults() {
	o.Options.EnsureDefaults()
	if o.Codec == "" {
		o.Codec = CodecJSON
	}
	if o.MaxInflight <= 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	o.Source.Topic = o.Topic
	if o.Source.Name == "" {
		o.Source.Name = "mqtt"
	}
	if o.Source.Window <= 0 {
		o.Source.Window = bus.DefaultWindow
	}
	if o.Source.DeadLetter == "" {
		o.Source.DeadLetter = DefaultDeadLetter(o.Topic)
	}
	if o.Source.Logger == nil {
		o.Source.Logger = o.Logger
	}
	o.Reconnect.EnsureDefaults()
}

// Validate reports options that cannot work, naming the option.
func (o *SourceOptions) Validate() error {
	if o.ClientID == "" {
		return fmt.Errorf("%w: no client id", ErrOptions)
	}
	if err := CheckFilter(o.Topic); err != nil {
		return fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if err := checkQoS(o.QoS); err != nil {
		return err
	}
	if err := checkCodec(o.Codec); err != nil {
		return err
	}
	if err := checkDeadLetter(o.Topic, o.Source.DeadLetter); err != nil {
		return fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if o.Source.Window > o.MaxInflight {
		return fmt.Errorf("%w: window %d is more than max_inflight %d", ErrOptions, o.Source.Window, o.MaxInflight)
	}
	if o.Protocol == Protocol5 && o.MaxInflight > math.MaxUint16 {
		return fmt.Errorf("%w: max_inflight %d is more than %d, MQTT 5's largest Receive Maximum", ErrOptions, o.MaxInflight, math.MaxUint16)
	}
	return o.checkProtocol()
}

// NewSource returns a bus Source reading the MQTT topic filter opts.Topic
// into graph. It subscribes with a persistent session under opts.ClientID
// and acknowledges each message once everything derived from it is done
// (see the package doc); dead letters are published with the client id
// opts.ClientID + "-dead", in CodecEvent (which carries meta.error).
//
// An unreachable or lost broker is retried as opts.Reconnect says (with
// FailFast, NewSource fails when the broker is unreachable).
func NewSource(ctx context.Context, graph bus.Graph, opts SourceOptions) (*bus.Source, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("source %s: %w", opts.Source.Name, err)
	}
	dial := (&subscriber{opts: opts}).dial
	var dead message.Publisher = &publisher{opts: opts.Options, clientID: opts.ClientID + "-dead", qos: 1, codec: CodecEvent,
		timeout: DefaultPublishTimeout, deadLetters: true}
	if opts.Protocol == Protocol5 {
		dial = (&subscriber5{opts: opts}).dial
		dead = &publisher5{opts: opts.Options, clientID: opts.ClientID + "-dead", qos: 1, codec: CodecEvent,
			timeout: DefaultPublishTimeout, deadLetters: true, retry: opts.Reconnect, logger: opts.Logger}
	}
	// A buffer of a window: the source collects a window from it at
	// once instead of one handoff per message (the intake bounds what is
	// unsettled, buffered or not).
	sub := bus.NewReconnectingSubscriber(opts.Source.Name, dial, opts.Reconnect, opts.Health, opts.Logger).
		WithBuffer(opts.Source.Window)
	so := opts.Source
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

// EnsureDefaults fills unset fields with their defaults.
func (o *SinkOptions) EnsureDefaults() {
	o.Options.EnsureDefaults()
	if o.Name == "" {
		o.Name = "mqtt"
	}
	if o.Codec == "" {
		o.Codec = CodecJSON
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
}

// Validate reports options that cannot work, naming the option.
func (o *SinkOptions) Validate() error {
	if o.ClientID == "" {
		return fmt.Errorf("%w: no client id", ErrOptions)
	}
	if err := CheckTopicName(o.Topic); err != nil {
		return fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if err := checkQoS(o.QoS); err != nil {
		return err
	}
	if err := checkCodec(o.Codec); err != nil {
		return err
	}
	return o.checkProtocol()
}

// NewSink returns a bus Sink publishing every event it receives to
// opts.Topic with opts.QoS and opts.Retain; an event counts as done only
// once the broker has acknowledged it. It connects on the first publish
// (at once with Reconnect.FailFast, failing when the broker is
// unreachable) and again after a failure.
func NewSink(ctx context.Context, opts SinkOptions) (*bus.Sink, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("sink %s: %w", opts.Name, err)
	}
	p := &publisher{opts: opts.Options, clientID: opts.ClientID, qos: opts.QoS, retain: opts.Retain,
		codec: opts.Codec, timeout: opts.PublishTimeout}
	var pub message.Publisher = p
	connect := func() error { p.mu.Lock(); defer p.mu.Unlock(); return p.connect(ctx) }
	if opts.Protocol == Protocol5 {
		p5 := &publisher5{opts: opts.Options, clientID: opts.ClientID, qos: opts.QoS, retain: opts.Retain,
			codec: opts.Codec, timeout: opts.PublishTimeout, logger: opts.Logger}
		if opts.Reconnect != nil {
			p5.retry = *opts.Reconnect
		}
		pub = p5
		connect = func() error { p5.mu.Lock(); defer p5.mu.Unlock(); return p5.connect(ctx) }
	}
	if opts.Reconnect != nil && opts.Reconnect.FailFast {
		if err := connect(); err != nil {
			return nil, fmt.Errorf("sink %s: %w (fail_fast): %w", opts.Name, bus.ErrDisconnected, err)
		}
	}
	return bus.NewSink(pub, bus.SinkOptions{Name: opts.Name, Topic: opts.Topic, OnClose: pub.Close,
		Reconnect: opts.Reconnect, Health: opts.Health, Logger: opts.Logger})
}
