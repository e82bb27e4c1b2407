package mqtt

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	packets311 "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/flowrun/flowrun/connectors/bus"
)

// fakeMessage is a received MQTT message recording its ack.
type fakeMessage struct {
	id   uint16
	acks *ackLog
	// block, when set, holds Ack until it is closed, as paho's ack path
	// does while its goroutines are busy.
	block chan struct{}
	qos   byte // 0 for 1
}

func (m *fakeMessage) Duplicate() bool { return false }
func (m *fakeMessage) Qos() byte {
	if m.qos != 0 {
		return m.qos
	}
	return 1
}
func (m *fakeMessage) Retained() bool    { return false }
func (m *fakeMessage) Topic() string     { return "t" }
func (m *fakeMessage) MessageID() uint16 { return m.id }
func (m *fakeMessage) Payload() []byte   { return []byte(`{"id":` + string(rune('0'+m.id)) + `}`) }
func (m *fakeMessage) Ack() {
	if m.block != nil {
		<-m.block
	}
	m.acks.add(m.id)
}

type ackLog struct {
	mu  sync.Mutex
	ids []uint16
}

func (l *ackLog) add(id uint16) { l.mu.Lock(); l.ids = append(l.ids, id); l.mu.Unlock() }
func (l *ackLog) get() []uint16 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint16(nil), l.ids...)
}

// waitAcks waits until log holds n acks, at most d.
func waitAcks(log *ackLog, n int, d time.Duration) []uint16 {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if got := log.get(); len(got) >= n {
			return got
		}
	}
	return log.get()
}

func next(t *testing.T, c *conn) *message.Message {
	t.Helper()
	select {
	case m := <-c.out:
		return m
	case <-time.After(2 * time.Second):
		t.Fatal("no message handed over")
		return nil
	}
}

// TestAcksInArrivalOrder: messages settled out of order are acked in the
// order they arrived (MQTT 3.1.1 §4.6); a nacked message is handed over
// again with its id and a higher delivery count, and holds back the acks
// of the later ones until it is acked.
func TestAcksInArrivalOrder(t *testing.T) {
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON, idFrom: "id"}, 10)
	log := &ackLog{}
	for id := uint16(1); id <= 4; id++ {
		c.handle(nil, &fakeMessage{id: id, acks: log})
	}
	c.start()
	m := []*message.Message{nil, next(t, c), next(t, c), next(t, c), next(t, c)}
	m[2].Ack()
	m[4].Ack()
	if got := waitAcks(log, 1, 100*time.Millisecond); len(got) != 0 {
		t.Fatalf("acks %v sent before message 1 was done", got)
	}
	m[1].Nack()
	again := next(t, c)
	if again.UUID != m[1].UUID || deliveries(again) != 2 || deliveries(m[1]) != 1 {
		t.Fatalf("redelivery: id %q (want %q), deliveries %d", again.UUID, m[1].UUID, deliveries(again))
	}
	if got := waitAcks(log, 1, 100*time.Millisecond); len(got) != 0 {
		t.Fatalf("acks %v sent while message 1 is being retried", got)
	}
	again.Ack()
	if got := waitAcks(log, 2, 2*time.Second); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("acks %v, want [1 2] (4 waits for 3)", got)
	}
	m[3].Ack()
	// release sends what is ready, even an ack made just before it.
	if err := c.release(); err != nil {
		t.Fatal(err)
	}
	if got := log.get(); len(got) != 4 || got[2] != 3 || got[3] != 4 {
		t.Fatalf("acks after release %v, want [1 2 3 4]", got)
	}
	if _, open := <-c.out; open {
		t.Error("out still open after release")
	}
	if got := m[3].Metadata.Get(bus.DeliveredKey); got != "1" {
		t.Errorf("delivery count %q", got)
	}
}

// TestNackAfterReleaseLeavesTheMessageToTheBroker: a message nacked once
// its connection has ended is neither handed over again nor acked: the
// broker resends it on the next session.
func TestNackAfterReleaseLeavesTheMessageToTheBroker(t *testing.T) {
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, 10)
	log := &ackLog{}
	c.handle(nil, &fakeMessage{id: 1, acks: log})
	c.start()
	m := next(t, c)
	if err := c.release(); err != nil {
		t.Fatal(err)
	}
	m.Nack()
	if _, open := <-c.out; open {
		t.Error("message handed over after release")
	}
	if got := log.get(); len(got) != 0 {
		t.Errorf("acks %v", got)
	}
}

// TestMaxInflight: no more than MaxInflight messages are handed over
// unsettled, whatever the broker sends; settling one frees a slot.
func TestMaxInflight(t *testing.T) {
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, 2)
	log := &ackLog{}
	for id := uint16(1); id <= 3; id++ {
		c.handle(nil, &fakeMessage{id: id, acks: log})
	}
	c.start()
	defer c.release()
	first, _ := next(t, c), next(t, c)
	select {
	case m := <-c.out:
		t.Fatalf("third message %s handed over with two unsettled", m.UUID)
	case <-time.After(100 * time.Millisecond):
	}
	first.Ack()
	next(t, c)
}

