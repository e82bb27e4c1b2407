package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// silentNATS listens on loopback as a NATS server that completes the
// client's handshake and answers its pings, but never answers a request:
// a partitioned kv connector built against it waits in its JetStream
// requests until its context ends.
func silentNATS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, `INFO {"server_id":"silent","version":"2.10.0","proto":1,"host":"127.0.0.1","port":%d,"max_payload":1048576,"headers":true,"jetstream":true}`+"\r\n", port)
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if strings.HasPrefix(line, "PING") {
						_, _ = c.Write([]byte("PONG\r\n"))
					}
				}
			}()
		}
	}()
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// TestRunStoppedWhileStarting: SIGINT or SIGTERM (the run's context
// cancelled) while the flow is still being built, here a partitioned kv
// connector waiting for its changelog cluster, stops flowrun run with
// success and a stop line: no event had been accepted. It exited 1 with
// "context canceled" before.
func TestRunStoppedWhileStarting(t *testing.T) {
	dir := t.TempDir()
	flow := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flow, []byte(fmt.Sprintf(`name: starting
connectors:
  input: { type: stdin }
  store:
    type: kv
    dir: %q
    partitions: 4
    changelog: { urls: %q, replicas: 1 }
  results: { type: stdout }
links:
  - input/out -> store/in
  - store/out -> results/in
  - store/err -> results/in
`, filepath.Join(dir, "state"), silentNATS(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(500*time.Millisecond, cancel)
	var out, errOut syncBuffer
	start := time.Now()
	err := runFlow(ctx, env{stdin: strings.NewReader(""), stdout: &out, stderr: &errOut}, flow, "")
	if err != nil {
		t.Fatalf("run stopped while starting = %v, want success; stderr: %s", err, errOut.String())
	}
	if took := time.Since(start); took > 25*time.Second {
		t.Errorf("run took %v to stop", took)
	}
	if !strings.Contains(errOut.String(), "flow stopped before it started") {
		t.Errorf("stderr %q, want the stop line", errOut.String())
	}
}
