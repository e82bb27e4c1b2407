// Package mqtt connects flows to an MQTT broker (MQTT 3.1.1 through
// github.com/eclipse/paho.mqtt.golang, or MQTT 5 through
// github.com/eclipse/paho.golang with Options.Protocol Protocol5): a source
// that subscribes to a topic
// filter with a persistent session and acknowledges each message once
// everything derived from it is done, and a sink that publishes events and
// waits for the broker's acknowledgement.
//
// The source and sink are the connectors/bus Source and Sink over a small
// watermill message.Subscriber and message.Publisher written here: there is
// no official watermill MQTT adapter, and a subscriber needs what the bus
// Source assumes (several messages in flight, each acknowledged after it
// is done, a retry for a nacked one, ids that survive redelivery).
//
// What MQTT 3.1.1 gives and does not give, and so what this package does:
//
//   - Acknowledgement. A QoS 1 message is acknowledged with PUBACK (QoS 2
//     with PUBREC) once the flow is done with it, never before
//     (ClientOptions.AutoAckDisabled). The protocol requires acks in the
//     order the messages were received (MQTT 3.1.1 §4.6): a message done
//     early waits for the ones received before it. Both protocols share
//     the connection's intake (intake.go): three goroutines per
//     connection, whatever the number of messages in flight, one of which
//     waits for the settlements in arrival order and sends the acks of a
//     run of done messages at once: the connection writes the run's
//     PUBACKs in one write itself (acks.go), past paho, which would pass
//     each through two goroutines and write it alone. The connection also
//     reads through a buffer (paho reads a packet in three reads or more).
//   - One pass per message. The source's decoder makes the event of a
//     usual message (JSON, or a CodecEvent envelope) in one pass over the
//     payload, with its one I-JSON check, and attaches it to the watermill
//     message (bus.WithEvent), whose metadata it fills too for dead
//     letters and redeliveries; anything unusual goes through the
//     metadata and bus.ToEvent, which give the same events (codec_direct.go).
//   - No nack. MQTT has no negative acknowledgement, and a broker resends
//     an unacknowledged message only when the client reconnects with its
//     session. A message the bus Source nacks is therefore handed to it
//     again at once by this subscriber (still unacknowledged at the
//     broker), counting its deliveries, so that max_deliveries and the dead
//     letters work; a message redelivered by the broker after a reconnect
//     or restart starts its count again.
//   - Persistent session. The source connects with clean_session false and
//     a stable client id, so the broker keeps its subscription and queues
//     the messages published while flowrun is down (up to the broker's
//     queue limit), and resends those not acknowledged.
//   - Window. MQTT 3.1.1 has no receive maximum: how many messages the
//     broker sends unacknowledged is its own limit (mosquitto's
//     max_inflight_messages, which mosquitto 2.0.11 does not keep for a
//     session's queued messages). The source hands at most
//     SourceOptions.MaxInflight of them to the flow unsettled, so a crash
//     makes it process at most that many again.
//   - No headers. MQTT 3.1.1 messages carry only a payload, so event meta
//     (correlation, kv commands) crosses the broker only with CodecEvent,
//     which wraps the payload in {"data": ..., "meta": {...}} as flowrun's
//     JSON-lines files do, and names the message with meta.message_id.
//   - Ids. MQTT packet ids are per connection and reused; meta.message_id
//     is the envelope's id (CodecEvent), a payload field (IDFrom), or a hash
//     of topic and payload (IDHash), and is absent otherwise, so that the kv
//     connector's idem_from refuses a write rather than dedupe on an id that
//     changes between deliveries.
//
// MQTT 5 (subscriber5.go, publisher5.go, client5.go, codec5.go) keeps those
// promises and adds: a Session Expiry Interval (Options.SessionExpiry) for
// the persistent session (Clean Start false); a Receive Maximum of
// SourceOptions.MaxInflight, so the broker itself sends no more
// unacknowledged; acks written by the connection in arrival order
// (subscriber5 says why not through paho.golang's own ordered
// acknowledgement); user properties carrying event meta with
// CodecJSON (UserProperties); reason codes on a refused publish: transient
// ones (quota exceeded, server busy, ...) retried with backoff, the others
// failing the event at once (RefusedError).
package mqtt
