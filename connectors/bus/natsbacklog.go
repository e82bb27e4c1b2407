package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/internal/partition"
)

// ErrPartitionBacklog reports input still waiting in partition subjects:
// messages a partitioned source has not consumed (or not acknowledged).
var ErrPartitionBacklog = errors.New("input is waiting in the partition subjects")

// PartitionBacklog reports the input waiting for the partitions 0 to
// count-1 of a partitioned source (partitions_of) reading base's
// partition subjects with durable consumers PartitionDurable(durable, p):
// for each partition, the messages its consumer has not delivered plus
// those delivered and not acknowledged, or, for a partition without a
// consumer yet, every message stored on its subject (a new consumer
// delivers them all). stream names the stream when the source names one;
// "" finds the one capturing PartitionFilter(base). No stream: nothing
// waits. The map holds the partitions with something waiting.
func PartitionBacklog(ctx context.Context, js jetstream.JetStream, base, stream, durable string, count int) (map[int]uint64, error) {
	if stream == "" {
		name, err := js.StreamNameBySubject(ctx, PartitionFilter(base))
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("find the stream of %s: %w", PartitionFilter(base), err)
		}
		stream = name
	}
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(PartitionFilter(base)))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	out := map[int]uint64{}
	for p := range count {
		ci, err := s.Consumer(ctx, PartitionDurable(durable, p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			if n := info.State.Subjects[partition.Subject(base, p)]; n > 0 {
				out[p] = n
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("consumer %s of stream %s: %w", PartitionDurable(durable, p), stream, err)
		}
		st := ci.CachedInfo()
		if n := st.NumPending + uint64(st.NumAckPending); n > 0 {
			out[p] = n
		}
	}
	return out, nil
}

// BacklogError describes a backlog found by PartitionBacklog, wrapping
// ErrPartitionBacklog, for the source node named node.
func BacklogError(node, base string, backlog map[int]uint64) error {
	if len(backlog) == 0 {
		return nil
	}
	var parts []string
	total := uint64(0)
	for p := range partition.MaxCount {
		if n, ok := backlog[p]; ok {
			total += n
			if len(parts) < 5 {
				parts = append(parts, fmt.Sprintf("%s: %d", partition.Subject(base, p), n))
			}
		}
	}
	if len(backlog) > len(parts) {
		parts = append(parts, "...")
	}
	return fmt.Errorf("%w: source %q has %d messages not yet consumed or acknowledged (%s); run the flow with the old count until they are consumed, stop it, then try again",
		ErrPartitionBacklog, node, total, strings.Join(parts, ", "))
}
