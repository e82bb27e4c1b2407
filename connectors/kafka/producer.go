package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/operators/expr"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrKey reports a sink's key expression that failed for an event.
var ErrKey = errors.New("cannot compute the record key")

// publisher is a message.Publisher producing to Kafka: acks=all and the
// idempotent producer (franz-go's defaults, stated again here), each
// Publish waiting until the brokers have stored every record. The record
// key is MetaKey's "key"; the other metadata become headers. A dead-letter
// publisher also keeps MetaKey, as OriginHeader.
type publisher struct {
	client *kgo.Client
	dead   bool
}

func newClient(o Options, extra ...kgo.Opt) (*kgo.Client, error) {
	kopts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID("flowrun-" + o.Name),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordDeliveryTimeout(o.PublishTimeout),
		kgo.AllowAutoTopicCreation(),
		// A refresh of the brokers' metadata follows a broker's return
		// within a second rather than franz-go's default five (the Java
		// client retries after retry.backoff.ms, 100 ms).
		kgo.MetadataMinAge(time.Second),
	}
	if o.TLS != nil {
		kopts = append(kopts, kgo.DialTLSConfig(o.TLS.Clone()))
	}
	if o.SASL != nil {
		kopts = append(kopts, kgo.SASL(o.SASL))
	}
	client, err := kgo.NewClient(append(kopts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", bus.ErrConnect, err)
	}
	return client, nil
}

// Publish implements message.Publisher: it produces msgs to topic and
// returns once all are stored, or with the first error.
func (p *publisher) Publish(topic string, msgs ...*message.Message) error {
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		recs[i] = p.record(topic, m)
	}
	return p.client.ProduceSync(context.Background(), recs...).FirstErr()
}

// record makes the record of m.
func (p *publisher) record(topic string, m *message.Message) *kgo.Record {
	r := &kgo.Record{Topic: topic, Value: m.Payload}
	origin, hasOrigin := m.Metadata[MetaKey]
	if hasOrigin {
		if k := gjson.Get(origin, "key"); k.Type == gjson.String {
			r.Key = []byte(k.String())
		}
	}
	for k, v := range m.Metadata {
		switch k {
		case MetaKey, bus.DeliveredKey:
			continue
		case bus.JSONKeysKey:
			if p.dead && hasOrigin {
				v = renameKey(v, MetaKey, OriginHeader)
			}
		}
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	if p.dead && hasOrigin {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: OriginHeader, Value: []byte(origin)})
	}
	return r
}

// renameKey renames from to to in the comma-separated list keys.
func renameKey(keys, from, to string) string {
	parts := strings.Split(keys, ",")
	for i, k := range parts {
		if k == from {
			parts[i] = to
		}
	}
	return strings.Join(parts, ",")
}

// Close implements message.Publisher.
func (p *publisher) Close() error {
	p.client.Close()
	return nil
}

// SinkOptions configure NewSink.
type SinkOptions struct {
	Options
	// Key, when set, is the expression giving each record's key (a
	// string, number or boolean, taken as text; null or missing: no key).
	// Without it records have no key.
	Key string
	// Expr configures Key's evaluation.
	Expr expr.Options
	// Reconnect retries a produce that fails, holding the flow back, and
	// Health reports the sink not ready meanwhile (see bus.SinkOptions).
	Reconnect *bus.Reconnect
	Health    *component.Health
	// Linger is how long the producer lets a partition's records wait for
	// more before it sends them in one batch (franz-go's ProducerLinger,
	// Kafka's linger.ms); 0 sends at once. The sink produces each slice
	// of events together and waits for it, so the slice is the batch (its
	// size is the upstream window): a linger delays each slice, and a
	// graceful stop, by up to Linger, and batches nothing more. At most
	// MaxLinger. Nil: DefaultLinger (0).
	Linger *time.Duration
}

// ErrLinger reports a SinkOptions.Linger out of [0, MaxLinger].
var ErrLinger = errors.New("linger out of range")

