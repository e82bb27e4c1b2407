// Package kafka is the Kafka bus connector (type kafka): a consumer-group
// source and an idempotent producer sink on franz-go, built on the shared
// bus machinery of connectors/bus (bus.Source for windowed emission,
// per-message settling, retries and dead letters; bus.Sink for publishing).
//
// Reading: a source joins consumer group Group on Topic and hands its
// records to a bus.Source as watermill messages. At most MaxInFlight of
// them are unsettled at once, across and within partitions. Offsets are committed
// by hand: for each partition, the offset below which every record handed
// over is settled (acked, or dead-lettered and then acked), every
// CommitInterval, when partitions are revoked, and at shutdown. A record is
// therefore never committed before everything derived from it is done.
//
// Kafka has no per-message redelivery: a nacked record is retried in place
// (handed over again, with the same message_id and a delivery count one
// higher) while the partition's commit point waits below it; after
// max_deliveries the bus.Source dead-letters it and it counts as settled.
//
// Rebalances: when partitions are revoked (franz-go's OnPartitionsRevoked,
// the default cooperative-sticky balancer revokes only those that move) the
// source stops handing over their records, waits up to RevokeWait for their
// records in flight to settle, commits what is done and forgets the rest:
// records still in flight after that are abandoned, their acks commit
// nothing, and the partition's next owner reads them again (a duplicate).
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
