package mqtt

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"

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
	// onPublish receives the messages, in arrival order. paho acks each
	// as onPublish returns, through session: a session that drops those
	// acks leaves them to the caller.
	onPublish func(paho5.PublishReceived) (bool, error)
	// session is the client's session state (nil for paho's own).
	session session.SessionManager
}

// connect dials the broker and connects an MQTT 5 client on the
// connection, which it returns too (for writes of the caller's own, made
// under its lock: see lingerConn). The client's Done channel is closed
// when the connection ends, whatever the reason.
func (c client5) connect(ctx context.Context) (*paho5.Client, *lingerConn, error) {
	o := c.opts
	addr, secure, err := address5(o.URL)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrOptions, err)
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
		return nil, nil, err
	}
	lc := newLingerConn(conn, o.ConnectTimeout)
	cfg := paho5.ClientConfig{
		ClientID:      c.clientID,
		Conn:          lc,
		Session:       c.session,
		PacketTimeout: c.packetTimeout,
		// Errors end the connection (Done): the caller watches that.
		OnClientError:      func(error) {},
		OnServerDisconnect: func(*paho5.Disconnect) {},
	}
	if c.onPublish != nil {
		cfg.OnPublishReceived = []func(paho5.PublishReceived) (bool, error){c.onPublish}
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
		_ = lc.Close()
		if ca != nil {
			return nil, nil, fmt.Errorf("%w (reason code %#x)", err, ca.ReasonCode)
		}
		return nil, nil, err
	}
	return client, lc, nil
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
//
// It is also a sync.Locker, which paho.golang takes around each packet it
// writes (packets.ControlPacket.WriteTo): it writes a packet in several
// Write calls, and writes from several goroutines (publishes, acks,
// pings), so without the lock two packets could interleave on the wire.
// Writes of the connection's user take it too.
//
// It reads through a buffer: paho.golang and paho.mqtt.golang read each
// packet in at least three reads (its first byte, its length a byte at a
// time, the rest), which were three system calls per message received, and
// the buffer serves a run of packets with one. Each Read still makes at
// most one read of the connection, so it waits no longer than the
// connection would. The client reads from one goroutine at a time.
type lingerConn struct {
	net.Conn
	sync.Mutex // held around each packet written
	linger     time.Duration
	r          *bufio.Reader // nil: reads are not buffered
	once       sync.Once
	err        error
}

// readBuffer is the size of a lingerConn's read buffer.
const readBuffer = 16 << 10

// newLingerConn returns conn lingering at most linger at Close, its reads
// buffered.
func newLingerConn(conn net.Conn, linger time.Duration) *lingerConn {
	return &lingerConn{Conn: conn, linger: linger, r: bufio.NewReaderSize(conn, readBuffer)}
}

// Read implements net.Conn.
func (c *lingerConn) Read(b []byte) (int, error) {
	if c.r == nil {
		return c.Conn.Read(b)
	}
	return c.r.Read(b)
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
