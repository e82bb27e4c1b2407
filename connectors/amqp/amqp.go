package amqp

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/flowrun/flowrun/connectors/bus"
)

// Defaults for Options.
const (
	// DefaultURL is the broker address used when none is given.
	DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"
	// DefaultConnectTimeout bounds connecting to the broker.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultExchangeType is the type of an exchange the connector
	// declares.
	DefaultExchangeType = "direct"
)

// What the connector declares (Options.Declare).
const (
	// DeclareDurable declares what is missing: a durable queue (and
	// dead-letter queue), a durable exchange, the binding.
	DeclareDurable = "durable"
	// DeclarePassive only checks that the queue and exchange exist.
	DeclarePassive = "passive"
	// DeclareNone declares and checks nothing.
	DeclareNone = "none"
)

// Queue types (Options.QueueType).
const (
	// QueueClassic is RabbitMQ's classic queue: it gives no delivery
	// count, so flowrun counts each message id's failures itself.
	QueueClassic = "classic"
	// QueueQuorum is a replicated quorum queue, which counts deliveries
	// (header x-delivery-count).
	QueueQuorum = "quorum"
)

// Metadata keys the source sets from the delivery (meta fields of the
// event).
const (
	// ExchangeMeta is the exchange the message was published to ("" for
	// the default exchange).
	ExchangeMeta = "amqp_exchange"
	// RoutingKeyMeta is the routing key it was published with.
	RoutingKeyMeta = "amqp_routing_key"
	// deliveryCountHeader is the quorum queues' count of earlier
	// deliveries, absent on the first one.
	deliveryCountHeader = "x-delivery-count"
)

// Errors of the connector.
var (
	// ErrConnect reports a broker that could not be reached or set up.
	ErrConnect = errors.New("cannot reach the AMQP broker")
	// ErrNacked reports a message the broker refused (a publisher
	// confirm's nack).
	ErrNacked = errors.New("the broker nacked the message")
	// ErrUnroutable reports a mandatory message the broker returned: no
	// queue is bound to its exchange with its routing key.
	ErrUnroutable = errors.New("the broker returned the message as unroutable")
	// ErrBlocked reports a broker that has blocked its publishers
	// (RabbitMQ's connection.blocked, sent under a memory or disk alarm):
	// a sink is not ready, its publishes waiting, until it unblocks them.
	ErrBlocked = errors.New("the broker has blocked publishing")
)

// Options say how to reach RabbitMQ and what to consume or publish to.
type Options struct {
	// URL is the broker's address, amqp://USER:PASS@HOST:PORT/VHOST (or
	// amqps://). Default DefaultURL.
	URL string
	// Queue is the queue consumed (required for a source); for a sink,
	// with Exchange "", the queue published to.
	Queue string
	// Exchange is the exchange a sink publishes to and a source's queue is
	// bound to. "" is the default exchange, which routes by queue name.
	Exchange string
	// ExchangeType is the type of Exchange when it is declared. Default
	// DefaultExchangeType.
	ExchangeType string
	// RoutingKey is a sink's routing key, and the key binding a source's
	// queue to Exchange. Default Queue.
	RoutingKey string
	// Declare says what is declared: DeclareDurable, DeclarePassive or
	// DeclareNone. Default DeclareDurable.
	Declare string
	// QueueType is the type of the queue when it is declared: QueueClassic
	// or QueueQuorum. Default QueueClassic.
	QueueType string
	// DeadLetterExchange, when set, makes the source dead-letter through
	// the broker: the queue is declared with it as x-dead-letter-exchange
	// (with DeclareDurable, also the fanout exchange itself and a durable
	// queue DeadLetter bound to it), and a message to dead-letter is nacked
	// without requeue. Otherwise the source publishes dead letters to the
	// queue DeadLetter itself.
	DeadLetterExchange string
	// MessageIDHash gives a message without a message_id property the id
	// "sha256:" + a hash of its exchange, routing key, headers and body,
	// the same on every delivery (two identical messages share it).
	// Without it such a message gets a random id per delivery.
	MessageIDHash bool
	// Mandatory makes the broker return a published message that no queue
	// receives; the sink reports it on err. Default false: set it (the
	// connector spec's default is true).
	Mandatory bool
	// TLSCA is a CA bundle (PEM) verifying the broker's certificate,
	// instead of the system's roots; TLSCert and TLSKey a client
	// certificate and its key (PEM). They need an amqps:// URL, which
	// uses TLS with the system's roots without them.
	TLSCA, TLSCert, TLSKey string
	// TLSInsecureSkipVerify skips verifying the broker's certificate (for
	// tests only).
	TLSInsecureSkipVerify bool
	// ConnectTimeout bounds connecting. Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.ExchangeType == "" {
		o.ExchangeType = DefaultExchangeType
	}
	if o.RoutingKey == "" {
		o.RoutingKey = o.Queue
	}
	if o.Declare == "" {
		o.Declare = DeclareDurable
	}
	if o.QueueType == "" {
		o.QueueType = QueueClassic
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports options that cannot work together.
func (o *Options) Validate() error {
	switch o.Declare {
	case DeclareDurable, DeclarePassive, DeclareNone:
	default:
		return fmt.Errorf("declare %q: want %q, %q or %q", o.Declare, DeclareDurable, DeclarePassive, DeclareNone)
	}
	switch o.QueueType {
	case QueueClassic, QueueQuorum:
	default:
		return fmt.Errorf("queue_type %q: want %q or %q", o.QueueType, QueueClassic, QueueQuorum)
	}
	_, err := o.tlsConfig()
	return err
}

// ErrTLS reports TLS options that cannot be used.
var ErrTLS = bus.ErrTLS

// tlsConfig returns the TLS configuration of the tls options, nil when
// none is set (an amqps:// URL then verifies with the system's roots).
// The files are read now, so a missing or unreadable one is reported when
// the flow is loaded.
func (o *Options) tlsConfig() (*tls.Config, error) {
	t := bus.TLS{CA: o.TLSCA, Cert: o.TLSCert, Key: o.TLSKey, InsecureSkipVerify: o.TLSInsecureSkipVerify}
	if !t.Set() {
		return nil, nil
	}
	if u, err := url.Parse(o.URL); err != nil || u.Scheme != "amqps" {
		return nil, fmt.Errorf("%w: tls_ options need an amqps:// url, not %s", ErrTLS, redacted(o.URL))
	}
	return t.Config()
}

// redacted is the URL without its password, for errors and logs.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable AMQP URL)"
	}
	return u.Redacted()
}