// TestQueuedMessagesHandedOverAtOnce: the messages queued are handed
// over in one go, as many as there are slots, without waiting for the
// reader to take each (out has room for every slot); the one beyond the
// slots waits.
func TestQueuedMessagesHandedOverAtOnce(t *testing.T) {
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, 3)
	log := &ackLog{}
	for id := uint16(1); id <= 4; id++ {
		c.handle(nil, &fakeMessage{id: id, acks: log})
	}
	c.start()
	defer c.release()
	for deadline := time.Now().Add(5 * time.Second); len(c.out) < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages handed over without a reader, want 3", len(c.out))
		}
	}
	time.Sleep(20 * time.Millisecond)
	if n := len(c.out); n != 3 {
		t.Fatalf("%d messages handed over with 3 slots", n)
	}
	for id := 1; id <= 3; id++ {
		next(t, c).Ack()
	}
	next(t, c).Ack()
	if got := waitAcks(log, 4, 5*time.Second); len(got) != 4 || got[0] != 1 || got[3] != 4 {
		t.Fatalf("acks %v, want [1 2 3 4]", got)
	}
}

// TestLostConnectionTakesBackItsMessages: messages handed over but not yet
// taken when the connection ends are taken back (the broker resends them),
// not processed after it, and not acked.
func TestLostConnectionTakesBackItsMessages(t *testing.T) {
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, 10)
	log := &ackLog{}
	for id := uint16(1); id <= 3; id++ {
		c.handle(nil, &fakeMessage{id: id, acks: log})
	}
	c.start()
	for deadline := time.Now().Add(5 * time.Second); len(c.out) < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages handed over, want 3", len(c.out))
		}
	}
	c.lost(nil, errors.New("connection reset"))
	if err := c.release(); err != nil {
		t.Fatal(err)
	}
	if m, open := <-c.out; open {
		t.Fatalf("message %s still handed over after the connection ended", m.Payload)
	}
	if got := log.get(); len(got) != 0 {
		t.Errorf("acks %v", got)
	}
}

// TestNoGoroutinePerMessage: handing messages over and waiting for their
// settlement takes the same goroutines for 1 message as for 300 (it took
// one goroutine per unsettled message, whose wake-ups, a window at a
// time, held back the acks).
func TestNoGoroutinePerMessage(t *testing.T) {
	const n = 300
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, n)
	log := &ackLog{}
	for i := range n {
		c.handle(nil, &fakeMessage{id: uint16(i), acks: log})
	}
	before := runtime.NumGoroutine()
	c.start()
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = next(t, c)
	}
	if grown := runtime.NumGoroutine() - before; grown > 5 {
		t.Errorf("%d goroutines more with %d messages unsettled, want at most 5", grown, n)
	}
	for _, m := range msgs {
		m.Ack()
	}
	if got := waitAcks(log, n, 5*time.Second); len(got) != n {
		t.Fatalf("%d acks, want %d", len(got), n)
	}
	if err := c.release(); err != nil {
		t.Fatal(err)
	}
}

// TestSettlingGoesOnWhileAcksAreSlow: while paho is slow to take acks
// (MQTT 3.1.1), settlements go on and free their slots, so the flow gets
// more messages; the acks follow, in order.
func TestSettlingGoesOnWhileAcksAreSlow(t *testing.T) {
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, 2)
	log, block := &ackLog{}, make(chan struct{})
	for id := uint16(1); id <= 5; id++ {
		c.handle(nil, &fakeMessage{id: id, acks: log, block: block})
	}
	c.start()
	next(t, c).Ack()
	next(t, c).Ack()
	time.Sleep(50 * time.Millisecond) // the acks of 1 and 2 are being sent, and held
	next(t, c).Ack()
	next(t, c)
	next(t, c) // handed over once 3 is settled, its ack still waiting
	close(block)
	if got := waitAcks(log, 3, 5*time.Second); len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 3 {
		t.Fatalf("acks %v, want [1 2 3]", got)
	}
	if err := c.release(); err != nil {
		t.Fatal(err)
	}
}

// recordingConn is a connection that records what is written to it.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *recordingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, append([]byte(nil), b...))
	return len(b), nil
}

func (c *recordingConn) got() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

// TestAcks5WrittenAtOnce: the PUBACKs of a run of done MQTT 5 messages go
// out in one write, in order.
func TestAcks5WrittenAtOnce(t *testing.T) {
	rc := &recordingConn{}
	c := newConn5(slog.Default(), "src", decoder{codec: CodecJSON}, 10)
	c.conn = &lingerConn{Conn: rc}
	c.ack([]*paho5.Publish{{QoS: 1, PacketID: 7}, {QoS: 1, PacketID: 3}, {QoS: 1, PacketID: 9}})
	writes := rc.got()
	if len(writes) != 1 {
		t.Fatalf("%d writes for 3 acks, want 1", len(writes))
	}
	r := bytes.NewReader(writes[0])
	for _, want := range []uint16{7, 3, 9} {
		cp, err := packets.ReadPacket(r)
		if err != nil {
			t.Fatal(err)
		}
		pa, ok := cp.Content.(*packets.Puback)
		if !ok || pa.PacketID != want || pa.ReasonCode != 0 {
			t.Fatalf("packet %v, want PUBACK %d", cp, want)
		}
	}
	if r.Len() != 0 {
		t.Errorf("%d bytes more", r.Len())
	}
}

