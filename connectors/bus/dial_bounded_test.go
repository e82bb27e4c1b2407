package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/partition"
)

// TestDialGivesUpOnUnansweredBrokerRequests: every dial of a NATS source
// or sink makes JetStream API requests (find or create the streams, the
// consumer). When none is ever answered, the dial fails with ErrConnect
// within a few connect timeouts, so that its reconnect loop tries again;
// it does not wait for ever. A partitioned source's dial waiting for ever
// was a flow whose partitions, once taken by its instance, were never
// consumed again after a NATS node's kill (TestFailoverOfProcesses/natsnode
// in connectors/kv/partitioned).
func TestDialGivesUpOnUnansweredBrokerRequests(t *testing.T) {
	url := natstest.BlackHole(t)
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