// dial opens a connection named after the node.
func dial(o *Options, name string) (*amqp091.Connection, error) {
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		return nil, bus.Permanent(err)
	}
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName("flowrun " + name)
	conn, err := amqp091.DialConfig(o.URL, amqp091.Config{
		Properties: props,
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Dial:       amqp091.DefaultDial(o.ConnectTimeout),
		// nil for amqp://; for amqps:// without tls_ options the client
		// verifies with the system's roots.
		TLSClientConfig: tlsCfg,
	})
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrConnect, redacted(o.URL), err)
	}
	return conn, nil
}

// declareHint is added to a declaration refused because what exists
// differs.
const declareHint = " (it exists with other properties: match them — queue_type, dead_letter_exchange, exchange_type — or set declare: passive or none)"

// setup declares, as o.Declare says, the exchange, the queue and their
// binding (for a sink, only what it publishes to).
func setup(ch *amqp091.Channel, o *Options) error {
	if o.Declare == DeclareNone {
		return nil
	}
	passive := o.Declare == DeclarePassive
	if o.Exchange != "" {
		declare := ch.ExchangeDeclare
		if passive {
			declare = ch.ExchangeDeclarePassive
		}
		if err := declare(o.Exchange, o.ExchangeType, true, false, false, false, nil); err != nil {
			return fmt.Errorf("exchange %q: %w%s", o.Exchange, err, hint(err))
		}
	}
	if o.Queue == "" {
		return nil
	}
	args := amqp091.Table{}
	if o.QueueType == QueueQuorum {
		args["x-queue-type"] = QueueQuorum
	}
	if o.DeadLetterExchange != "" {
		args["x-dead-letter-exchange"] = o.DeadLetterExchange
	}
	declare := ch.QueueDeclare
	if passive {
		declare = ch.QueueDeclarePassive
	}
	if _, err := declare(o.Queue, true, false, false, false, args); err != nil {
		return fmt.Errorf("queue %q: %w%s", o.Queue, err, hint(err))
	}
	if o.Exchange != "" && !passive {
		if err := ch.QueueBind(o.Queue, o.RoutingKey, o.Exchange, false, nil); err != nil {
			return fmt.Errorf("bind queue %q to exchange %q with key %q: %w", o.Queue, o.Exchange, o.RoutingKey, err)
		}
	}
	return nil
}

func hint(err error) string {
	var ae *amqp091.Error
	if errors.As(err, &ae) && ae.Code == amqp091.PreconditionFailed {
		return declareHint
	}
	return ""
}

// permanent marks an error that reconnecting cannot mend (bus.Permanent):
// the broker refused a declaration (precondition failed, not found with
// declare: passive) or access.
func permanent(err error) error {
	var ae *amqp091.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp091.PreconditionFailed, amqp091.NotFound, amqp091.AccessRefused, amqp091.NotAllowed:
			return bus.Permanent(err)
		}
	}
	return err
}

