package kafka

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
)

// Defaults for Options.
const (
	// DefaultBroker is the seed broker used when none is given.
	DefaultBroker = "127.0.0.1:9092"
	// DefaultCommitInterval is how often a source commits the offsets its
	// partitions have reached. A process killed loses at most this much
	// committed progress: the records settled since are read again.
	DefaultCommitInterval = time.Second
	// DefaultRevokeWait bounds how long a source waits, when partitions
	// are revoked, for their records in flight to settle before it commits
	// and hands them over. It stays well below franz-go's default
	// rebalance timeout (60 s), which bounds the whole rebalance.
	DefaultRevokeWait = 10 * time.Second
	// DefaultSessionTimeout is how long the group waits for a silent member
	// (a killed process) before handing its partitions to others:
	// franz-go's default.
	DefaultSessionTimeout = 45 * time.Second
	// DefaultConnectTimeout bounds the first contact with the brokers.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultPublishTimeout bounds one produce, retries included; a sink
	// then fails the event (or, with reconnects, tries again).
	DefaultPublishTimeout = 10 * time.Second
	// DefaultLinger is how long a sink's producer lets a partition's
	// records wait for more before it sends them (SinkOptions.Linger): none.
	// The sink produces a slice of events together and waits for it, so
	// nothing comes to fill a lingering batch: franz-go's own default,
	// 10ms, made each slice take 11-12 ms on kfake where 0 takes 0.07-0.8
	// ms (1 and 256 records, loaded 2-core machine).
	DefaultLinger = time.Duration(0)
	// MaxLinger is the longest linger franz-go accepts.
	MaxLinger = time.Minute
	// DefaultMaxInFlight is the most records a source holds unsettled:
	// four windows, so that the kv store syncs one window while the next
	// ones are read (one window at a time measured 9k records/s on kfake,
	// four 25k, on a loaded 2-core machine).
	DefaultMaxInFlight = 4 * bus.DefaultWindow
	// StartEarliest starts a group with no committed offset at the
	// partitions' first record.
	StartEarliest = "earliest"
	// StartLatest starts a group with no committed offset after the
	// partitions' last record.
	StartLatest = "latest"
	// MetaKey is the event meta field (and message metadata key) holding
	// a record's topic, partition, offset and key.
	MetaKey = "kafka"
	// OriginHeader is the header of a dead letter holding the MetaKey
	// object of the record it comes from.
	OriginHeader = "kafka_origin"
)

// ErrOptions reports invalid Options.
var ErrOptions = errors.New("invalid kafka options")

// Options say how to reach Kafka and what to consume or produce.
type Options struct {
	// Name is the node's name, used in logs, errors and as the client id.
	// Default "kafka".
	Name string
	// Brokers are the seed brokers, host:port. Default DefaultBroker.
	Brokers []string
	// Topic is the topic consumed or produced to. Required.
	Topic string
	// Group is the consumer group of a source: processes sharing it share
	// the topic's partitions. Required for a source.
	Group string
	// Start says where a group with no committed offset starts:
	// StartEarliest (default) or StartLatest.
	Start string
	// CommitInterval is how often a source commits. Default
	// DefaultCommitInterval.
	CommitInterval time.Duration
	// RevokeWait bounds the wait for in-flight records of revoked
	// partitions. Default DefaultRevokeWait.
	RevokeWait time.Duration
	// SessionTimeout is how long the group waits for a silent member
	// before handing its partitions to others. Default
	// DefaultSessionTimeout; the broker bounds it (Kafka: 6 s to 30 min by
	// default).
	SessionTimeout time.Duration
	// MaxInFlight is the most records a source has handed over and not
	// yet settled, across its partitions. Default DefaultMaxInFlight.
	MaxInFlight int
	// ConnectTimeout bounds the first contact with the brokers. Default
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// PublishTimeout bounds one produce. Default DefaultPublishTimeout.
	PublishTimeout time.Duration
	// TLS, when set, connects with TLS (see TLSConfig).
	TLS *tls.Config
	// SASL, when set, authenticates every connection (see SASLMechanism).
	SASL sasl.Mechanism
	// Logger receives rebalances, commit failures and connection
	// trouble. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Name == "" {
		o.Name = "kafka"
	}
	if len(o.Brokers) == 0 {
		o.Brokers = []string{DefaultBroker}
	}
	if o.Start == "" {
		o.Start = StartEarliest
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = DefaultCommitInterval
	}
	if o.RevokeWait <= 0 {
		o.RevokeWait = DefaultRevokeWait
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = DefaultSessionTimeout
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports options that cannot work; it wraps ErrOptions.
func (o *Options) Validate() error {
	if o.Topic == "" {
		return fmt.Errorf("%s: %w: no topic", o.Name, ErrOptions)
	}
	if o.Start != StartEarliest && o.Start != StartLatest {
		return fmt.Errorf("%s: %w: start %q: want %q or %q", o.Name, ErrOptions, o.Start, StartEarliest, StartLatest)
	}
	return nil
}

// SASL mechanisms (option sasl_mechanism).
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// SASLMechanism returns the SASL mechanism of the options sasl_mechanism,
// sasl_user and sasl_password: nil when mechanism is "".
func SASLMechanism(mechanism, user, password string) (sasl.Mechanism, error) {
	if mechanism == "" {
		if user != "" || password != "" {
			return nil, errors.New("sasl_user and sasl_password need sasl_mechanism")
		}
		return nil, nil
	}
	if user == "" || password == "" {
		return nil, fmt.Errorf("sasl_mechanism %s needs sasl_user and sasl_password", mechanism)
	}
	switch mechanism {
	case SASLPlain:
		return plain.Auth{User: user, Pass: password}.AsMechanism(), nil
	case SASLScramSHA256:
		return scram.Auth{User: user, Pass: password}.AsSha256Mechanism(), nil
	case SASLScramSHA512:
		return scram.Auth{User: user, Pass: password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("sasl_mechanism %q: want %s, %s or %s", mechanism, SASLPlain, SASLScramSHA256, SASLScramSHA512)
}

// SourceOptions configure NewSource.
type SourceOptions struct {
	Options
	// Source configures the windowed emission, retries and dead letters;
	// its Topic is Options.Topic.
	Source bus.SourceOptions
	// Reconnect says what to do when the brokers are unreachable at start
	// (retry with backoff, or fail with FailFast) and, with FailFast, when
	// they go away later; otherwise franz-go reconnects by itself.
	Reconnect bus.Reconnect
	// Health, when set, reports the source not ready while the brokers
	// are unreachable.
	Health *component.Health
	// AttemptsDir, when set, is where the source keeps its durable attempt
	// record (a file per group and topic): for each partition, its lowest
	// unfinished offset and how many times handling that record began, so
	// that a record that kills the process is dead-lettered, unprocessed,
	// once handling it has begun Source.MaxDeliveries times (see
	// docs/bus.md). Unset: no record; such a record is read again on every
	// restart. One source of a group and topic uses a directory at a time
	// (ErrAttemptsInUse).
	AttemptsDir string
}
