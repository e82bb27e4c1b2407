package natstest

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
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
	server := strings.TrimPrefix(url, "nats://")
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
			s, err := net.Dial("tcp", server)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, s)
				_ = c.Close()
			}()
			go func() {
				defer wg.Done()
				filterPublishes(s, c, drop)
				_ = s.Close()
			}()
		}
	}()
	return "nats://" + ln.Addr().String()
}

// filterPublishes copies the client's protocol from src to dst, operation
// by operation, leaving out the publishes (PUB, HPUB) whose subject drop
// chooses, until src or dst fails.
func filterPublishes(dst io.Writer, src io.Reader, drop func(subject string) bool) {
	r := bufio.NewReader(src)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		f := strings.Fields(string(line))
		op := ""
		if len(f) > 0 {
			op = strings.ToUpper(f[0])
		}
		if (op != "PUB" && op != "HPUB") || len(f) < 3 {
			if _, err := dst.Write(line); err != nil {
				return
			}
			continue
		}
		// The last field is the payload's size (headers included); the
		// payload and its CRLF follow.
		n, err := strconv.Atoi(f[len(f)-1])
		if err != nil || n < 0 {
			return
		}
		payload := make([]byte, n+2)
		if _, err := io.ReadFull(r, payload); err != nil {
			return
		}
		if drop(f[1]) {
			continue
		}
		if _, err := dst.Write(bytes.Join([][]byte{line, payload}, nil)); err != nil {
			return
		}
	}
}
