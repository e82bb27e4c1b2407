// Package kafka is the Kafka bus connector (type kafka): a consumer-group
// source and an idempotent producer sink on franz-go. The source keeps the
// contract of connectors/bus's bus.Source (windows, fail_on, fail_sinks,
// max_deliveries, dead letters) without its per-message machinery; the
// sink is built on bus.Sink's mapping.
//
// Reading: a source joins consumer group Group on Topic. Each fetch of the
// client (PollRecords, at most Window records) is emitted into the graph
// as one slice with one pipeline.Tracker; each record is settled as it
// completes, with no watermill message, channel hop or goroutine per
// record. At most MaxInFlight records are unsettled at once, across and
// within partitions; once that many are, the poll loop waits until a
// whole batch fits again. Offsets are committed by hand: for each
// partition, the offset below which every record handed over is settled
// (done, or dead-lettered), every CommitInterval, when partitions are
// revoked, and at shutdown. A record is therefore never committed before
// everything derived from it is done.
//
// Kafka has no per-message redelivery: a nacked record is retried in place
// (handed over again, with the same message_id and a delivery count one
// higher) while the partition's commit point waits below it; after
// max_deliveries the source dead-letters it and it counts as settled.
//
// Rebalances: when partitions are revoked (franz-go's OnPartitionsRevoked,
// the default cooperative-sticky balancer revokes only those that move) the
// source stops handing over their records, waits up to RevokeWait for their
// records in flight to settle, commits what is done and forgets the rest:
// records still in flight after that are abandoned, their settling
// commits nothing, and the partition's next owner reads them again (a duplicate).
// Lost partitions (OnPartitionsLost: the session expired) are abandoned at
// once without a commit.
//
// Writing: a sink produces every event it receives with acks=all and the
// idempotent producer (franz-go's defaults), the record key from an
// expression, the event's meta as headers; the records of a slice are
// produced together.
//
// Tests run against franz-go's in-process broker kfake; no non-test code of
// this package imports it.
package kafka
