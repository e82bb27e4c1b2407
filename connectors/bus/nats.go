package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/partition"
)

// Defaults for NATSOptions.
const (
	// DefaultNATSURL is the broker address used when none is given.
	DefaultNATSURL = "nats://127.0.0.1:4222"
	// DefaultAckWait is how long JetStream waits for an ack before it
	// redelivers a message.
	DefaultAckWait = 30 * time.Second
	// DefaultConnectTimeout bounds connecting to the broker.
	DefaultConnectTimeout = 5 * time.Second
)

// ErrConnect reports a broker that could not be reached or set up.
var ErrConnect = errors.New("cannot reach the message bus")

// NATSOptions say how to reach NATS JetStream and what to consume.
type NATSOptions struct {
	// URL is the broker's address. Default DefaultNATSURL.
	URL string
	// Subject is the subject consumed or published to. Required.
	Subject string
	// Stream is the JetStream stream holding Subject. Default: the stream
	// that already captures Subject, else a new file-backed stream named
	// after Subject ("orders.in" → "orders_in") is created.
	Stream string
	// Durable names the durable consumer (and its queue group) of a
	// source: several processes with the same Durable share the work, and
	// a restarted process resumes where the consumer left off. Required
	// for a source.
	Durable string
	// AckWait is how long the broker waits for an ack before redelivering
	// (also after a crash). Default DefaultAckWait.
	AckWait time.Duration
	// ConnectTimeout bounds connecting. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logger receives the watermill adapter's logs (at debug level) and
	// connection events. Default slog.Default().
	Logger *slog.Logger
	// Reconnect says what happens when the broker is unreachable at start
	// or goes away: by default the connector connects again with backoff
	// (nats.go reconnects an established connection by itself) and the
	// flow waits; with FailFast the build, or the flow, fails.
	Reconnect Reconnect
	// Health, when set, reports the connector not ready while it is not
	// connected.
	Health *component.Health

	// uncappedAckWait keeps AckWait for partition consumers too (tests
	// that must tell a nack from an ack wait's redelivery).
	uncappedAckWait bool
}

// EnsureDefaults fills unset fields with their defaults.
func (o *NATSOptions) EnsureDefaults() {
	if o.URL == "" {
		o.URL = DefaultNATSURL
	}
	if o.AckWait <= 0 {
		o.AckWait = DefaultAckWait
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Reconnect.EnsureDefaults()
}

// StreamName returns the stream name derived from a subject: characters a
// stream name may not hold (. * > and spaces) become "_".
func StreamName(subject string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '/', '\\':
			return '_'
		}
		return r
	}, subject)
}

// watermillLogger maps the adapter's info logs to debug: it reports every
// subscriber start and close, which is noise in a flow's log.
func watermillLogger(l *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(l, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
}

// natsConn is a broker connection with the streams of its subjects.
type natsConn struct {
	conn    *nats.Conn
	js      nats.JetStreamContext
	streams map[string]string // subject -> stream
	closed  chan struct{}     // closed once the connection is closed
}

// drain drains the connection (acks and publishes not yet sent are sent) and
// waits, at most timeout, until it is closed.
func (c *natsConn) drain(timeout time.Duration) error {
	if err := c.conn.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		c.conn.Close()
		return err
	}
	return c.waitClosed(timeout)
}

func (c *natsConn) waitClosed(timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.closed:
		return nil
	case <-t.C:
		c.conn.Close()
		return fmt.Errorf("connection did not drain within %v", timeout)
	}
}

// connect dials the broker and makes sure a stream captures each subject.
func connect(ctx context.Context, name string, o NATSOptions, subjects ...string) (*natsConn, error) {
	logger := o.Logger
	closed := make(chan struct{})
	maxReconnects := -1 // nats.go reconnects by itself, for ever
	if o.Reconnect.FailFast {
		maxReconnects = 0 // a lost connection closes, ending the flow
	}
	conn, err := nats.Connect(o.URL,
		nats.Name("flowrun "+name),
		nats.Timeout(o.ConnectTimeout),
		nats.MaxReconnects(maxReconnects),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // closed on purpose
			}
			logger.Warn("disconnected from NATS", "node", name, "error", err)
			if o.Health != nil {
				o.Health.Set(name, fmt.Errorf("%w: %w", ErrDisconnected, err))
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			logger.Info("reconnected to NATS", "node", name, "url", c.ConnectedUrl())
			if o.Health != nil {
				o.Health.Set(name, nil)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrConnect, o.URL, err)
	}
	c := &natsConn{conn: conn, streams: map[string]string{}, closed: closed}
	c.js, err = conn.JetStream(nats.Context(ctx))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w at %s: jetstream: %w", ErrConnect, o.URL, err)
	}
	for i, subj := range subjects {
		want := ""
		if i == 0 {
			want = o.Stream // the option names the main subject's stream
		}
		stream, err := ensureStreamWithin(ctx, o.ConnectTimeout, c.js, subj, want)
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("%w at %s: %w", ErrConnect, o.URL, err)
		}
		c.streams[subj] = stream
	}
	return c, nil
}

