package kv_test

import (
	"context"
	"errors"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// failingCommits is a backend whose commits fail.
type failingCommits struct{ kv.Backend }

func (failingCommits) Update(context.Context, []kv.TxnFunc, []error) error {
	return errors.New("append fenced")
}

// TestAbandonFailedCommits: with AbandonFailedCommits, a command whose
// commit failed gives its event back when the source redelivers (its
// outcome is Failed, see pipeline's TestAbandonFailsTheTrackedEvent, and
// nothing is emitted), and still fails on err
// otherwise; a refused command (not a commit failure) goes to err either
// way. Without the option, every failure goes to err.
func TestAbandonFailedCommits(t *testing.T) {
	for _, abandon := range []bool{false, true} {
		c, err := kv.New(failingCommits{memstore.New()}, kv.Options{AbandonFailedCommits: abandon, ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		redelivering := pipeline.NewTracker(2, nil, nil)
		redelivering.SetRedelivers()
		other := pipeline.NewTracker(1, nil, nil)
		evs := []pipeline.Event{
			redelivering.Track(0, kvtest.Event(kvtest.M(`"put":"a"`), `1`)),
			redelivering.Track(1, kvtest.Event(kvtest.M(`"put":""`), `1`)), // refused: empty key
			other.Track(0, kvtest.Event(kvtest.M(`"put":"b"`), `1`)),
		}
		var rec kvtest.Recorder
		if err := c.Process(context.Background(), evs, &rec); err != nil {
			t.Fatal(err)
		}
		var errs int
		for _, e := range rec.Events {
			if e.Port == pipeline.PortErr {
				errs++
			}
		}
		if want := map[bool]int{false: 3, true: 2}[abandon]; errs != want || len(rec.Events) != want {
			t.Errorf("abandon %v: emitted %v, want %d err events", abandon, kvtest.Strings(rec.Events), want)
		}
		_ = c.Close(context.Background())
	}
}
