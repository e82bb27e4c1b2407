package natstest

import (
	"bufio"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// BlackHole starts a NATS server of the test's own that accepts
// connections, subscriptions and publications and answers pings, but never
// delivers a message: every JetStream API request sent to it waits for an
// answer that never comes, as one does whose server died while handling
// it (a node killed, the meta leader lost). It returns the server's URL.
func BlackHole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveBlackHole(c)
			}()
		}
	}()
	return "nats://" + ln.Addr().String()
}

// serveBlackHole speaks the client side of the NATS protocol on c until
// it closes: INFO first, PONG to each PING, and every other operation read
// and dropped.
func serveBlackHole(c net.Conn) {
	defer c.Close()
	info := `INFO {"server_id":"blackhole","server_name":"blackhole","version":"2.9.10","proto":1,"headers":true,"max_payload":1048576,"jetstream":true}` + "\r\n"
	if _, err := c.Write([]byte(info)); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "PING":
			if _, err := c.Write([]byte("PONG\r\n")); err != nil {
				return
			}
		case "PUB", "HPUB":
			// The last field is the size of what follows (headers and
			// payload), then CRLF.
			n, err := strconv.Atoi(fields[len(fields)-1])
			if err != nil {
				return
			}
			if _, err := r.Discard(n + 2); err != nil {
				return
			}
		}
	}
}