// setupDeadLetterExchange declares the fanout exchange dlx and the durable
// queue dead bound to it.
func setupDeadLetterExchange(ch *amqp091.Channel, dlx, dead string) error {
	if err := ch.ExchangeDeclare(dlx, "fanout", true, false, false, false, nil); err != nil {
		return fmt.Errorf("dead-letter exchange %q: %w%s", dlx, err, hint(err))
	}
	if _, err := ch.QueueDeclare(dead, true, false, false, false, nil); err != nil {
		return fmt.Errorf("dead-letter queue %q: %w%s", dead, err, hint(err))
	}
	if err := ch.QueueBind(dead, "", dlx, false, nil); err != nil {
		return fmt.Errorf("bind dead-letter queue %q to exchange %q: %w", dead, dlx, err)
	}
	return nil
}

// toMessage converts a delivery into a watermill message: the message_id
// property is its UUID (else a hash or a random id, see
// Options.MessageIDHash), headers are metadata (values as strings: tables
// and arrays as JSON), and the exchange and routing key are ExchangeMeta
// and RoutingKeyMeta. The correlation_id property stands for the header
// bus.CorrelationKey when that is absent. bus.DeliveredKey carries the
// delivery count when the broker gives one (quorum queues); see
// deliveries.
func toMessage(d *amqp091.Delivery, o *Options, maxDeliveries int) *message.Message {
	id, stable := d.MessageId, true
	if id == "" {
		if o.MessageIDHash {
			id = hashID(d)
		} else {
			id, stable = watermill.NewUUID(), false
		}
	}
	m := message.NewMessage(id, d.Body)
	for k, v := range d.Headers {
		if k == deliveryCountHeader {
			continue
		}
		m.Metadata.Set(k, headerString(v))
	}
	if d.CorrelationId != "" && m.Metadata.Get(bus.CorrelationKey) == "" {
		m.Metadata.Set(bus.CorrelationKey, d.CorrelationId)
	}
	m.Metadata.Set(ExchangeMeta, d.Exchange)
	m.Metadata.Set(RoutingKeyMeta, d.RoutingKey)
	if n, ok := deliveries(d, stable, maxDeliveries); ok {
		m.Metadata.Set(bus.DeliveredKey, strconv.Itoa(n))
	}
	return m
}

// deliveries returns the delivery count to give the source, when there is
// one: a quorum queue's x-delivery-count + 1. A classic queue counts
// nothing, so the source counts the failures of each message id itself;
// but a redelivered message without a stable id cannot be counted that
// way, so it is taken to be at its last delivery (maxDeliveries): one more
// failure dead-letters it. Such a message gets two deliveries, never an
// endless loop.
func deliveries(d *amqp091.Delivery, stable bool, maxDeliveries int) (int, bool) {
	if v, ok := d.Headers[deliveryCountHeader]; ok {
		if n, ok := headerInt(v); ok && n >= 0 {
			return int(n) + 1, true
		}
	}
	if d.Redelivered && !stable {
		return maxDeliveries, true
	}
	return 0, false
}

// headerInt reads an integer header value of any AMQP integer type.
func headerInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int8:
		return int64(n), true
	case int16:
		return int64(n), true
	case int32:
		return int64(n), true
	case int64:
		return n, true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	case uint64:
		return int64(n), true
	case string:
		i, err := strconv.ParseInt(n, 10, 64)
		return i, err == nil
	}
	return 0, false
}

// headerString renders a header value as a metadata string.
func headerString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []byte:
		return string(x)
	case bool:
		return strconv.FormatBool(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp091.Table, []any:
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	}
	if n, ok := headerInt(v); ok {
		return strconv.FormatInt(n, 10)
	}
	return fmt.Sprint(v)
}

// hashID is the id of a message without message_id under MessageIDHash:
// SHA-256 of its exchange, routing key, headers (sorted, but for the
// delivery count and x-death, which change between deliveries) and body.
func hashID(d *amqp091.Delivery) string {
	h := sha256.New()
	field := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(d.Exchange)
	field(d.RoutingKey)
	keys := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		if k != deliveryCountHeader && k != "x-death" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		field(k)
		field(headerString(d.Headers[k]))
	}
	field(string(d.Body))
	return "sha256:" + hex.EncodeToString(h.Sum(nil))[:32]
}

// toPublishing converts a message made by bus.ToMessage into a persistent
// AMQP message: its UUID is the message_id property, its metadata are
// headers, and the correlation metadata also sets correlation_id.
func toPublishing(m *message.Message) amqp091.Publishing {
	headers := make(amqp091.Table, len(m.Metadata))
	for k, v := range m.Metadata {
		headers[k] = v
	}
	corr := m.Metadata.Get(bus.CorrelationKey)
	if len(corr) > 255 {
		corr = "" // a short string property; the header still has it
	}
	return amqp091.Publishing{
		Headers:       headers,
		ContentType:   "application/json",
		DeliveryMode:  amqp091.Persistent,
		CorrelationId: corr,
		MessageId:     m.UUID,
		Timestamp:     time.Now(),
		Body:          m.Payload,
	}
}
