package mqtt_test

import (
	"context"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	. "github.com/flowrun/flowrun/connectors/mqtt"
)

// protocols are the MQTT versions the broker tests run with.
var protocols = []string{Protocol311, Protocol5}

// client5 connects an MQTT 5 test client with clientID, Clean Start
// clean and the session expiry expiry; handler, when set, gets every
// message (acknowledged automatically once it returns).
func client5(t testing.TB, rawURL, clientID string, clean bool, expiry time.Duration, handler func(*paho5.Publish)) *paho5.Client {
	t.Helper()
	u, err := url.Parse(rawURL)
	must(t, err)
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	must(t, err)
	cfg := paho5.ClientConfig{ClientID: clientID, Conn: conn, OnClientError: func(error) {}}
	if handler != nil {
		cfg.OnPublishReceived = []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			handler(pr.Packet)
			return true, nil
		}}
	}
	c := paho5.NewClient(cfg)
	exp := uint32(expiry / time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID, CleanStart: clean, KeepAlive: 30,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: &exp}}); err != nil {
		t.Fatalf("connect %s (MQTT 5): %v", rawURL, err)
	}
	t.Cleanup(func() { disconnect5(c) })
	return c
}

func disconnect5(c *paho5.Client) {
	select {
	case <-c.Done():
	default:
		_ = c.Disconnect(&paho5.Disconnect{})
	}
}

// subscribe5 subscribes c to filter with QoS 1.
func subscribe5(t testing.TB, c *paho5.Client, filter string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil || sa.Reasons[0] >= 0x80 {
		t.Fatalf("subscribe %s: %v %v", filter, err, sa)
	}
}

// createSessionFor makes the persistent session of clientID subscribed to
// filter with protocol, as a flowrun source would, so that messages
// published before the source first runs wait for it.
func createSessionFor(t testing.TB, protocol, url, clientID, filter string) {
	t.Helper()
	if protocol == Protocol311 {
		createSession(t, url, clientID, filter)
		return
	}
	c := client5(t, url, clientID, false, DefaultSessionExpiry, nil)
	subscribe5(t, c, filter)
	disconnect5(c)
}

// leftover connects to clientID's session with protocol and returns how
// many messages the broker still had for it.
func leftover(t testing.TB, protocol, url, clientID string) int {
	t.Helper()
	var mu sync.Mutex
	n := 0
	if protocol == Protocol311 {
		c := connect(t, url, clientID, false, func(paho.Client, paho.Message) { mu.Lock(); n++; mu.Unlock() })
		time.Sleep(500 * time.Millisecond)
		c.Disconnect(0)
		mu.Lock()
		defer mu.Unlock()
		return n
	}
	c := client5(t, url, clientID, false, DefaultSessionExpiry, func(*paho5.Publish) { mu.Lock(); n++; mu.Unlock() })
	time.Sleep(500 * time.Millisecond)
	disconnect5(c)
	mu.Lock()
	defer mu.Unlock()
	return n
}
