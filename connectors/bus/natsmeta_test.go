package bus

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// TestNATSMetaDoesNotCross publishes events carrying meta.nats (as a
// partitioned source sets it: the upstream partition, sequence and
// subject) with a NATS sink, one alone (Publish) and two together
// (PublishBatch), and a message of a publisher outside flowrun with a
// "nats" header: the sink publishes no "nats" header, and a plain source
// reading the subject sees no meta.nats, while the other meta fields
// cross.
func TestNATSMetaDoesNotCross(t *testing.T) {
	url := natsURL(t)
	subject := uniqueSubject("test.natsmeta")
	upstream := `{"partition":3,"sequence":42,"subject":"orders.in.p.003"}`
	ev := func(i int) pipeline.Event {
		return pipeline.Event{Data: []byte(`{"i":1}`), Meta: []byte(`{"correlation":"c` + string(rune('0'+i)) + `","tag":"kept","nats":` + upstream + `}`)}
	}
	publishEvents(t, url, subject, []pipeline.Event{ev(0)})
	publishEvents(t, url, subject, []pipeline.Event{ev(1), ev(2)})
	nc, err := nats.Connect(url)
	must(t, err)
	defer nc.Close()
	js, err := nc.JetStream()
	must(t, err)
	foreign := nats.NewMsg(subject)
	foreign.Data = []byte(`{"i":2}`)
	foreign.Header.Set(NATSMeta, upstream)
	foreign.Header.Set("tag", "kept")
	_, err = js.PublishMsg(foreign)
	must(t, err)

	sub, err := js.SubscribeSync(subject, nats.DeliverAll(), nats.AckNone())
	must(t, err)
	defer func() { _ = sub.Unsubscribe() }()
	for i := range 4 {
		m, err := sub.NextMsg(5 * time.Second)
		must(t, err)
		if i < 3 && m.Header.Get(NATSMeta) != "" {
			t.Errorf("message %d: the sink published header %s: %s", i, NATSMeta, m.Header.Get(NATSMeta))
		}
		wm, err := natsUnmarshaler{}.Unmarshal(m)
		must(t, err)
		got, err := ToEvent(wm)
		must(t, err)
		if n := gjson.GetBytes(got.Meta, NATSMeta); n.Exists() {
			t.Errorf("message %d: a plain source reads meta.nats %s, an upstream delivery's", i, n.Raw)
		}
		if gjson.GetBytes(got.Meta, "tag").String() != "kept" {
			t.Errorf("message %d: meta %s lost the other fields", i, got.Meta)
		}
	}
}

// deadCapture is a message.Publisher recording what it is given.
type deadCapture struct{ msgs []*message.Message }

func (d *deadCapture) Publish(_ string, msgs ...*message.Message) error {
	d.msgs = append(d.msgs, msgs...)
	return nil
}
func (d *deadCapture) Close() error { return nil }

// TestNATSDeadLetterKeepsNATSMetaAsSource checks that a dead letter of a
// partitioned source keeps where its message was (meta.nats) as
// meta.nats_source, which the unmarshaler reads (it drops "nats"), and
// that the message it was made from is left as it was.
func TestNATSDeadLetterKeepsNATSMetaAsSource(t *testing.T) {
	m := message.NewMessage("id", []byte(`{}`))
	m.Metadata.Set(NATSMeta, `{"partition":1,"sequence":7,"subject":"s.p.001"}`)
	m.Metadata.Set(JSONKeysKey, "other,"+NATSMeta)
	m.Metadata.Set("other", `{"a":1}`)
	capture := &deadCapture{}
	d := &natsDeadLetters{}
	d.set(capture)
	must(t, d.Publish("dead", DeadLetterMessage(m, "boom")))
	dl := capture.msgs[0]
	if _, ok := dl.Metadata[NATSMeta]; ok {
		t.Errorf("dead letter keeps %s: %v", NATSMeta, dl.Metadata)
	}
	ev, err := ToEvent(dl)
	must(t, err)
	if got := gjson.GetBytes(ev.Meta, NATSSourceMeta+".sequence").Int(); got != 7 {
		t.Errorf("dead letter meta %s: want %s.sequence 7", ev.Meta, NATSSourceMeta)
	}
	if gjson.GetBytes(ev.Meta, "other.a").Int() != 1 || gjson.GetBytes(ev.Meta, "error").String() != "boom" {
		t.Errorf("dead letter meta %s", ev.Meta)
	}
	if m.Metadata.Get(NATSMeta) == "" {
		t.Error("the original message lost its metadata")
	}
}
