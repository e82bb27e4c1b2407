package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// batchPub is a BatchPublisher whose batches fail, in turn, as fails says:
// a batch with a failure accepts that many messages first.
type batchPub struct {
	fails     []int   // per PublishBatch call: accept this many then fail; -1: accept all
	permanent bool    // failures are Permanent
	calls     [][]int // the "i" of each message of each call
	published []int   // the "i" of each message accepted, in order
	single    int     // Publish calls
}

func (p *batchPub) Publish(string, ...*message.Message) error {
	p.single++
	return nil
}

func (p *batchPub) PublishBatch(_ string, msgs []*message.Message) (int, error) {
	var call []int
	for _, m := range msgs {
		call = append(call, int(gjson.GetBytes(m.Payload, "i").Int()))
	}
	p.calls = append(p.calls, call)
	accept := -1
	if len(p.fails) > 0 {
		accept, p.fails = p.fails[0], p.fails[1:]
	}
	if accept < 0 || accept >= len(msgs) {
		p.published = append(p.published, call...)
		return len(msgs), nil
	}
	p.published = append(p.published, call[:accept]...)
	err := errors.New("broker away")
	if p.permanent {
		err = Permanent(err)
	}
	return accept, err
}

func (p *batchPub) Close() error { return nil }

// TestSinkPublishesASliceInOneBatch: with a BatchPublisher, a slice is
// one PublishBatch call; a failure that is retried publishes again from
// the first message not accepted, so every message is published once, in
// order; without retries (or when the failure is permanent) the events
// not accepted go to err, the accepted ones do not.
func TestSinkPublishesASliceInOneBatch(t *testing.T) {
	retry := &Reconnect{Initial: time.Millisecond, Max: time.Millisecond}
	for _, tc := range []struct {
		name      string
		reconnect *Reconnect
		fails     []int
		permanent bool
		calls     string // the messages of each call
		published string
		errs      string // events on err
	}{
		{name: "one call", reconnect: retry, calls: "[[0 1 2 3 4]]", published: "[0 1 2 3 4]", errs: "[]"},
		{name: "retried from the first not accepted", reconnect: retry, fails: []int{2, 0},
			calls: "[[0 1 2 3 4] [2 3 4] [2 3 4]]", published: "[0 1 2 3 4]", errs: "[]"},
		{name: "no retry", fails: []int{3}, calls: "[[0 1 2 3 4]]", published: "[0 1 2]", errs: "[3 4]"},
		{name: "permanent", reconnect: retry, fails: []int{1}, permanent: true,
			calls: "[[0 1 2 3 4]]", published: "[0]", errs: "[1 2 3 4]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := &batchPub{fails: tc.fails, permanent: tc.permanent}
			var r *Reconnect
			if tc.reconnect != nil {
				c := *tc.reconnect
				r = &c
			}
			s, err := NewSink(pub, SinkOptions{Name: "results", Topic: "out", Reconnect: r})
			must(t, err)
			var errs []int
			emit := emitFunc(func(port string, ev pipeline.Event) {
				if port != pipeline.PortErr {
					t.Errorf("event on %s", port)
				}
				if !strings.Contains(gjson.GetBytes(ev.Meta, "error").String(), "broker away") {
					t.Errorf("err event without the failure: %s", ev.Meta)
				}
				errs = append(errs, int(gjson.GetBytes(ev.Data, "i").Int()))
			})
			var events []pipeline.Event
			for i := range 5 {
				events = append(events, pipeline.Event{Data: []byte(fmt.Sprintf(`{"i":%d}`, i))})
			}
			must(t, s.Process(context.Background(), events, emit))
			if errs == nil {
				errs = []int{}
			}
			for what, got := range map[string]string{
				"calls":     fmt.Sprint(pub.calls),
				"published": fmt.Sprint(pub.published),
				"errs":      fmt.Sprint(errs),
			} {
				want := map[string]string{"calls": tc.calls, "published": tc.published, "errs": tc.errs}[what]
				if got != want {
					t.Errorf("%s: %s, want %s", what, got, want)
				}
			}
			if pub.single != 0 {
				t.Errorf("%d Publish calls, want none", pub.single)
			}
		})
	}
}