// ensureConsumer creates the durable push consumer of a source, or adapts
// an existing one's AckWait and MaxAckPending. The library-side
// subscription only binds to it: a consumer nats.go creates itself is
// deleted when the subscription ends, which would forget the position.
func ensureConsumer(ctx context.Context, js nats.JetStreamContext, stream, subject, durable string, ackWait time.Duration, window int) error {
	info, err := js.ConsumerInfo(stream, durable, nats.Context(ctx))
	if errors.Is(err, nats.ErrConsumerNotFound) {
		_, err = js.AddConsumer(stream, &nats.ConsumerConfig{
			Durable:        durable,
			DeliverSubject: nats.NewInbox(),
			DeliverGroup:   durable,
			DeliverPolicy:  nats.DeliverAllPolicy,
			AckPolicy:      nats.AckExplicitPolicy,
			AckWait:        ackWait,
			MaxAckPending:  window,
			MaxDeliver:     -1, // the source dead-letters; the broker never drops
			FilterSubject:  subject,
		}, nats.Context(ctx))
		if err != nil {
			return fmt.Errorf("create consumer %q on stream %q: %w", durable, stream, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("consumer %q on stream %q: %w", durable, stream, err)
	}
	cfg := info.Config
	if cfg.DeliverSubject == "" || cfg.DeliverGroup != durable || cfg.AckPolicy != nats.AckExplicitPolicy {
		return fmt.Errorf("consumer %q on stream %q exists but is not a push consumer with explicit acks and deliver group %q: delete it or choose another durable name", durable, stream, durable)
	}
	if cfg.FilterSubject != "" && cfg.FilterSubject != subject {
		return fmt.Errorf("consumer %q on stream %q reads subject %q, not %q: choose another durable name", durable, stream, cfg.FilterSubject, subject)
	}
	if cfg.AckWait != ackWait || cfg.MaxAckPending != window {
		cfg.AckWait, cfg.MaxAckPending = ackWait, window
		if _, err := js.UpdateConsumer(stream, &cfg, nats.Context(ctx)); err != nil {
			return fmt.Errorf("update consumer %q on stream %q: %w", durable, stream, err)
		}
	}
	return nil
}

// ensureStream returns the stream capturing subject, creating it when
// there is none: stream when given (it must list subject), else the one
// capturing subject, else a new file-backed one named StreamName.
func ensureStream(ctx context.Context, js nats.JetStreamContext, subject, stream string) (string, error) {
	return ensureStreamOf(ctx, js, subject, stream, StreamName(subject), true)
}

// ensureStreamWithin is ensureStream bounded by timeout. Every JetStream
// API request of a dial must be bounded: one whose server dies with it
// (a node killed, the meta leader moving) is never answered, and a dial
// waiting on it for ever never retries, leaving a source that consumes
// nothing while its flow runs.
func ensureStreamWithin(ctx context.Context, timeout time.Duration, js nats.JetStreamContext, subject, stream string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return ensureStream(ctx, js, subject, stream)
}

// ensureStreamOf returns the stream capturing subjects: stream when given
// (created when missing; with listed, it must list subjects), else the one
// capturing them, else a new file-backed one named def.
func ensureStreamOf(ctx context.Context, js nats.JetStreamContext, subjects, stream, def string, listed bool) (string, error) {
	if stream == "" {
		name, err := js.StreamNameBySubject(subjects, nats.Context(ctx))
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, nats.ErrNoMatchingStream) && !errors.Is(err, nats.ErrStreamNotFound) {
			return "", fmt.Errorf("find the stream of subject %q: %w", subjects, err)
		}
		stream = def
	} else if info, err := js.StreamInfo(stream, nats.Context(ctx)); err == nil {
		if !listed || slices.Contains(info.Config.Subjects, subjects) {
			return stream, nil
		}
		return "", fmt.Errorf("stream %q does not capture subject %q (its subjects: %v)", stream, subjects, info.Config.Subjects)
	} else if !errors.Is(err, nats.ErrStreamNotFound) {
		return "", fmt.Errorf("stream %q: %w", stream, err)
	}
	_, err := js.AddStream(&nats.StreamConfig{Name: stream, Subjects: []string{subjects}, Storage: nats.FileStorage}, nats.Context(ctx))
	if err != nil {
		return "", fmt.Errorf("create stream %q for subject %q (set `stream` to use an existing one): %w", stream, subjects, err)
	}
	return stream, nil
}

// natsUnmarshaler turns a JetStream message into a watermill message:
// headers become metadata (several values of one header are joined with
// ", "), but for NATSMeta and DeliveredKey, which describe a delivery and
// are set by the source itself, and DeliveredKey holds the broker's
// delivery count. Unlike
// watermill-nats' NATSMarshaler it never refuses a message, which would
// leave it unacknowledged and redelivered forever.
type natsUnmarshaler struct{}

func (natsUnmarshaler) Unmarshal(m *nats.Msg) (*message.Message, error) {
	md, mdErr := m.Metadata()
	return unmarshalNATS(m, md, mdErr), nil
}

// unmarshalNATS is natsUnmarshaler's Unmarshal of m, whose metadata
// m.Metadata() returned as md, mdErr.
func unmarshalNATS(m *nats.Msg, md *nats.MsgMetadata, mdErr error) *message.Message {
	msg := message.NewMessage(natsMessageID(m, md, mdErr), m.Data)
	for k, v := range m.Header {
		switch k {
		case wmnats.WatermillUUIDHdr, nats.MsgIdHdr, nats.ExpectedLastMsgIdHdr, nats.ExpectedStreamHdr,
			nats.ExpectedLastSubjSeqHdr, nats.ExpectedLastSeqHdr,
			NATSMeta, DeliveredKey: // another delivery's (a publisher outside flowrun's)
			continue
		}
		msg.Metadata.Set(k, strings.Join(v, ", "))
	}
	if mdErr == nil {
		msg.Metadata.Set(DeliveredKey, strconv.FormatUint(md.NumDelivered, 10))
	}
	return msg
}

// natsMessageID returns an id that is the same on every delivery of m: the
// watermill UUID its publisher set, else its Nats-Msg-Id (the broker's
// deduplication id), else its stream name and sequence, which JetStream
// assigns once per stored message. Only a message with none of them (not
// from JetStream) gets a fresh random id.
func natsMessageID(m *nats.Msg, md *nats.MsgMetadata, mdErr error) string {
	if id := m.Header.Get(wmnats.WatermillUUIDHdr); id != "" {
		return id
	}
	if id := m.Header.Get(nats.MsgIdHdr); id != "" {
		return id
	}
	if mdErr == nil {
		return fmt.Sprintf("%s:%d", md.Stream, md.Sequence.Stream)
	}
	return watermill.NewUUID()
}

// NATSSourceOptions configure NewNATSSource.
type NATSSourceOptions struct {
	NATSOptions
	// Source configures the windowed acknowledgement; its Topic is
	// NATSOptions.Subject.
	Source SourceOptions
	// Partitions, when set, makes the source consume the partitions
	// served on this board instead of Subject: for each partition p while
	// it is served, the durable pull consumer PartitionDurable(Durable, p)
	// on partition.Subject(Subject, p), in stream order, at most Window
	// messages unsettled per partition (see docs/bus.md, "Partitioned
	// flows").
	Partitions *partition.Board
}

// NewNATSSource returns a Source feeding graph from the durable consumer
// opts.Durable on opts.Subject. It connects in the background (creating
// the stream and consumer when missing, the dead-letter subject's stream
// too), again with opts.Reconnect's backoff while the broker is
// unreachable, reporting the node not ready to opts.Health meanwhile; with
// Reconnect.FailFast it connects here and fails when it cannot. The
// consumer acknowledges explicitly, waits AckWait before redelivering, and
// lets at most Window messages be unacknowledged, one per watermill
// subscriber (watermill hands a subscriber its next message only after the
// previous one is settled, so Window subscribers make a window).
func NewNATSSource(ctx context.Context, graph Graph, opts NATSSourceOptions) (*Source, error) {
	opts.NATSOptions.EnsureDefaults()
	so := opts.Source
	so.Topic = opts.Subject
	if so.Logger == nil {
		so.Logger = opts.Logger
	}
	so.EnsureDefaults()
	if opts.Subject == "" {
		return nil, fmt.Errorf("source %s: %w: no subject", so.Name, ErrSubscribe)
	}
	if opts.Durable == "" {
		return nil, fmt.Errorf("source %s: %w: no durable consumer name", so.Name, ErrSubscribe)
	}
	dead := &natsDeadLetters{}
	dial := func(ctx context.Context, topic string) (<-chan *message.Message, func() error, error) {
		if opts.Partitions != nil {
			return dialNATSPartitions(ctx, so, opts.NATSOptions, opts.Partitions, dead)
		}
		return dialNATSSource(ctx, so, opts.NATSOptions, topic, dead)
	}
	rs := NewReconnectingSubscriber(so.Name, dial, opts.Reconnect, opts.Health, opts.Logger)
	so.OnClose = rs.Close
	src, err := NewSource(ctx, rs, dead, graph, so)
	if err != nil {
		_ = rs.Close()
		if errors.Is(err, ErrDisconnected) {
			err = fmt.Errorf("%w: %w", ErrConnect, err)
		}
		return nil, err
	}
	return src, nil
}

// dialNATSSource makes one connection of a source: the streams, the
// consumer, the subscription, and the publisher of its dead letters.
func dialNATSSource(ctx context.Context, so SourceOptions, opts NATSOptions, topic string, dead *natsDeadLetters) (<-chan *message.Message, func() error, error) {
	nc, err := connect(ctx, so.Name, opts, opts.Subject, so.DeadLetter)
	if err != nil {
		return nil, nil, err
	}
	conn, stream := nc.conn, nc.streams[opts.Subject]
	cctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout) // see ensureStreamWithin
	err = ensureConsumer(cctx, nc.js, stream, opts.Subject, opts.Durable, opts.AckWait, so.Window)
	cancel()
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("%w: %w", ErrSubscribe, err)
	}
	wl := watermillLogger(opts.Logger)
	sub, err := wmnats.NewSubscriberWithNatsConn(conn, wmnats.SubscriberSubscriptionConfig{
		Unmarshaler:      natsUnmarshaler{},
		SubscribersCount: so.Window,
		AckWaitTimeout:   opts.AckWait,
		CloseTimeout:     opts.AckWait,
		SubscribeTimeout: opts.ConnectTimeout,
		QueueGroupPrefix: opts.Durable,
		JetStream: wmnats.JetStreamConfig{
			// An ack goes out without waiting for the broker's reply:
			// a lost one is a redelivery (at least once), and the
			// subscriber's goroutine is free for the next message.
			AckAsync:      true,
			DurablePrefix: opts.Durable,
			SubscribeOptions: []nats.SubOpt{
				nats.Bind(stream, opts.Durable),
				// Without ManualAck nats.go acks every message once the
				// adapter's callback returns, even one it gave up on.
				nats.ManualAck(),
			},
		},
	}, wl)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("%w: %w", ErrSubscribe, err)
	}
	pub, err := newNATSPublisher(conn, wl)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	// The subscription ends when the connection closes for good (lost
	// under fail_fast): the reconnecting subscriber then sees it lost.
	subCtx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-nc.closed:
		case <-subCtx.Done():
		}
		cancel()
	}()
	msgs, err := sub.Subscribe(subCtx, topic)
	if err != nil {
		cancel()
		_ = sub.Close()
		return nil, nil, fmt.Errorf("%w to %q: %w", ErrSubscribe, topic, err)
	}
	dead.set(pub)
	release := func() error {
		dead.set(nil)
		cancel()
		// Subscriber.Close starts draining the connection: acks still
		// being sent go out before it closes. Wait for that, so a process
		// exiting right after Close loses none.
		err := sub.Close()
		if werr := nc.waitClosed(opts.ConnectTimeout); err == nil {
			err = werr
		}
		return err
	}
	return msgs, release, nil
}