// Sink is a pipeline.Processor producing every event it receives to a
// topic: data the value, meta the headers (bus.ToMessage's mapping, but
// MetaKey), the record key computed from each event. The records of one
// slice are produced together (franz-go batches them per partition, in
// order) and Process returns once each is stored or has failed, so a bus
// Source upstream never acks a message whose results are not stored.
//
// An event whose key cannot be computed, or whose record cannot be
// produced, is emitted on "err" with meta.error; the Sink declares no
// output ports, so that fails the message it derives from (see
// bus.Sink). With Reconnect (and not FailFast), records that fail are
// produced again with its backoff until they are stored or the flow
// stops, holding the slice back, the sink reporting itself not ready
// meanwhile; errors no retry mends (a record too large) fail at once.
//
// Sink does the work of bus.Sink itself rather than wrapping it: bus.Sink
// publishes one message at a time, and one produce round trip per event
// capped a kafka -> kv -> kafka flow at 2,000 records/s on kfake.
type Sink struct {
	pub  *publisher
	key  *expr.Expr
	opts SinkOptions
	// stalled is set while the sink reports itself not ready for a
	// produce the brokers left unanswered (see stallWatch).
	stalled atomic.Bool
}

// NewSink returns a sink producing to opts.Topic. It does not contact the
// brokers: the first produce does (and retries per opts.Reconnect).
func NewSink(opts SinkOptions) (*Sink, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Reconnect != nil {
		opts.Reconnect.EnsureDefaults()
	}
	s := &Sink{opts: opts}
	if opts.Key != "" {
		e, err := expr.ParseWith(opts.Key, opts.Expr)
		if err != nil {
			return nil, fmt.Errorf("sink %s: key: %w", opts.Name, err)
		}
		s.key = e
	}
	linger := DefaultLinger
	if opts.Linger != nil {
		if linger = *opts.Linger; linger < 0 || linger > MaxLinger {
			return nil, fmt.Errorf("sink %s: %w: %s, want 0s to %s", opts.Name, ErrLinger, linger, MaxLinger)
		}
	}
	client, err := newClient(opts.Options, kgo.ProducerLinger(linger))
	if err != nil {
		return nil, fmt.Errorf("sink %s: %w", opts.Name, err)
	}
	s.pub = &publisher{client: client}
	return s, nil
}

// Process implements pipeline.Processor.
func (s *Sink) Process(ctx context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	keyed := make([]pipeline.Event, 0, len(events))
	recs := make([]*kgo.Record, 0, len(events))
	for _, ev := range events {
		meta, err := s.withKey(ev)
		if err != nil {
			emit.Emit(pipeline.PortErr, ev.Derive(ev.Data, setError(ev.MetaJSON(), fmt.Sprintf("sink %s: %v", s.opts.Name, err))))
			continue
		}
		ev = ev.Derive(ev.Data, meta)
		keyed = append(keyed, ev)
		recs = append(recs, s.pub.record(s.opts.Topic, bus.ToMessage(ev)))
	}
	errs := s.produce(ctx, recs)
	for i, err := range errs {
		if err != nil {
			msg := fmt.Errorf("sink %s: %w to %q: %w", s.opts.Name, bus.ErrPublish, s.opts.Topic, err).Error()
			emit.Emit(pipeline.PortErr, keyed[i].Derive(keyed[i].Data, setError(keyed[i].MetaJSON(), msg)))
		}
	}
	return nil
}

// produce produces recs together and returns each one's error (nil when
// stored), retrying failures as opts.Reconnect says.
func (s *Sink) produce(ctx context.Context, recs []*kgo.Record) []error {
	errs := s.produceOnce(ctx, recs, make([]error, len(recs)), nil)
	r := s.opts.Reconnect
	if r == nil || r.FailFast {
		return errs
	}
	retry := func() []int {
		var idx []int
		for i, err := range errs {
			if err != nil && !permanent(err) {
				idx = append(idx, i)
			}
		}
		return idx
	}
	idx := retry()
	if len(idx) == 0 {
		return errs
	}
	_ = r.Retry(ctx, s.opts.Name, s.opts.Health, s.opts.Logger, func(ctx context.Context) error {
		errs = s.produceOnce(ctx, recs, errs, idx)
		idx = retry()
		if len(idx) == 0 {
			return nil
		}
		return errs[idx[0]]
	})
	return errs
}

