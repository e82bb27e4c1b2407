package changelog

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun/internal/natstest"
)

// TestReadsOutliveALostPullRequest: a server that never answers one of
// the pull requests of a read of the log (nats-server 2.11 and later do
// so now and then, with no error and no heartbeat) holds the read up for
// twice the read heartbeat, not the 10 s of the client's default, which
// outlasted the lease of the owner taking the partition over. Each read
// here must finish within 5 s with its second pull request lost.
func TestReadsOutliveALostPullRequest(t *testing.T) {
	first := strings.Split(natstest.ClusterURLs(t), ",")[0]
	name := natstest.Name("cllostpull")
	// Only the restore's pull requests are counted: the take-over reads
	// the log too.
	var armed atomic.Bool
	var pulls atomic.Int32
	proxy := natstest.DropProxy(t, first, func(subject string) bool {
		return armed.Load() && strings.HasPrefix(subject, "$JS.API.CONSUMER.MSG.NEXT."+name+".") && pulls.Add(1) == 2
	})
	js := natstest.JetStreamAt(t, proxy)
	ctx := testContext(t)
	l, err := Open(ctx, js, Options{Stream: name, Subject: "flowrun.test." + name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })

	// More records than the consumer asks for at once (500), so that the
	// reads send a second pull request.
	const records = 1200
	w, _, err := l.TakeOver(ctx, openPebble(t), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	for from := 0; from < records; from += 100 {
		var waits []func() (uint64, error)
		for i := from; i < from+100; i++ {
			var r Record
			r.Set(fmt.Appendf(nil, "k%04d", i), []byte("1"), 0)
			waits = append(waits, w.Submit(ctx, &r))
		}
		for _, wait := range waits {
			if _, err := wait(); err != nil {
				t.Fatal(err)
			}
		}
	}

	last := w.Last()

	for _, tt := range []struct {
		name string
		run  func(t *testing.T, ctx context.Context) error
	}{
		{"restore", func(t *testing.T, ctx context.Context) error {
			store := openPebble(t)
			res, err := l.Restore(ctx, store, 0)
			if err != nil {
				return err
			}
			if want := records + MaxInFlight; res.Records != want {
				t.Errorf("restored %d records, want %d", res.Records, want)
			}
			if got := contents(t, store); len(got) != records {
				t.Errorf("the store holds %d keys, want %d", len(got), records)
			}
			return nil
		}},
		// The reads of a catch-up's window and of a checkpoint's chunks.
		{"read", func(t *testing.T, ctx context.Context) error {
			n := uint64(0)
			err := l.read(ctx, 1, last, l.opts.Subject, func(seq uint64, _ string, _ []byte) error {
				if n++; seq != n {
					return fmt.Errorf("read sequence %d as message %d", seq, n)
				}
				return nil
			})
			if err == nil && n != last {
				t.Errorf("read %d messages, want %d", n, last)
			}
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			pulls.Store(0)
			armed.Store(true)
			defer armed.Store(false)
			if err := tt.run(t, rctx); err != nil {
				t.Fatalf("%s with its second pull request lost: %v (pull requests: %d)", tt.name, err, pulls.Load())
			}
			if pulls.Load() < 2 {
				t.Fatalf("%s sent %d pull requests; the test needs it to lose its second", tt.name, pulls.Load())
			}
		})
	}
}