// natsDeadLetters publishes a source's dead letters through its current
// connection.
type natsDeadLetters struct {
	mu  sync.Mutex
	pub message.Publisher
}

func (d *natsDeadLetters) set(pub message.Publisher) {
	d.mu.Lock()
	d.pub = pub
	d.mu.Unlock()
}

// Publish implements message.Publisher; it fails while not connected (the
// message is then redelivered and dead-lettered later).
func (d *natsDeadLetters) Publish(topic string, msgs ...*message.Message) error {
	d.mu.Lock()
	pub := d.pub
	d.mu.Unlock()
	if pub == nil {
		return ErrDisconnected
	}
	kept := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		kept[i] = moveMeta(m, NATSMeta, NATSSourceMeta)
	}
	return pub.Publish(topic, kept...)
}

// moveMeta returns m with its metadata key from renamed to (removed when
// to is ""), in JSONKeysKey's list too; m itself is left as it is (a sink
// publishes the same messages again after a failure). Without from it
// returns m.
func moveMeta(m *message.Message, from, to string) *message.Message {
	v, ok := m.Metadata[from]
	if !ok {
		return m
	}
	c := message.NewMessage(m.UUID, m.Payload)
	c.Metadata = make(message.Metadata, len(m.Metadata))
	for k, mv := range m.Metadata {
		if k != from {
			c.Metadata[k] = mv
		}
	}
	if to != "" {
		c.Metadata[to] = v
	}
	if keys, marked := c.Metadata[JSONKeysKey]; marked && keys != "" {
		var kept []string
		for _, k := range strings.Split(keys, ",") {
			switch {
			case k != from:
				kept = append(kept, k)
			case to != "":
				kept = append(kept, to)
			}
		}
		c.Metadata[JSONKeysKey] = strings.Join(kept, ",")
	}
	return c
}