// produceOnce produces recs[i] for each i of idx (all when idx is nil),
// setting errs[i] to its outcome, and waits for all.
func (s *Sink) produceOnce(ctx context.Context, recs []*kgo.Record, errs []error, idx []int) []error {
	if idx == nil {
		idx = make([]int, len(recs))
		for i := range idx {
			idx[i] = i
		}
	}
	// Not cancelled with the flow: a shutdown waits for the records being
	// produced. publish_timeout bounds each, except a produce the brokers
	// may have stored and did not answer, which the idempotent producer
	// sends again until they do (meanwhile the sink is not ready).
	pctx := context.WithoutCancel(ctx)
	stall := s.watchStall()
	defer stall.stop(errs, idx)
	var wg sync.WaitGroup
	wg.Add(len(idx))
	for _, i := range idx {
		r := recs[i]
		// A retry produces the record anew: franz-go fails a batch whose
		// first record's Timestamp is older than publish_timeout, so a
		// record keeping its first attempt's would fail at once on every
		// retry once the brokers had been away that long.
		r.Partition, r.Offset, r.Timestamp = 0, 0, time.Time{}
		s.pub.client.Produce(pctx, r, func(_ *kgo.Record, err error) {
			errs[i] = err
			wg.Done()
		})
	}
	wg.Wait()
	return errs
}

// ErrNoAnswer reports a produce the brokers have not answered within
// publish_timeout: the idempotent producer does not fail records it may
// have stored, so it waits for the brokers to come back, and meanwhile the
// sink reports itself not ready with this error (which matches
// bus.ErrDisconnected).
var ErrNoAnswer = fmt.Errorf("%w: the brokers have not answered a produce", bus.ErrDisconnected)

// stallWatch marks the sink not ready while a produce waits longer than
// publish_timeout; the next produce that ends with every record stored
// marks it ready again.
type stallWatch struct {
	s     *Sink
	timer *time.Timer
	mu    sync.Mutex
	ended bool
}

// watchStall starts watching a produce.
func (s *Sink) watchStall() *stallWatch {
	w := &stallWatch{s: s}
	if s.opts.Health == nil {
		return w
	}
	w.timer = time.AfterFunc(s.opts.PublishTimeout, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.ended {
			s.stalled.Store(true)
			s.opts.Health.Set(s.opts.Name, fmt.Errorf("%w for over %s", ErrNoAnswer, s.opts.PublishTimeout))
		}
	})
	return w
}

// stop ends the watch of a produce whose outcome is errs[i] for each i of
// idx.
func (w *stallWatch) stop(errs []error, idx []int) {
	if w.timer == nil {
		return
	}
	w.timer.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	for _, i := range idx {
		if errs[i] != nil {
			return
		}
	}
	if w.s.stalled.CompareAndSwap(true, false) {
		w.s.opts.Health.Set(w.s.opts.Name, nil)
	}
}

// permanent tells a produce error no retry mends.
func permanent(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) || errors.Is(err, kerr.CorruptMessage)
}

// withKey returns ev's meta with MetaKey replaced by {"key": KEY}, or
// removed when there is no key: a record's coordinates read from Kafka are
// not copied into the records produced.
func (s *Sink) withKey(ev pipeline.Event) ([]byte, error) {
	meta := ev.Meta
	if gjson.GetBytes(meta, MetaKey).Exists() {
		var err error
		if meta, err = sjson.DeleteBytes(meta, MetaKey); err != nil {
			return nil, err
		}
	}
	if s.key == nil {
		return meta, nil
	}
	v, err := s.key.Eval(ev)
	if err != nil {
		return nil, fmt.Errorf("%w: key %s: %w", ErrKey, s.key, err)
	}
	var key string
	switch v.Kind() {
	case expr.String:
		key, _ = v.Str()
	case expr.Number, expr.Bool:
		key = v.String()
	case expr.Missing, expr.Null:
		return meta, nil
	default:
		return nil, fmt.Errorf("%w: key %s: the value is %s, want a string, number or boolean", ErrKey, s.key, v.Kind())
	}
	obj, _ := json.Marshal(map[string]string{"key": key})
	if len(meta) == 0 {
		meta = []byte(`{}`)
	}
	return sjson.SetRawBytes(meta, MetaKey, obj)
}

// Close closes the producer; every record was stored (or failed) before
// Process returned.
func (s *Sink) Close(context.Context) error { return s.pub.Close() }

// setError returns meta with "error" set to msg.
func setError(meta []byte, msg string) []byte {
	if len(meta) == 0 {
		meta = []byte(`{}`)
	}
	out, err := sjson.SetBytes(meta, "error", msg)
	if err != nil {
		return meta
	}
	return out
}
