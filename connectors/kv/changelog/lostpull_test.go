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

// TestRestoreOutlivesALostPullRequest: a server that never answers one of
// a restore's pull requests (nats-server 2.11 and later do so now and
// then, with no error and no heartbeat) holds the restore up for twice
// the read heartbeat, not the 10 s of the client's default, which
// outlasted the lease of the owner taking the partition over. The
// restore here must finish within 5 s with its second pull request lost.
func TestRestoreOutlivesALostPullRequest(t *testing.T) {
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
	// restore sends a second pull request.
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

	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	store := openPebble(t)
	armed.Store(true)
	res, err := l.Restore(rctx, store, 0)
	if err != nil {
		t.Fatalf("restore with its second pull request lost: %v (pull requests: %d)", err, pulls.Load())
	}
	if pulls.Load() < 2 {
		t.Fatalf("the restore sent %d pull requests; the test needs it to lose its second", pulls.Load())
	}
	if want := records + MaxInFlight; res.Records != want {
		t.Fatalf("restored %d records, want %d", res.Records, want)
	}
	if got := contents(t, store); len(got) != records {
		t.Fatalf("the store holds %d keys, want %d", len(got), records)
	}
}
