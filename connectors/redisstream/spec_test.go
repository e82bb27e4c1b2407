package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// TestSpecChecks: options the server would refuse are reported when the
// flow is loaded, at the option.
func TestSpecChecks(t *testing.T) {
	tests := []struct{ name, conn, want string }{
		{"url scheme", `{ type: redis_streams, mode: write, stream: s, url: "tcp://h:1" }`, "url: \"tcp://h:1\": want redis://"},
		{"key without cert", `{ type: redis_streams, mode: write, stream: s, tls_key: k.pem }`, "tls_cert: tls_cert and tls_key go together"},
		{"no stream", `{ type: redis_streams, mode: read }`, "stream"},
		{"negative max_len", `{ type: redis_streams, mode: write, stream: s, max_len: -1 }`, "max_len"},
		{"linger", `{ type: redis_streams, mode: write, stream: s, linger: 1ms }`, "linger: a redis_streams source emits the entries of each read together"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flow.yaml")
			must(t, os.WriteFile(path, []byte("name: f\nconnectors:\n  in: { type: stdin }\n  out: "+tc.conn+"\nlinks:\n  - in/out -> out/in\n"), 0o644))
			_, diags, err := flows.Load(path, builtin.NewRegistry())
			if err == nil || !strings.Contains(fmt.Sprint(err, diags), tc.want) {
				t.Errorf("load: %v %v, want %q", err, diags, tc.want)
			}
		})
	}
}

// TestUnreachableServer: with fail_fast the flow does not build when the
// server is unreachable; without it, the flow builds, waits for the server
// and reports itself not ready.
func TestUnreachableServer(t *testing.T) {
	const down = "redis://127.0.0.1:1"
	for _, failFast := range []bool{true, false} {
		ff := fmt.Sprint(failFast)
		t.Run("fail_fast="+ff, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "flow.yaml")
			must(t, os.WriteFile(path, []byte(`name: f
connectors:
  in:  { type: redis_streams, mode: read, url: "`+down+`", stream: s, consumer: c, dial_timeout: 200ms, reconnect_max: 50ms, fail_fast: `+ff+` }
  out: { type: redis_streams, mode: write, url: "`+down+`", stream: o, dial_timeout: 200ms, fail_fast: `+ff+` }
links:
  - in/out -> out/in
`), 0o644))
			flow, diags, err := flows.Load(path, builtin.NewRegistry())
			if err != nil {
				t.Fatalf("load: %v %v", err, diags)
			}
			res := component.NewResources()
			built, err := flow.Build(context.Background(), flows.BuildOptions{Logger: quiet, Resources: res})
			if failFast {
				if !errors.Is(err, bus.ErrDisconnected) || !strings.Contains(err.Error(), "127.0.0.1:1") {
					t.Fatalf("build: %v, want ErrDisconnected naming the server", err)
				}
				return
			}
			must(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- built.Run(ctx) }()
			waitFor(t, 5*time.Second, "not ready", func() bool { return errors.Is(component.HealthOf(res).Err(), component.ErrNotReady) })
			cancel()
			select {
			case err := <-done:
				must(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("the flow did not stop while the server was unreachable")
			}
		})
	}
}
