package mqtt

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// Defaults for Options, SourceOptions and SinkOptions.
const (
	// DefaultURL is the broker address used when none is given.
	DefaultURL = "tcp://127.0.0.1:1883"
	// DefaultConnectTimeout bounds connecting and subscribing.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultKeepAlive is the MQTT keep-alive interval: a broker that
	// answers no ping within it is taken as lost.
	DefaultKeepAlive = 30 * time.Second
	// DefaultPublishTimeout bounds the wait for the broker's PUBACK.
	DefaultPublishTimeout = 10 * time.Second
	// DefaultMaxInflight is the most messages a source processes
	// unsettled: bus.DefaultWindowsInFlight windows, as the other bus
	// sources hold, so that while one window's puts are synced the next
	// ones are read and processed (their puts share the next sync).
	DefaultMaxInflight = bus.DefaultWindowsInFlight * bus.DefaultWindow
	// DefaultQoS is the QoS of subscriptions and publishes: at least once.
	DefaultQoS = 1
	// DeadLetterSuffix is appended to a topic without wildcards to name
	// its default dead-letter topic.
	DeadLetterSuffix = "/dead"
	// disconnectQuiesce is how long a disconnect waits for work in
	// progress (acks being written) before closing.
	disconnectQuiesce = 250
)

// Codecs: how an event is written in an MQTT payload.
const (
	// CodecJSON carries the event's data alone: any producer's JSON
	// payload is read as data, and a published payload is the data. Meta
	// is not carried (MQTT 3.1.1 has no headers).
	CodecJSON = "json"
	// CodecEvent carries {"data": ..., "meta": {...}}, meta.message_id
	// naming the message: meta (correlation, kv commands) crosses the
	// broker, and redeliveries have a stable id.
	CodecEvent = "event"
)

// IDHash, as SourceOptions.IDFrom, makes meta.message_id a hash of the
// topic and payload: stable across redeliveries, but two messages with the
// same payload on the same topic share it.
const IDHash = "hash"

// SourceMetaKey is the meta field of a dead letter holding the MetaKey
// fields of the message it was made from (MetaKey then describes the
// dead letter itself).
const SourceMetaKey = "mqtt_source"

// MetaKey is the event meta field holding the MQTT fields of a received
// message: {"topic": ..., "qos": 0|1|2, "retained": bool, "duplicate": bool}.
const MetaKey = "mqtt"

// Errors.
var (
	// ErrOptions reports options that cannot work.
	ErrOptions = errors.New("invalid mqtt options")
	// ErrRefused reports a subscription the broker refused.
	ErrRefused = errors.New("subscription refused by the broker")
)

// Options say how to reach the broker.
type Options struct {
	// URL is the broker's address: tcp://, ssl:// (or tls://, mqtts://),
	// ws:// or wss://. Default DefaultURL.
	URL string
	// ClientID identifies the client to the broker; with a persistent
	// session the broker keeps the subscription and the messages under it.
	// Two clients with the same id take the session from each other.
	// Required.
	ClientID string
	// Username and Password authenticate, when Username is set.
	Username, Password string
	// TLS configures TLS for ssl://, tls://, mqtts:// and wss:// URLs; nil
	// for the system roots.
	TLS *tls.Config
	// ConnectTimeout bounds connecting, subscribing and disconnecting.
	// Default DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// KeepAlive is the keep-alive interval. Default DefaultKeepAlive.
	KeepAlive time.Duration
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
	// Protocol is the MQTT version spoken: Protocol311 (paho.mqtt.golang)
	// or Protocol5 (paho.golang, see options5.go). Default Protocol311.
	Protocol string
	// SessionExpiry is how long the broker keeps a source's session (its
	// subscription and queued messages) after a disconnect: the Session
	// Expiry Interval of MQTT 5, in whole seconds. With MQTT 3.1.1 the
	// broker decides (mosquitto's persistent_client_expiration). Default
	// DefaultSessionExpiry.
	SessionExpiry time.Duration
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Protocol == "" {
		o.Protocol = Protocol311
	}
	if o.SessionExpiry <= 0 {
		o.SessionExpiry = DefaultSessionExpiry
	}
}

