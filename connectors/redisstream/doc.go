// Package redisstream is the redis_streams connector: a flow source reading a
// Redis stream through a consumer group, and a sink appending to a stream.
//
// The source is a pipeline.Source of its own, written on go-redis, with
// the promises of every bus source (bus.Source): each entry is
// acknowledged (XACK) only once everything derived from it is done, a
// failed entry is delivered again and dead-lettered after max_deliveries,
// and meta.message_id (the entry ID) is the same on every delivery, for
// idem_from: message_id. The sink is a bus.Sink. What is particular to
// Redis:
//
//   - Reading: XREADGROUP with COUNT up to the free room and BLOCK; at most
//     window × windows_in_flight entries are unacknowledged in a process
//     (the next windows are read and processed while earlier ones are
//     synced and acknowledged). The entries of a read are handed to the
//     source as one slice and emitted, window at a time, with one
//     pipeline.Tracker: no watermill message, goroutine or channel per
//     entry.
//   - Acknowledging: an entry's completion queues its ack and frees its
//     slot directly; the acks go out as one XACK in the same pipeline as
//     the next XREADGROUP (one round trip, one write to the server's
//     append-only file), or by themselves 10 ms later when no read comes.
//     Failed entries are retried or dead-lettered by one settler
//     goroutine.
//   - Decoding: each entry's event is made in one pass over its fields,
//     not through watermill metadata converted back; the entries out of
//     the ordinary go through bus.Decoder.
//   - Restart: a consumer first reads back its own pending entries
//     (XREADGROUP ... 0): those it had not acknowledged when it stopped.
//   - Dead consumers: every claim_idle/2 the source takes over (XAUTOCLAIM)
//     the entries idle for claim_idle in any consumer of the group, and
//     resets the idle time of its own entries in flight (XCLAIM JUSTID), so
//     a slow entry is not taken from a live consumer.
//   - Retry: a failed entry stays pending and is claimed back by its own
//     consumer (XCLAIM) after retry_delay, which makes Redis count one more
//     delivery.
//   - Delivery count: the group's (XPENDING), which counts the deliveries
//     of every consumer, so a message that kills processes is set aside
//     after max_deliveries of them.
//
// Entry layout (what a producer outside flowrun writes): field "data" holds
// the payload (JSON text), every other field is a metadata key (see
// docs/bus.md); a metadata key that is "data" or starts with "meta." is
// stored under "meta." + key.
package redisstream
