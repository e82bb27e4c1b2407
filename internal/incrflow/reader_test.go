package incrflow

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/natstest"
)

// TestReaderReadsEveryAnswer: the reader gives every answer the stream
// holds, once and in order, when its consumer skips messages (made again
// past some, as an ordered consumer can be while a node is down), when it
// stays silent while the stream holds more, and when the stream itself
// has a gap (a message deleted), which it reads past without looping.
func TestReaderReadsEveryAnswer(t *testing.T) {
	js := natstest.JetStream(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// spoil replaces the reader's consumer after it read 3 answers.
		spoil func(t *testing.T, r *Reader, out string) jetstream.Consumer
		// deleted is the stream sequence deleted before reading (0: none).
		deleted uint64
	}{
		{name: "consumer skips", spoil: func(t *testing.T, r *Reader, out string) jetstream.Consumer {
			c, err := js.OrderedConsumer(ctx, r.stream, jetstream.OrderedConsumerConfig{
				DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: 7})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{name: "consumer silent", spoil: func(t *testing.T, r *Reader, out string) jetstream.Consumer {
			c, err := js.OrderedConsumer(ctx, r.stream, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{out + ".never"}})
			if err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{name: "stream gap", deleted: 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second) // does-not-hang bound
			defer cancel()
			out := natstest.Name("reader")
			sc := AnswerStream(out)
			sc.Subjects = append(sc.Subjects, out+".never")
			st, err := js.CreateStream(ctx, sc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = js.DeleteStream(context.Background(), sc.Name) })
			const n = 10
			for i := range n {
				m := nats.NewMsg(out)
				m.Header.Set(bus.CorrelationKey, strconv.Itoa(i))
				m.Data = []byte("1")
				if _, err := js.PublishMsg(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			if tc.deleted > 0 {
				if err := st.DeleteMsg(ctx, tc.deleted); err != nil {
					t.Fatal(err)
				}
			}
			r, err := NewReader(ctx, js, out)
			if err != nil {
				t.Fatal(err)
			}
			var got []Answer
			for len(got) < 3 && ctx.Err() == nil {
				got, _ = r.Fetch(got, 3-len(got), 200*time.Millisecond)
			}
			if tc.spoil != nil {
				r.cons = tc.spoil(t, r, out)
			}
			want := n
			if tc.deleted > 0 {
				want--
			}
			for len(got) < want && ctx.Err() == nil {
				got, _ = r.Fetch(got, 100, 200*time.Millisecond)
			}
			for i, a := range got {
				wantCorr := i
				if tc.deleted > 0 && uint64(i)+1 >= tc.deleted {
					wantCorr++
				}
				if a.Corr != wantCorr || a.Seq != uint64(wantCorr)+1 {
					t.Errorf("answer %d: correlation %d at sequence %d, want %d at %d", i, a.Corr, a.Seq, wantCorr, wantCorr+1)
				}
			}
			if len(got) != want {
				t.Fatalf("%d answers read, want %d", len(got), want)
			}
			if tc.spoil != nil && r.Restarts == 0 {
				t.Error("no restart counted")
			}
			t.Logf("%d answers, %d restarts", len(got), r.Restarts)
		})
	}
}