// Close implements message.Publisher; the connection is closed by the
// source.
func (d *natsDeadLetters) Close() error { return nil }

func newNATSPublisher(conn *nats.Conn, wl watermill.LoggerAdapter) (*wmnats.Publisher, error) {
	pub, err := wmnats.NewPublisherWithNatsConn(conn, wmnats.PublisherPublishConfig{
		Marshaler:         &wmnats.NATSMarshaler{},
		SubjectCalculator: wmnats.DefaultSubjectCalculator,
	}, wl)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnect, err)
	}
	return pub, nil
}

// NewNATSSink returns a Sink publishing to opts.Subject, making sure a
// stream captures it. Each publish waits for the broker's acknowledgement
// that the message is stored. The connection is made on the first publish
// and again after it fails, retried with opts.Reconnect's backoff while
// the flow waits; with Reconnect.FailFast it is made here, and a failed
// publish fails its event at once.
func NewNATSSink(ctx context.Context, name string, opts NATSOptions) (*Sink, error) {
	opts.EnsureDefaults()
	if opts.Subject == "" {
		return nil, fmt.Errorf("sink %s: %w: no subject", name, ErrPublish)
	}
	p := &natsSinkPublisher{name: name, opts: opts}
	if opts.Reconnect.FailFast {
		if err := p.connect(ctx); err != nil {
			return nil, fmt.Errorf("sink %s: %w (fail_fast): %w", name, ErrDisconnected, err)
		}
	}
	r := opts.Reconnect
	return NewSink(p, SinkOptions{Name: name, Topic: opts.Subject, Reconnect: &r, Health: opts.Health, Logger: opts.Logger,
		OnClose: p.close})
}

