package redisstream_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/redisstream"
	"github.com/flowrun/flowrun/pipeline"
)

// TestReadsAheadWindowsInFlight: the consumer reads window ×
// windows_in_flight entries before the first is acknowledged, not more:
// with the flow holding every entry, exactly that many are pending, and
// none is acknowledged until the flow lets them go.
func TestReadsAheadWindowsInFlight(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	const total, window, inFlight = 50, 4, 3
	in := unique("inflight")
	t.Cleanup(func() { c.Del(context.Background(), in) })
	addEntries(t, c, in, total, func(i int) []any { return []any{"data", fmt.Sprintf(`{"i":%d}`, i)} })

	release := make(chan struct{})
	hold := pipeline.ProcessorFunc(func(ctx context.Context, b []pipeline.Event, _ pipeline.Emitter) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	})
	g := pipeline.New(pipeline.Options{})
	src, err := redisstream.NewSource(context.Background(), g, redisstream.SourceOptions{
		Options: redisstream.Options{URL: url, Stream: in, Group: "g", Consumer: "c"},
		Source:  bus.SourceOptions{Name: "in", Window: window, WindowsInFlight: inFlight, Linger: time.Millisecond},
	})
	must(t, err)
	must(t, g.AddSource("in", src, bus.Ports()...))
	must(t, g.AddProcessor("hold", hold))
	must(t, g.Link("in", pipeline.PortOut, "hold"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()

	want := int64(window * inFlight)
	waitFor(t, 20*time.Second, fmt.Sprintf("%d entries pending (window %d × windows_in_flight %d)", want, window, inFlight),
		func() bool { return pending(t, c, in, "g") == want })
	time.Sleep(300 * time.Millisecond)
	if n := pending(t, c, in, "g"); n != want {
		t.Fatalf("%d entries pending while the flow holds them, want %d", n, want)
	}
	close(release)
	waitFor(t, 30*time.Second, "every entry read and acknowledged", func() bool {
		gs, err := c.XInfoGroups(context.Background(), in).Result()
		return err == nil && len(gs) == 1 && gs[0].EntriesRead == total && gs[0].Pending == 0
	})
	cancel()
	must(t, <-done)
	must(t, src.Close(context.Background()))
}
