package amqp

import (
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/ThreeDotsLabs/watermill/message"
)

// ToMessage exposes toMessage to the external tests.
func ToMessage(d *amqp091.Delivery) *message.Message {
	o := Options{}
	o.EnsureDefaults()
	return toMessage(d, &o, 5)
}
