package mqtt

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strings"
	"time"
)

// Protocol versions (Options.Protocol).
const (
	// Protocol311 is MQTT 3.1.1, through github.com/eclipse/paho.mqtt.golang.
	Protocol311 = "3.1.1"
	// Protocol5 is MQTT 5, through github.com/eclipse/paho.golang: the
	// source asks for a Session Expiry Interval (Options.SessionExpiry) and
	// a Receive Maximum (SourceOptions.MaxInflight), and with CodecJSON
	// event meta crosses the broker as user properties (see
	// UserProperties).
	Protocol5 = "5"
)

// DefaultSessionExpiry is the Session Expiry Interval a source asks for
// with Protocol5: a flow stopped for less than a week finds its
// subscription and the messages published meanwhile when it starts again.
const DefaultSessionExpiry = 7 * 24 * time.Hour

// maxSessionExpiry is the longest Session Expiry Interval below MQTT 5's
// 0xFFFFFFFF, which means "never expires".
const maxSessionExpiry = time.Duration(math.MaxUint32-1) * time.Second

// checkProtocol reports a protocol or session expiry that cannot work.
func (o *Options) checkProtocol() error {
	switch o.Protocol {
	case Protocol311:
		return nil
	case Protocol5:
	default:
		return fmt.Errorf("%w: protocol %q: want %q or %q", ErrOptions, o.Protocol, Protocol311, Protocol5)
	}
	if o.SessionExpiry < time.Second || o.SessionExpiry > maxSessionExpiry {
		return fmt.Errorf("%w: session_expiry %v: want 1s to %v", ErrOptions, o.SessionExpiry, maxSessionExpiry)
	}
	if _, _, err := address5(o.URL); err != nil {
		return fmt.Errorf("%w: %w", ErrOptions, err)
	}
	return nil
}

// address5 returns the host:port of url and whether it asks for TLS.
// Protocol5 speaks MQTT over TCP or TLS; WebSockets are for Protocol311.
func address5(rawURL string) (addr string, secure bool, err error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", false, fmt.Errorf("url %q: %w", rawURL, err)
	}
	port := "1883"
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
	case "ssl", "tls", "mqtts", "tcps":
		secure, port = true, "8883"
	default:
		return "", false, fmt.Errorf("url %q: protocol %s wants tcp://, mqtt://, ssl://, tls://, mqtts:// or tcps:// (WebSockets only with protocol %s)",
			rawURL, Protocol5, Protocol311)
	}
	if u.Host == "" {
		return "", false, fmt.Errorf("url %q: no host", rawURL)
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), port), secure, nil
	}
	return u.Host, secure, nil
}
