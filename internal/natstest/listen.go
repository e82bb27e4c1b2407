package natstest

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// listen accepts connections at addr (host:port; "127.0.0.1:0" for a
// loopback port of the test's own) until the test ends, and runs handle for each on a goroutine of its own,
// closing the connection once handle returns. handle registers the
// connections it opens with track; the test's end closes them all and
// waits for every handle to return. It returns the address, host:port.
func listen(t testing.TB, addr string, handle func(c net.Conn, track func(net.Conn))) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
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
			track(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, track)
			}()
		}
	}()
	return ln.Addr().String()
}

// readOp reads one operation of a NATS client's protocol from r: its
// line (CRLF included), the line's fields, and for a publish (PUB, HPUB)
// what follows the line: headers and payload, then CRLF.
func readOp(r *bufio.Reader) (line []byte, fields []string, payload []byte, err error) {
	line, err = r.ReadBytes('\n')
	if err != nil {
		return nil, nil, nil, err
	}
	fields = strings.Fields(string(line))
	if len(fields) < 3 {
		return line, fields, nil, nil
	}
	if op := strings.ToUpper(fields[0]); op != "PUB" && op != "HPUB" {
		return line, fields, nil, nil
	}
	// The last field is the size of headers and payload together.
	n, err := strconv.Atoi(fields[len(fields)-1])
	if err != nil || n < 0 {
		return nil, nil, nil, io.ErrUnexpectedEOF
	}
	payload = make([]byte, n+2)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, nil, nil, err
	}
	return line, fields, payload, nil
}
