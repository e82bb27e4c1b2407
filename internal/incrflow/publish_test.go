package incrflow

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/natstest"
)

// TestPublishSendsLostMessagesAgain: publishes the broker never receives
// (swallowed by a proxy, as a lost acknowledgement or an election's "no
// responders" would leave them) are sent again until acknowledged, so
// the stream ends up with every message exactly once.
func TestPublishSendsLostMessagesAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // does-not-hang bound
	defer cancel()
	js := natstest.JetStream(t)
	in := natstest.Name("publish")
	const n, keys, parts = 5000, 100, 4
	sc := InputStream(in)
	if _, err := js.CreateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), sc.Name) })

	// Lose the 2nd, the 3,000th and the 4,999th publish to the input,
	// each once.
	var seen atomic.Int64
	lost := map[int64]bool{2: true, 3000: true, 4999: true}
	url := natstest.DropProxy(t, strings.Split(natstest.ClusterURLs(t), ",")[0], func(subject string) bool {
		if !strings.HasPrefix(subject, in+".") {
			return false
		}
		return lost[seen.Add(1)]
	})
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	pjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := publishRange(ctx, pjs, in, 0, n, keys, parts, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got := seen.Load(); got != n+int64(len(lost)) {
		t.Errorf("%d publishes reached the proxy, want %d (each lost one sent again)", got, n+len(lost))
	}

	// The stream holds each message once.
	cons, err := js.OrderedConsumer(ctx, bus.PartitionStreamName(in), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	count := make([]int, n)
	for read := 0; read < n; {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			count[gjson.GetBytes(m.Data(), "i").Int()]++
		}
		if got == 0 {
			break
		}
		read += got
	}
	for i, c := range count {
		if c != 1 {
			t.Errorf("message %d is in the stream %d times, want once", i, c)
		}
	}
}
