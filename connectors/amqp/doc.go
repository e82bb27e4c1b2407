// Package amqp connects flows to RabbitMQ (AMQP 0-9-1) queues: a source
// consuming a queue with at-least-once delivery and a sink publishing with
// publisher confirms. Both are built on the shared bus machinery
// (connectors/bus): the source is a bus.Source over a
// bus.ReconnectingSubscriber, so windows, per-message acknowledgement on
// completion, redelivery counting, dead letters and reconnection behave as
// for every bus connector.
//
// The source consumes with manual acknowledgement and a prefetch (QoS) of
// Window × WindowsInFlight, so the broker hands it at most that many
// unacknowledged messages, several windows whose processing overlaps; each is acked once everything derived from it is done, and a
// failed one is nacked with requeue. Deliveries are counted by quorum
// queues (header x-delivery-count); on classic queues flowrun counts the
// failures of each message id itself. A message that keeps failing is
// dead-lettered after max_deliveries: published with a publisher confirm
// to flowrun's dead-letter queue and then acked (the default), or, with
// DeadLetterExchange, nacked without requeue so that the broker moves it to
// the queue's dead-letter exchange.
//
// meta.message_id is the AMQP message_id property, which the sink always
// sets (the watermill message UUID). A message without one gets a random id
// per delivery, or with MessageIDHash a hash of its exchange, routing key,
// headers and body.
//
// The sink publishes each slice of events as persistent messages, then
// waits for the broker's confirm of every message before the slice counts
// as done; a message the broker nacks, or returns as unroutable (mandatory
// publishing), goes to the sink's err port.
//
// The client is github.com/rabbitmq/amqp091-go. watermill-amqp is not used:
// its subscriber hands out one message per channel at a time and waits for
// its ack before taking the next (a window would need a channel per
// message), its publisher waits for each confirm in turn, it ignores
// returns of mandatory messages, and it reconnects on its own, outside
// bus.Reconnect and the readiness it reports.
package amqp
