package incrflow

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/natstest"
)

// TestWitnessTellsTheFate: against the cluster, the witness tells an
// answer stored from one acknowledged and then deleted from the stream,
// from one refused by the stream, from one never published.
func TestWitnessTellsTheFate(t *testing.T) {
	urls := natstest.ClusterURLs(t)
	js := natstest.JetStreamAt(t, urls)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // does-not-hang bound
	defer cancel()
	out := natstest.Name("witness")
	st, err := js.CreateStream(ctx, AnswerStream(out))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), bus.StreamName(out)) })
	w, err := Watch(urls, out)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	answer := func(corr int) *nats.Msg {
		m := nats.NewMsg(out)
		m.Header.Set(bus.CorrelationKey, strconv.Itoa(corr))
		m.Data = []byte("1")
		return m
	}
	const n = 6
	for i := range n {
		if _, err := js.PublishMsg(ctx, answer(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Answer 3 acknowledged, then gone from the stream.
	if err := st.DeleteMsg(ctx, 4); err != nil {
		t.Fatal(err)
	}
	// Answer 7 refused: the stream's last sequence is not 1.
	refused := answer(7)
	refused.Header.Set("Nats-Expected-Last-Sequence", "1")
	if _, err := js.PublishMsg(ctx, refused); err == nil {
		t.Fatal("a publish expecting the wrong last sequence was stored")
	}
	for w.Acknowledged() < n {
		select {
		case <-ctx.Done():
			t.Fatalf("the witness saw %d of %d acknowledgements", w.Acknowledged(), n)
		case <-time.After(20 * time.Millisecond):
		}
	}
	e, err := w.Explain(ctx, js, []int{3, 5, 7, 9})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{FateAckedLost: 1, FateAckedStored: 1, FateNotAcked: 1, FateNeverPublished: 1}
	for fate, count := range want {
		if e.Fates[fate] != count {
			t.Errorf("%q: %d, want %d\n%s", fate, e.Fates[fate], count, e)
		}
	}
	if !strings.Contains(e.String(), "answer 3: "+FateAckedLost+"; published 1 times; acknowledged as sequence 4, which the stream does not hold") {
		t.Errorf("answer 3's detail is not in:\n%s", e)
	}
	t.Log(e)

	var stored []Answer
	for i := range n {
		if i != 3 {
			stored = append(stored, Answer{Corr: i, Seq: uint64(i) + 1})
		}
	}
	acked, lost, details := w.Audit(stored)
	if acked != n || lost != 1 || len(details) != 1 || !strings.Contains(details[0], "answer 3: published 1 times (seen ") ||
		!strings.HasSuffix(details[0], "as sequence 4, which holds nothing); the stream holds it at []") {
		t.Errorf("audit: %d acknowledged, %d lost %q; want %d, 1 (answer 3)", acked, lost, details, n)
	}
	stored = append(stored, Answer{Corr: 5, Seq: 4}, Answer{Corr: 3, Seq: 9})
	if _, _, details := w.Audit(stored); len(details) != 1 || !strings.Contains(details[0], "as sequence 4, which holds the answer to 5 (stored ") ||
		!strings.Contains(details[0], "the stream holds it at [9 (stored ") {
		t.Errorf("audit, sequence 4 holding another answer: %q", details)
	}
	t.Log(details)
}

// TestWitnessExplains: the fate of a missing answer from what the witness
// saw and what the stream holds at the sequences acknowledged.
func TestWitnessExplains(t *testing.T) {
	refusal := ackOf{}
	refusal.Error = &struct {
		Description string `json:"description"`
	}{"no responders"}
	for _, tc := range []struct {
		name      string
		published map[string]int
		acks      map[string]ackOf
		stream    map[uint64]int // sequence → correlation held
		fate      string
		detail    string
	}{
		{name: "never published", fate: FateNeverPublished},
		{name: "no acknowledgement", published: map[string]int{"i1": 1}, fate: FateNotAcked},
		{name: "refused", published: map[string]int{"i1": 1}, acks: map[string]ackOf{"i1": refusal},
			fate: FateNotAcked, detail: `refusals seen: ["no responders"]`},
		{name: "sequence holds another", published: map[string]int{"i1": 1}, acks: map[string]ackOf{"i1": {Seq: 7}},
			stream: map[uint64]int{7: 2}, fate: FateAckedLost, detail: "which now holds the answer to 2"},
		{name: "sequence gone", published: map[string]int{"i1": 1}, acks: map[string]ackOf{"i1": {Seq: 7}},
			fate: FateAckedLost, detail: "which the stream does not hold"},
		{name: "stored by a second publish", published: map[string]int{"i1": 1, "i2": 1},
			acks: map[string]ackOf{"i1": {Seq: 7}, "i2": {Seq: 9, Duplicate: true}}, stream: map[uint64]int{9: 1},
			fate: FateAckedStored, detail: "acknowledged as sequence 9 (as a duplicate), which holds it"},
		{name: "another answer's publish", published: map[string]int{"i1": 2}, acks: map[string]ackOf{"i1": {Seq: 7}},
			stream: map[uint64]int{7: 2}, fate: FateNeverPublished},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &Witness{published: tc.published, acks: tc.acks}
			if w.published == nil {
				w.published = map[string]int{}
			}
			e, err := w.explain([]int{1}, func(seq uint64) (int, bool, error) {
				corr, ok := tc.stream[seq]
				return corr, ok, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if e.Fates[tc.fate] != 1 || len(e.Fates) != 1 {
				t.Errorf("fates %v, want %q", e.Fates, tc.fate)
			}
			if !strings.Contains(e.String(), tc.detail) {
				t.Errorf("%q is not in:\n%s", tc.detail, e)
			}
		})
	}
}