// TestPahoPacketsTakeTheConnectionLock: paho.golang writes a packet in
// several writes, under the connection's lock when it has one: a
// lingerConn has one, so the connection's own writes (the acks) never
// land inside a packet of paho's.
func TestPahoPacketsTakeTheConnectionLock(t *testing.T) {
	rc := &recordingConn{}
	lc := &lingerConn{Conn: rc}
	lc.Lock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = (&packets.Pingreq{}).WriteTo(lc)
	}()
	time.Sleep(50 * time.Millisecond)
	if got := rc.got(); len(got) != 0 {
		t.Errorf("paho wrote %q while the connection was locked", got)
	}
	lc.Unlock()
	<-done
	if len(rc.got()) == 0 {
		t.Error("nothing written")
	}
}

// TestAcksWrittenAtOnce: the PUBACKs of a run of done MQTT 3.1.1 messages
// go out in one write on the connection, in order, not through paho; a
// QoS 2 message is acknowledged through paho (its PUBREC).
func TestAcksWrittenAtOnce(t *testing.T) {
	rc := &recordingConn{}
	c := newConn(slog.Default(), "src", decoder{codec: CodecJSON}, 10)
	c.net = &ackConn{newLingerConn(rc, 0)}
	log := &ackLog{}
	c.queueAcks([]paho.Message{&fakeMessage{id: 7, acks: log}, &fakeMessage{id: 300, acks: log},
		&fakeMessage{id: 5, acks: log, qos: 2}, &fakeMessage{id: 9, acks: log}})
	c.sendAcks()
	writes := rc.got()
	if len(writes) != 1 {
		t.Fatalf("%d writes for 3 PUBACKs, want 1", len(writes))
	}
	r := bytes.NewReader(writes[0])
	for _, want := range []uint16{7, 300, 9} {
		cp, err := packets311.ReadPacket(r)
		if err != nil {
			t.Fatal(err)
		}
		pa, ok := cp.(*packets311.PubackPacket)
		if !ok || pa.MessageID != want {
			t.Fatalf("packet %v, want PUBACK %d", cp, want)
		}
	}
	if r.Len() != 0 {
		t.Errorf("%d bytes more", r.Len())
	}
	if got := log.get(); len(got) != 1 || got[0] != 5 {
		t.Errorf("acked through paho: %v, want [5] (the QoS 2 message)", got)
	}
}

// TestAckStoreKeepsNoQoS1Received: paho's store of a source connection
// does not keep the QoS 1 messages received, whose acks paho never sends
// (it would keep them all until the connection ends), and keeps the rest.
func TestAckStoreKeepsNoQoS1Received(t *testing.T) {
	s := ackStore{paho.NewMemoryStore()}
	s.Open()
	defer s.Close()
	pub := func(qos byte, id uint16) *packets311.PublishPacket {
		p := packets311.NewControlPacket(packets311.Publish).(*packets311.PublishPacket)
		p.Qos, p.MessageID = qos, id
		return p
	}
	s.Put("i.1", pub(1, 1))
	s.Put("i.2", pub(2, 2))
	s.Put("o.3", pub(1, 3))
	if got := s.All(); len(got) != 2 || s.Get("i.1") != nil || s.Get("i.2") == nil || s.Get("o.3") == nil {
		t.Errorf("stored %v, want i.2 and o.3", got)
	}
}

// countingConn is a connection reading from r, counting its reads.
type countingConn struct {
	net.Conn
	r     *bytes.Reader
	reads int
}

func (c *countingConn) Read(b []byte) (int, error) { c.reads++; return c.r.Read(b) }

// TestReadsBuffered: a run of packets the broker sent at once is read with
// one read of the connection, not three or more per packet (paho reads the
// first byte, then the length a byte at a time, then the rest).
func TestReadsBuffered(t *testing.T) {
	var wire bytes.Buffer
	for id := uint16(1); id <= 3; id++ {
		p := packets311.NewControlPacket(packets311.Publish).(*packets311.PublishPacket)
		p.TopicName, p.Qos, p.MessageID, p.Payload = "t", 1, id, []byte(`{"i":1}`)
		if err := p.Write(&wire); err != nil {
			t.Fatal(err)
		}
	}
	cc := &countingConn{r: bytes.NewReader(wire.Bytes())}
	lc := newLingerConn(cc, 0)
	for id := uint16(1); id <= 3; id++ {
		cp, err := packets311.ReadPacket(lc)
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := cp.(*packets311.PublishPacket); !ok || p.MessageID != id || string(p.Payload) != `{"i":1}` {
			t.Fatalf("packet %v, want PUBLISH %d", cp, id)
		}
	}
	if cc.reads != 1 {
		t.Errorf("%d reads of the connection for 3 packets, want 1", cc.reads)
	}
}