// natsSinkPublisher is a sink's connection, made when first needed. It
// does not publish NATSMeta: the partition, sequence and subject an
// upstream source read a message at are not the published message's.
type natsSinkPublisher struct {
	name string
	opts NATSOptions
	// partitioned: the stream to make sure of captures the partition
	// subjects of opts.Subject, not opts.Subject.
	partitioned bool
	mu          sync.Mutex
	nc          *natsConn
	pub         *wmnats.Publisher
	// js publishes batches asynchronously (PublishBatch).
	js nats.JetStreamContext
}

func (p *natsSinkPublisher) connect(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nc != nil && !p.nc.conn.IsClosed() {
		return nil
	}
	var nc *natsConn
	var err error
	if p.partitioned {
		nc, err = connectPartitions(ctx, p.name, p.opts)
	} else {
		nc, err = connect(ctx, p.name, p.opts, p.opts.Subject)
	}
	if err != nil {
		return err
	}
	pub, err := newNATSPublisher(nc.conn, watermillLogger(p.opts.Logger))
	if err != nil {
		nc.conn.Close()
		return err
	}
	js, err := nc.conn.JetStream(nats.PublishAsyncMaxPending(publishBatchChunk))
	if err != nil {
		nc.conn.Close()
		return fmt.Errorf("%w: jetstream: %w", ErrConnect, err)
	}
	p.nc, p.pub, p.js = nc, pub, js
	return nil
}

