package natstest

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
)

// DropProxy starts a proxy of the test's own in front of the NATS server
// at url (one URL, nats://host:port) and returns its URL. It passes every
// byte on in both directions, except the client's publishes whose subject
// drop chooses: it swallows them, as a server would that lost them (a pull
// request a server never answers, say). drop is called once per publish,
// in order, from the goroutine of the publishing connection.
func DropProxy(t testing.TB, url string, drop func(subject string) bool) string {
	t.Helper()
	return DropProxyAt(t, "127.0.0.1:0", url, drop)
}

// DropProxyAt is DropProxy listening at addr (host:port): a test can name
// a server's address before anything listens there.
func DropProxyAt(t testing.TB, addr, url string, drop func(subject string) bool) string {
	t.Helper()
	server := strings.TrimPrefix(url, "nats://")
	return "nats://" + listen(t, addr, func(c net.Conn, track func(net.Conn)) {
		s, err := net.Dial("tcp", server)
		if err != nil {
			return
		}
		track(s)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.Copy(c, s)
			_ = c.Close()
		}()
		filterPublishes(s, c, drop)
		_ = s.Close()
		<-done
	})
}

// filterPublishes copies the client's protocol from src to dst, operation
// by operation, leaving out the publishes (PUB, HPUB) whose subject drop
// chooses, until src or dst fails.
func filterPublishes(dst io.Writer, src io.Reader, drop func(subject string) bool) {
	r := bufio.NewReader(src)
	for {
		line, fields, payload, err := readOp(r)
		if err != nil {
			return
		}
		if payload != nil && drop(fields[1]) {
			continue
		}
		if _, err := dst.Write(append(line, payload...)); err != nil {
			return
		}
	}
}
