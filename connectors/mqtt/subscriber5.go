package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"

	"github.com/flowrun/flowrun/connectors/bus"
)

// subscriber5 dials MQTT 5 connections for a bus.ReconnectingSubscriber.
//
// How paho.golang v0.23.0 is used: it acknowledges each message as soon as
// its handler returns, through the session state; the connection's
// session (session5) drops those acks, and the connection's intake sends
// each once the message and every one received before it are done (MQTT 5
// §4.6). paho's manual acknowledgement (EnableManualAcknowledgment,
// Client.Ack) is not used: its record of received messages is cleared by
// Connect after reading has started, so the messages a session delivers
// right after CONNACK could be missing from it and never acknowledged on
// that connection (seen under -race), and each Client.Ack scans it. The
// client's session state (paho's in-memory State) keeps nothing for
// received QoS 1 messages: the broker's session holds them until
// acknowledged and resends them on the next connection, to a new client.
type subscriber5 struct {
	opts SourceOptions
}

// dial implements bus.Dial: it connects with Clean Start false, the
// Session Expiry Interval opts.SessionExpiry and the Receive Maximum
// opts.MaxInflight, subscribes to topic and returns the connection's
// messages.
func (s *subscriber5) dial(ctx context.Context, topic string) (<-chan *message.Message, func() error, error) {
	o := s.opts
	c := newConn5(o.Logger, o.Source.Name, decoder{codec: o.Codec, idFrom: o.IDFrom}, o.MaxInflight)
	client, lc, err := client5{opts: o.Options, clientID: o.ClientID, cleanStart: false, sessionExpiry: o.SessionExpiry,
		receiveMax: o.MaxInflight, packetTimeout: o.ConnectTimeout, onPublish: c.handle, session: c.session}.connect(ctx)
	if err != nil {
		_ = c.session.Close()
		return nil, nil, fmt.Errorf("%w at %s: %w", bus.ErrConnect, o.URL, err)
	}
	c.client, c.conn = client, lc
	sctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	sa, err := client.Subscribe(sctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: topic, QoS: o.QoS}}})
	if err == nil && (len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80) {
		err = fmt.Errorf("%w: %q (reason codes %x)", ErrRefused, topic, sa.Reasons)
	}
	if err != nil {
		disconnect5(client)
		_ = c.session.Close()
		return nil, nil, fmt.Errorf("%w to %q at %s: %w", bus.ErrSubscribe, topic, o.URL, err)
	}
	c.start()
	return c.out, c.release, nil
}

// session5 is paho's in-memory session state, the acknowledgements left
// to the connection (see subscriber5).
type session5 struct {
	*state.State
}

// Ack implements session.SessionManager: it drops the acks paho sends as
// handlers return; conn5 sends them itself.
func (s *session5) Ack(*packets.Publish) error { return nil }

// conn5 is one MQTT 5 connection of the subscriber: an intake (see there)
// that writes its acks itself.
type conn5 struct {
	*intake[*paho5.Publish]
	dec     decoder
	client  *paho5.Client
	conn    *lingerConn // the client's connection
	session *session5
	// acks holds the PUBACKs of one flush, written at once.
	acks        []byte
	releaseOnce sync.Once
}

func newConn5(logger *slog.Logger, name string, dec decoder, maxInflight int) *conn5 {
	c := &conn5{dec: dec, session: &session5{State: state.NewInMemory()}}
	c.intake = newIntake(logger, name, maxInflight, c.ack)
	return c
}

// handle queues a received message. It runs on the client's router
// goroutine, in arrival order, and never blocks.
func (c *conn5) handle(pr paho5.PublishReceived) (bool, error) {
	c.push(pr.Packet, c.dec.decode5(pr.Packet), pr.Packet.QoS > 0)
	return true, nil
}

// ack acknowledges pbs, in order: the PUBACKs of QoS 1 messages are
// written together, in one write; a QoS 2 message is acknowledged
// (PUBREC) through the session state, which records it.
func (c *conn5) ack(pbs []*paho5.Publish) {
	for _, pb := range pbs {
		if pb.QoS == 1 {
			// Success without properties: the short form, as in 3.1.1
			// (MQTT 5 §3.4.2.1), written without paho's encoder.
			c.acks = appendPuback(c.acks, pb.PacketID)
			continue
		}
		c.writeAcks()
		if err := c.session.State.Ack(pb.Packet()); err != nil {
			// The connection is lost: the broker resends the message.
			c.logger.Debug("mqtt ack not sent", "node", c.name, "error", err)
		}
	}
	c.writeAcks()
}

// writeAcks writes the PUBACKs held in c.acks, under the connection's
// lock, so that they do not interleave with a packet of paho's.
func (c *conn5) writeAcks() {
	if len(c.acks) == 0 {
		return
	}
	c.conn.Lock()
	_, err := c.conn.Write(c.acks)
	c.conn.Unlock()
	if err != nil {
		// The connection is lost: the broker resends the messages.
		c.logger.Debug("mqtt acks not sent", "node", c.name, "error", err)
	}
	c.acks = c.acks[:0]
}

func (c *conn5) start() {
	c.intake.start()
	go func() {
		select {
		case <-c.client.Done():
			if c.ctx.Err() == nil {
				c.logger.Warn("mqtt connection lost", "node", c.name)
			}
			c.cancel()
		case <-c.ctx.Done():
		}
	}()
}

// release ends the connection: the acks that are ready are sent, then the
// client disconnects. Messages not acked stay with the broker's session.
func (c *conn5) release() error {
	c.releaseOnce.Do(func() {
		c.stop()
		disconnect5(c.client)
		_ = c.session.Close()
	})
	return nil
}
