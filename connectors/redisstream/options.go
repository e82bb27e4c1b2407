package redisstream

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/connectors/bus"
)

// Defaults for Options.
const (
	// DefaultURL is the server used when none is given.
	DefaultURL = "redis://127.0.0.1:6379"
	// DefaultClaimIdle is how long a consumer must be unresponsive before
	// another takes over its entries.
	DefaultClaimIdle = 30 * time.Second
	// DefaultRetryDelay is how long a failed entry waits before it is
	// delivered again.
	DefaultRetryDelay = 100 * time.Millisecond
	// DefaultDialTimeout bounds connecting, and flushing acks at shutdown.
	DefaultDialTimeout = 5 * time.Second
	// blockFor is how long one XREADGROUP waits for new entries: short
	// enough that a stop is noticed soon, long enough to cost nothing.
	blockFor = 250 * time.Millisecond
	// readLinger is how long the reader waits for more slots to free up
	// once some are, when fewer than a quarter of the window are.
	readLinger = 2 * time.Millisecond
	// maxClaimEvery bounds the wait between two XAUTOCLAIM scans.
	maxClaimEvery = 5 * time.Second
)

// ErrConfig reports options that cannot work.
var ErrConfig = errors.New("invalid redis_streams options")

// ErrConnect reports a Redis server that could not be reached or set up.
var ErrConnect = errors.New("cannot reach Redis")

// Options say how to reach Redis and which stream to use.
type Options struct {
	// URL is the server, redis://[user:password@]host:port[/db], or
	// rediss:// for TLS. Default DefaultURL.
	URL string
	// Stream is the stream read or appended to. Required.
	Stream string
	// Group is the consumer group of a source, created (from the start
	// of the stream) when missing. Processes in one group share its
	// entries. Required for a source.
	Group string
	// Consumer is the consumer's name in Group. It must be the same when
	// a process restarts, to read back what it had not acknowledged, and
	// differ between processes of a group. Required for a source.
	Consumer string
	// ClaimIdle is how long an entry must stay idle (its consumer
	// unresponsive: dead, or paused) before another consumer of the group
	// takes it over. A live consumer resets the idle time of its entries
	// every ClaimIdle/2 at most, so a slow entry stays with it. Default
	// DefaultClaimIdle.
	ClaimIdle time.Duration
	// RetryDelay is how long a failed entry waits, pending, before its
	// consumer claims it back and delivers it again. Default
	// DefaultRetryDelay.
	RetryDelay time.Duration
	// MaxLen, when above zero, trims the stream to about MaxLen entries
	// on every append (XADD MAXLEN ~). Sink only.
	MaxLen int64
	// DialTimeout bounds connecting. Default DefaultDialTimeout.
	DialTimeout time.Duration
	// TLSCA, TLSCert and TLSKey are PEM files: the CA that signed the
	// server's certificate, and the client's certificate and key. Setting
	// one turns TLS on, as does a rediss:// URL.
	TLSCA, TLSCert, TLSKey string
	// TLSInsecureSkipVerify accepts any server certificate.
	TLSInsecureSkipVerify bool
	// Logger receives warnings. Default slog.Default().
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.ClaimIdle <= 0 {
		o.ClaimIdle = DefaultClaimIdle
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// claimEvery is the wait between two XAUTOCLAIM scans.
func (o *Options) claimEvery() time.Duration { return min(o.ClaimIdle/2, maxClaimEvery) }

// redacted returns the URL without its password, for messages.
func (o *Options) redacted() string {
	u, err := url.Parse(o.URL)
	if err != nil {
		return "(unparsable url)"
	}
	return u.Redacted()
}

// clientOptions parses the URL and TLS options into go-redis options.
func (o *Options) clientOptions(name string) (*redis.Options, error) {
	ro, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: url %s: %w", ErrConfig, o.redacted(), err)
	}
	ro.ClientName = "flowrun-" + name
	ro.DialTimeout = o.DialTimeout
	// Blocking reads are cut short when the source stops.
	ro.ContextTimeoutEnabled = true
	tlsConf, err := bus.TLS{CA: o.TLSCA, Cert: o.TLSCert, Key: o.TLSKey, InsecureSkipVerify: o.TLSInsecureSkipVerify}.Config()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if tlsConf != nil {
		if ro.TLSConfig != nil { // a rediss:// URL: keep its server name
			tlsConf.ServerName = ro.TLSConfig.ServerName
		} else {
			tlsConf.ServerName, _, _ = splitHost(ro.Addr)
		}
		ro.TLSConfig = tlsConf
	}
	return ro, nil
}

func splitHost(addr string) (host, port string, err error) {
	u, err := url.Parse("//" + addr)
	if err != nil {
		return "", "", err
	}
	return u.Hostname(), u.Port(), nil
}
