package mqtt

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"golang.org/x/net/proxy"
)

// MQTT 3.1.1 source connections write their PUBACKs themselves, a run of
// them in one write, instead of through paho.mqtt.golang, which passes each
// ack through two goroutines of its own and writes it alone (about a fifth
// of the flow's CPU per message). The connection paho uses is wrapped
// (ackConn) so that these writes and paho's own never interleave; paho's
// store does not keep the QoS 1 messages received (ackStore), since paho
// never sends their acks and so would never delete them. QoS 2 messages
// are still acknowledged through paho (PUBREC, then its PUBREL/PUBCOMP
// exchange): MQTT orders each kind of ack on its own (3.1.1 §4.6).

// pubackLen is the length of a PUBACK packet: fixed header (type 4, flags
// 0, remaining length 2) and the packet identifier.
const pubackLen = 4

// appendPuback appends the PUBACK packet of the message with packet
// identifier id.
func appendPuback(b []byte, id uint16) []byte {
	return append(b, packets.Puback<<4, 2, byte(id>>8), byte(id))
}

// ackConn is the network connection of a source's paho client: a
// lingerConn (reads through a buffer; Close waits for the broker to close
// first: paho closes the connection right after writing DISCONNECT, and the
// reset a broker then sending a message would get makes it drop the last
// acks, TestAcksReachTheBroker) whose every Write holds the lock, so the
// connection's batch of PUBACKs never lands inside a packet of paho's
// (paho writes each packet a subscriber sends — CONNECT, SUBSCRIBE,
// PINGREQ, PUBREC, PUBCOMP, DISCONNECT — in one Write).
type ackConn struct{ *lingerConn }

// Write implements net.Conn.
func (c *ackConn) Write(b []byte) (int, error) {
	c.Lock()
	defer c.Unlock()
	return c.Conn.Write(b)
}

// ackStore is paho's in-memory store without the QoS 1 messages received:
// paho keeps such a message until it sends its PUBACK itself, which a
// source connection never asks it to do.
type ackStore struct{ paho.Store }

// Put stores p under key, except a QoS 1 PUBLISH received.
func (s ackStore) Put(key string, p packets.ControlPacket) {
	if pub, ok := p.(*packets.PublishPacket); ok && pub.Qos == 1 && strings.HasPrefix(key, "i.") {
		return
	}
	s.Store.Put(key, p)
}

// errScheme reports a broker URL scheme paho does not know.
var errScheme = errors.New("unknown protocol")

// openConn returns a paho OpenConnectionFunc that opens the connection as
// paho does (tcp and mqtt through a proxy named by ALL_PROXY when there is
// one, the TLS schemes, WebSockets, Unix sockets) and records it, wrapped,
// in *conn.
func openConn(conn **ackConn) paho.OpenConnectionFunc {
	return func(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
		c, err := dialLikePaho(uri, o)
		if err != nil {
			return nil, err
		}
		*conn = &ackConn{newLingerConn(c, o.ConnectTimeout)}
		return *conn, nil
	}
}

// dialLikePaho is paho.mqtt.golang v1.5.1's openConnection.
func dialLikePaho(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	dialer := o.Dialer
	if dialer == nil {
		dialer = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	switch uri.Scheme {
	case "ws", "wss":
		dialURI := *uri // paho's #623: gorilla refuses URLs with a user
		dialURI.User = nil
		var tlsc *tls.Config
		if uri.Scheme == "wss" {
			tlsc = o.TLSConfig
		}
		return paho.NewWebsocket(dialURI.String(), tlsc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	case "mqtt", "tcp":
		return proxy.FromEnvironmentUsing(dialer).Dial("tcp", uri.Host)
	case "unix":
		if len(uri.Host) > 0 {
			return dialer.Dial("unix", uri.Host)
		}
		return dialer.Dial("unix", uri.Path)
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps":
		if os.Getenv("all_proxy") == "" {
			return tls.DialWithDialer(dialer, "tcp", uri.Host, o.TLSConfig)
		}
		conn, err := proxy.FromEnvironment().Dial("tcp", uri.Host)
		if err != nil {
			return nil, err
		}
		tlsConn := tls.Client(conn, o.TLSConfig)
		if err := tlsConn.Handshake(); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return tlsConn, nil
	}
	return nil, errScheme
}
