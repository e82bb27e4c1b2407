package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
)

func TestWatchUnlinkedSeesEventsBesideTheHook(t *testing.T) {
	tests := []struct {
		name     string
		ports    []string // ports of "split"
		linkErr  bool     // split/err linked to the sink
		watchers int
		want     string
	}{
		{"err unlinked, one watcher", []string{PortOut, PortErr}, false, 1, "[split/err:1 split/err:3]"},
		{"err unlinked, two watchers", []string{PortOut, PortErr}, false, 2, "[split/err:1 split/err:1 split/err:3 split/err:3]"},
		{"err linked", []string{PortOut, PortErr}, true, 1, "[]"},
		{"err undeclared", []string{PortOut}, false, 1, "[split/err:1 split/err:3]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var hooked, watched []string
			record := func(dst *[]string) func(node, port string, ev Event) {
				return func(node, port string, ev Event) {
					mu.Lock()
					defer mu.Unlock()
					*dst = append(*dst, fmt.Sprintf("%s/%s:%d", node, port, ev.Seq))
				}
			}
			g := New(Options{Unlinked: record(&hooked)})
			must(t, g.AddSource("src", countSource(4, 2), PortOut))
			must(t, g.AddProcessor("split", evenOdd, tt.ports...))
			must(t, g.AddProcessor("sink", &collector{}))
			must(t, g.Link("src", PortOut, "split"))
			must(t, g.Link("split", PortOut, "sink"))
			if tt.linkErr {
				must(t, g.Link("split", PortErr, "sink"))
			}
			for range tt.watchers {
				must(t, g.WatchUnlinked(record(&watched)))
			}
			must(t, g.Run(context.Background()))
			sort.Strings(watched)
			if got := fmt.Sprint(watched); got != tt.want {
				t.Errorf("watched = %s, want %s", got, tt.want)
			}
			if len(hooked)*tt.watchers != len(watched) {
				t.Errorf("hook saw %d events, watchers %d: the hook must still run", len(hooked), len(watched))
			}
			if err := g.WatchUnlinked(record(&watched)); !errors.Is(err, ErrGraphStarted) {
				t.Errorf("WatchUnlinked after Run = %v, want ErrGraphStarted", err)
			}
		})
	}
}

func TestErrReportsNodeFailure(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name string
		fail bool
	}{{"healthy", false}, {"failing", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New(Options{})
			must(t, g.AddSource("src", countSource(10, 1), PortOut))
			must(t, g.AddProcessor("p", ProcessorFunc(func(context.Context, []Event, Emitter) error {
				if tt.fail {
					return boom
				}
				return nil
			})))
			must(t, g.Link("src", PortOut, "p"))
			if g.Err() != nil {
				t.Fatalf("Err before Run = %v", g.Err())
			}
			runErr := g.Run(context.Background())
			got := g.Err()
			switch {
			case tt.fail && (!errors.Is(got, boom) || got.Error() != runErr.Error()):
				t.Errorf("Err = %v, want Run's error %v", got, runErr)
			case !tt.fail && got != nil:
				t.Errorf("Err = %v for a healthy graph", got)
			}
		})
	}
}
