package natstest

import (
	"bufio"
	"net"
	"strings"
	"testing"
)

// BlackHole starts a NATS server of the test's own that accepts
// connections, subscriptions and publications and answers pings, but never
// delivers a message: every JetStream API request sent to it waits for an
// answer that never comes, as one does whose server died while handling
// it (a node killed, the meta leader lost). It returns the server's URL.
func BlackHole(t testing.TB) string {
	t.Helper()
	return "nats://" + listen(t, "127.0.0.1:0", func(c net.Conn, _ func(net.Conn)) { serveBlackHole(c) })
}

// serveBlackHole speaks the server side of the NATS protocol on c until
// it closes: INFO first, PONG to each PING, and every other operation read
// and dropped.
func serveBlackHole(c net.Conn) {
	info := `INFO {"server_id":"blackhole","server_name":"blackhole","version":"2.9.10","proto":1,"headers":true,"max_payload":1048576,"jetstream":true}` + "\r\n"
	if _, err := c.Write([]byte(info)); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		_, fields, _, err := readOp(r)
		if err != nil {
			return
		}
		if len(fields) > 0 && strings.ToUpper(fields[0]) == "PING" {
			if _, err := c.Write([]byte("PONG\r\n")); err != nil {
				return
			}
		}
	}
}