// SourceOptions configure NewSource.
type SourceOptions struct {
	Options
	// Topic is the topic filter subscribed to; + and # are wildcards.
	// Required.
	Topic string
	// QoS is the subscription's QoS: the highest QoS the broker delivers
	// with. Not defaulted: the zero value is QoS 0 (at most once, nothing
	// acknowledged); set DefaultQoS for at least once.
	QoS byte
	// Codec is CodecJSON or CodecEvent. Default CodecJSON.
	Codec string
	// MaxInflight is the most messages handed to the flow and not yet
	// settled (acked, nacked or dead-lettered); more wait, received but
	// unacknowledged. It bounds what a crash makes the flow process
	// again, whatever the broker sends. Default DefaultMaxInflight.
	MaxInflight int
	// IDFrom says where meta.message_id comes from: "" for the envelope's
	// meta.message_id (CodecEvent; none with CodecJSON), IDHash, or a
	// gjson path in the data ("event_id", "header.id") whose string or
	// number value is the id; a message without it is dead-lettered.
	IDFrom string
	// Source configures windows, retries and dead letters; its Topic is
	// Topic and its DeadLetter defaults to Topic + DeadLetterSuffix (a
	// filter with wildcards needs one).
	Source bus.SourceOptions
	// Reconnect says how a lost or unreachable broker is retried.
	Reconnect bus.Reconnect
	// Health, when set, reports the source not ready while disconnected.
	Health *component.Health
}

// SinkOptions configure NewSink.
type SinkOptions struct {
	Options
	// Name is the sink node's name. Default "mqtt".
	Name string
	// Topic is the topic published to, without wildcards. Required.
	Topic string
	// QoS of the publishes: 0 (no acknowledgement), 1 or 2. Not
	// defaulted: set DefaultQoS for at least once.
	QoS byte
	// Retain asks the broker to keep the last message of the topic for
	// future subscribers.
	Retain bool
	// Codec is CodecJSON or CodecEvent. Default CodecJSON.
	Codec string
	// PublishTimeout bounds the wait for the broker's acknowledgement,
	// and (protocol 5) the retries of a publish the broker refuses with a
	// transient reason code (see RefusedError). Default
	// DefaultPublishTimeout.
	PublishTimeout time.Duration
	// Reconnect, when set, retries failed publishes (see bus.SinkOptions);
	// with protocol 5 its backoff also paces the retries of a transient
	// refusal.
	Reconnect *bus.Reconnect
	// Health, when set, reports the sink not ready while it retries.
	Health *component.Health
}

func checkCodec(codec string) error {
	if codec != CodecJSON && codec != CodecEvent {
		return fmt.Errorf("%w: codec %q: want %q or %q", ErrOptions, codec, CodecJSON, CodecEvent)
	}
	return nil
}

func checkQoS(q byte) error {
	if q > 2 {
		return fmt.Errorf("%w: qos %d: want 0, 1 or 2", ErrOptions, q)
	}
	return nil
}

// CheckFilter reports whether filter is a valid topic filter: not empty,
// '#' only as the whole last level, '+' only as a whole level, no NUL.
func CheckFilter(filter string) error {
	if filter == "" {
		return errors.New("empty topic")
	}
	if strings.ContainsRune(filter, 0) {
		return errors.New("topic holds a NUL character")
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return fmt.Errorf("topic %q: '#' must be the last level", filter)
		case l != "#" && strings.Contains(l, "#"), l != "+" && strings.Contains(l, "+"):
			return fmt.Errorf("topic %q: a wildcard ('+', '#') must be a whole level", filter)
		}
	}
	return nil
}

// CheckTopicName reports whether name is a topic one can publish to: a
// valid filter without wildcards.
func CheckTopicName(name string) error {
	if err := CheckFilter(name); err != nil {
		return err
	}
	if HasWildcard(name) {
		return fmt.Errorf("topic %q: wildcards ('+', '#') are for subscriptions, not for publishing", name)
	}
	return nil
}

// HasWildcard reports whether filter has a '+' or '#' level.
func HasWildcard(filter string) bool { return strings.ContainsAny(filter, "+#") }

// Match reports whether the topic name matches filter. As MQTT says, a
// filter starting with a wildcard matches no topic starting with '$'.
func Match(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(t) || (l != "+" && l != t[i]) {
			return false
		}
	}
	return len(f) == len(t)
}

// DefaultDeadLetter returns the dead-letter topic of filter, or "" when it
// has wildcards (a dead-letter topic must then be given).
func DefaultDeadLetter(filter string) string {
	if HasWildcard(filter) {
		return ""
	}
	return filter + DeadLetterSuffix
}

// checkDeadLetter refuses a dead-letter topic that cannot be published to
// or that the source's own filter matches (dead letters would come back).
func checkDeadLetter(filter, dead string) error {
	if dead == "" {
		return fmt.Errorf("topic %q has wildcards: give a dead_letter topic outside it", filter)
	}
	if err := CheckTopicName(dead); err != nil {
		return fmt.Errorf("dead_letter: %w", err)
	}
	if Match(filter, dead) {
		return fmt.Errorf("dead_letter %q matches the topic %q: dead letters would be read again", dead, filter)
	}
	return nil
}
