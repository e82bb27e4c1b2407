package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// TestBrokerUnreachableAtStart: with fail_fast the flow does not build
// when no broker answers; without it, it builds, reports itself not ready
// and keeps trying.
func TestBrokerUnreachableAtStart(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t)) // nothing listens there
	for _, failFast := range []bool{true, false} {
		t.Run(fmt.Sprint("fail_fast=", failFast), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "flow.yaml")
			must(t, os.WriteFile(path, []byte(fmt.Sprintf(`name: down
connectors:
  input: { type: kafka, mode: read, brokers: %q, topic: in, connect_timeout: 300ms, fail_fast: %v,
           reconnect_initial: 20ms, reconnect_max: 100ms }
  done:  { type: "null" }
links:
  - input/out -> done/in
`, addr, failFast)), 0o644))
			f, diags, err := flows.Load(path, builtin.NewRegistry())
			if err != nil {
				t.Fatalf("load: %v %v", err, diags)
			}
			res := component.NewResources()
			built, err := f.Build(context.Background(), flows.BuildOptions{Resources: res})
			if failFast {
				if !errors.Is(err, bus.ErrDisconnected) {
					t.Fatalf("build: %v, want an error wrapping bus.ErrDisconnected", err)
				}
				return
			}
			must(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- built.Run(ctx) }()
			deadline := time.Now().Add(10 * time.Second)
			for component.HealthOf(res).Err() == nil {
				if time.Now().After(deadline) {
					t.Fatal("ready with no broker")
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			select {
			case err := <-done:
				must(t, err)
			case <-time.After(20 * time.Second):
				t.Fatal("the flow did not stop")
			}
		})
	}
}
