// Package bus connects flows to message buses through watermill's
// message.Subscriber and message.Publisher: a Source that feeds a flow from a
// topic with at-least-once delivery, and a Sink that publishes events.
// Two buses are wired up: watermill's in-process gochannel (tests, fan-out
// inside one process) and NATS JetStream through watermill-nats.
//
// Inside a flow, events still travel on the graph's plain channels; watermill
// is used only at the edge. A message becomes an event as follows (and back,
// symmetrically, in the Sink):
//
//   - payload ↔ Event.Data. The payload must be JSON; an empty payload is
//     null. A payload that is not JSON becomes an event on the source's "err"
//     port whose data is the raw payload as a JSON string.
//   - metadata ↔ the top-level fields of Event.Meta. Metadata values are
//     strings. A string meta field is sent as is; any other value (number,
//     object, ...) is sent as its JSON text and its key is listed in the
//     metadata key JSONKeysKey, so that flowrun reads it back as the same
//     JSON value. Messages without that key (from other producers) keep
//     every value as a string, except values that are a JSON object or array.
//   - meta.correlation ↔ metadata CorrelationKey ("correlation_id", the key of
//     watermill's CorrelationID middleware), so correlation survives a hop.
//
// Delivery is at least once, acknowledged in windows: the Source takes up to
// Window messages, emits them with unique Seqs, waits until the graph is
// idle (every event derived from them handled by every node, kv writes
// synced, sinks written) and only then acks them. A message from which an
// event reached an unlinked "err" port is nacked and redelivered; after
// MaxDeliveries it is published to the dead-letter topic with metadata
// "error" and acked. Redelivery means duplicates are possible: flows that
// must not apply a message twice use kv's cas (see docs/bus.md).
package bus
