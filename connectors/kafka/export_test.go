package kafka

import (
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
)

// For the external tests.

// RecordMessage is recordMessage.
var RecordMessage = recordMessage

// RecordOf is the record a sink produces for m on topic.
func RecordOf(topic string, m *message.Message) *kgo.Record {
	return (&publisher{}).record(topic, m)
}

// SinkLinger is the producer linger of s's client.
func SinkLinger(s *Sink) time.Duration {
	return s.pub.client.OptValue(kgo.ProducerLinger).(time.Duration)
}
