package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
)

// client5 says how to make an MQTT 5 client.
type client5 struct {
	opts     Options
	clientID string
	// cleanStart false with sessionExpiry > 0 makes a persistent session.
	cleanStart    bool
	sessionExpiry time.Duration
	// receiveMax, when > 0, is the Receive Maximum: the most QoS 1 and 2
	// messages the broker sends unacknowledged.
	receiveMax int
	// packetTimeout bounds the wait for an answer to a publish or
	// subscribe.
	packetTimeout time.Duration
	// onPublish receives the messages, in arrival order; with it the
	// acknowledgements are manual (paho5.Client.Ack).
	onPublish func(paho5.PublishReceived) (bool, error)
	// session is the client's session state (nil for paho's own).
	session session.SessionManager
}

// connect dials the broker and connects an MQTT 5 client on the
// connection. The client's Done channel is closed when the connection
// ends, whatever the reason.
func (c client5) connect(ctx context.Context) (*paho5.Client, error) {
	o := c.opts
	addr, secure, err := address5(o.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	d := &net.Dialer{Timeout: o.ConnectTimeout}
	var conn net.Conn
	if secure {
		cfg := o.TLS
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		conn, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	if secure {
		// paho.golang writes from several goroutines (publishes, acks,
		// pings): its own advice is this wrapper for TLS connections.
		conn = packets.NewThreadSafeConn(conn)
	}
	conn = &lingerConn{Conn: conn, linger: o.ConnectTimeout}
	cfg := paho5.ClientConfig{
		ClientID:      c.clientID,
		Conn:          conn,
		Session:       c.session,
		PacketTimeout: c.packetTimeout,
		// Errors end the connection (Done): the caller watches that.
		OnClientError:      func(error) {},
		OnServerDisconnect: func(*paho5.Disconnect) {},
	}
	if c.onPublish != nil {
		cfg.OnPublishReceived = []func(paho5.PublishReceived) (bool, error){c.onPublish}
		cfg.EnableManualAcknowledgment = true
		cfg.SendAcksInterval = ackInterval5
	}
	client := paho5.NewClient(cfg)
	expiry := uint32(c.sessionExpiry / time.Second)
	props := &paho5.ConnectProperties{SessionExpiryInterval: &expiry, RequestProblemInfo: true}
	if c.receiveMax > 0 {
		rm := uint16(min(c.receiveMax, math.MaxUint16))
		props.ReceiveMaximum = &rm
	}
	cp := &paho5.Connect{
		ClientID:   c.clientID,
		KeepAlive:  uint16(min(o.KeepAlive/time.Second, math.MaxUint16)),
		CleanStart: c.cleanStart,
		Properties: props,
	}
	if o.Username != "" {
		cp.Username, cp.UsernameFlag = o.Username, true
		cp.Password, cp.PasswordFlag = []byte(o.Password), true
	}
	ca, err := client.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		if ca != nil {
			return nil, fmt.Errorf("%w (reason code %#x)", err, ca.ReasonCode)
		}
		return nil, err
	}
	return client, nil
}

// closed reports whether client's connection has ended.
func closed(client *paho5.Client) bool {
	select {
	case <-client.Done():
		return true
	default:
		return false
	}
}

// disconnect5 sends DISCONNECT (normal disconnection: the session is kept
// for its expiry interval) and closes the connection.
func disconnect5(client *paho5.Client) {
	if !closed(client) {
		_ = client.Disconnect(&paho5.Disconnect{ReasonCode: 0})
	}
	<-client.Done()
}

// lingerConn is a connection whose Close waits, at most linger, for the
// broker to close its side first, reading and dropping what it still
// sends. paho.golang closes the connection right after writing DISCONNECT;
// a broker that meanwhile sends a message (one freed by the acks just
// written) would then get a reset, and a reset makes its system drop what
// it had received and not yet read: the last acks and the DISCONNECT
// (seen with mosquitto: the messages come again at the next start).
type lingerConn struct {
	net.Conn
	linger time.Duration
	once   sync.Once
	err    error
}

// Close implements net.Conn.
func (c *lingerConn) Close() error {
	c.once.Do(func() {
		if c.Conn.SetReadDeadline(time.Now().Add(c.linger)) == nil {
			_, _ = io.Copy(io.Discard, c.Conn) // until the broker's EOF, an error or the deadline
		}
		c.err = c.Conn.Close()
	})
	return c.err
}