const (
	// publishBatchChunk is how many messages PublishBatch sends before it
	// waits for their acknowledgements.
	publishBatchChunk = 1024
	// publishAckTimeout bounds the wait for a batch's acknowledgements,
	// as nats.go bounds a synchronous JetStream publish.
	publishAckTimeout = 5 * time.Second
)

// PublishBatch implements BatchPublisher: each chunk of messages is sent
// at once (JetStream asynchronous publishes, one round trip for the
// chunk instead of one per message) and then their acknowledgements are
// read in order.
func (p *natsSinkPublisher) PublishBatch(topic string, msgs []*message.Message) (int, error) {
	if _, err := p.publisher(); err != nil {
		return 0, err
	}
	p.mu.Lock()
	js := p.js
	p.mu.Unlock()
	if js == nil {
		return 0, fmt.Errorf("nats sink %s: closed: %w", p.name, ErrDisconnected)
	}
	marshaler := wmnats.NATSMarshaler{}
	futures := make([]nats.PubAckFuture, 0, min(len(msgs), publishBatchChunk))
	done := 0
	// fail drops the futures still pending before returning err: an
	// acknowledgement lost with the stream's leader (a node killed while
	// the client stays connected to another) never comes, and the
	// context keeps its future pending for ever; once publishBatchChunk
	// are, every later publish stalls ("too many outstanding async
	// published messages") and the sink never recovers. The caller
	// publishes again from msgs[done:].
	fail := func(err error) (int, error) {
		js.CleanupPublisher()
		return done, err
	}
	for done < len(msgs) {
		chunk := msgs[done:min(len(msgs), done+publishBatchChunk)]
		futures = futures[:0]
		var sendErr error
		for _, m := range chunk {
			nm, err := marshaler.Marshal(topic, moveMeta(m, NATSMeta, ""))
			if err == nil {
				var f nats.PubAckFuture
				if f, err = js.PublishMsgAsync(nm); err == nil {
					futures = append(futures, f)
					continue
				}
			}
			sendErr = err
			break
		}
		timeout := time.NewTimer(publishAckTimeout)
		for _, f := range futures {
			select {
			case <-f.Ok():
				done++
				continue
			case err := <-f.Err():
				timeout.Stop()
				return fail(err)
			case <-timeout.C:
				return fail(fmt.Errorf("no acknowledgement within %s: %w", publishAckTimeout, nats.ErrTimeout))
			}
		}
		timeout.Stop()
		if sendErr != nil {
			return fail(sendErr)
		}
	}
	return done, nil
}

// Publish implements message.Publisher, connecting first when needed.
func (p *natsSinkPublisher) Publish(topic string, msgs ...*message.Message) error {
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	out := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		out[i] = moveMeta(m, NATSMeta, "")
	}
	return pub.Publish(topic, out...)
}

// publisher returns the connected publisher; only when there is none does
// it connect, bounded by ConnectTimeout.
func (p *natsSinkPublisher) publisher() (*wmnats.Publisher, error) {
	p.mu.Lock()
	if p.nc != nil && !p.nc.conn.IsClosed() {
		pub := p.pub
		p.mu.Unlock()
		return pub, nil
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.ConnectTimeout)
	defer cancel()
	if err := p.connect(ctx); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub == nil {
		return nil, fmt.Errorf("nats sink %s: closed: %w", p.name, ErrDisconnected)
	}
	return p.pub, nil
}

// Close implements message.Publisher.
func (p *natsSinkPublisher) Close() error { return nil }

// close drains the connection, if any. Every publish already waited for
// the broker's ack: draining only tidies the connection.
func (p *natsSinkPublisher) close() error {
	p.mu.Lock()
	nc := p.nc
	p.nc, p.pub, p.js = nil, nil, nil
	p.mu.Unlock()
	if nc == nil {
		return nil
	}
	return nc.drain(p.opts.ConnectTimeout)
}
