package bus

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/partition"
)

// blackHoleNATS starts a NATS server of the test's own that accepts
// connections, subscriptions and publications and answers pings, but never
// delivers a message: every JetStream API request sent to it waits for an
// answer that never comes, as one does whose server died while handling
// it (a node killed, the meta leader lost). It returns the server's URL.
func blackHoleNATS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
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

// TestDialGivesUpOnUnansweredBrokerRequests: every dial of a NATS source
// or sink makes JetStream API requests (find or create the streams, the
// consumer). When none is ever answered, the dial fails with ErrConnect
// within a few connect timeouts, so that its reconnect loop tries again;
// it does not wait for ever. A partitioned source's dial waiting for ever
// was a flow whose partitions, once taken by its instance, were never
// consumed again after a NATS node's kill (TestFailoverOfProcesses/natsnode
// in connectors/kv/partitioned).
func TestDialGivesUpOnUnansweredBrokerRequests(t *testing.T) {
	url := blackHoleNATS(t)
	const timeout = 200 * time.Millisecond
	opts := NATSOptions{URL: url, Subject: "blackhole.in", Durable: "bh", ConnectTimeout: timeout, Logger: quiet}
	opts.EnsureDefaults()
	so := SourceOptions{Name: "src", Topic: opts.Subject, Window: 8}
	so.EnsureDefaults()
	for _, tc := range []struct {
		name string
		dial func() (release func() error, err error)
	}{
		{"partitioned source", func() (func() error, error) {
			board := partition.BoardOf(component.NewResources(), "store")
			must(t, board.Declare(1))
			_, release, err := dialNATSPartitions(context.Background(), so, opts, board, &natsDeadLetters{})
			return release, err
		}},
		{"source", func() (func() error, error) {
			_, release, err := dialNATSSource(context.Background(), so, opts, opts.Subject, &natsDeadLetters{})
			return release, err
		}},
		{"partitioned sink", func() (func() error, error) {
			nc, err := connectPartitions(context.Background(), "sink", opts)
			if err != nil {
				return nil, err
			}
			return func() error { nc.conn.Close(); return nil }, nil
		}},
		{"sink", func() (func() error, error) {
			nc, err := connect(context.Background(), "sink", opts, opts.Subject)
			if err != nil {
				return nil, err
			}
			return func() error { nc.conn.Close(); return nil }, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				release, err := tc.dial()
				if err == nil {
					_ = release()
				}
				done <- err
			}()
			// Generous: a dial makes a few requests, each bounded by
			// the connect timeout.
			const bound = 30 * time.Second
			select {
			case err := <-done:
				if !errors.Is(err, ErrConnect) && !errors.Is(err, ErrSubscribe) {
					t.Fatalf("dial against a broker that never answers: %v, want ErrConnect or ErrSubscribe", err)
				}
			case <-time.After(bound):
				t.Fatalf("dial against a broker that never answers still waiting after %v (connect timeout %v)", bound, timeout)
			}
		})
	}
}
