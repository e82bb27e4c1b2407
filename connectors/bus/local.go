package bus

import (
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
)

// NewLocal returns an in-process bus (watermill's gochannel) for the
// gochannel connectors of one process to share. Messages are not persisted:
// a message published while a topic has no subscriber is dropped, and so
// are messages not yet acked when the process stops. Each message is handed
// over by a goroutine of its own, so their order is not kept; a nacked
// message is redelivered at once.
func NewLocal(logger *slog.Logger) *gochannel.GoChannel {
	if logger == nil {
		logger = slog.Default()
	}
	return gochannel.NewGoChannel(gochannel.Config{}, watermillLogger(logger))
}
