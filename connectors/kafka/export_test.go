package kafka

import (
	"context"
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

// CrashSession runs one consumer session as a source with opts would
// (defaults filled as NewSource fills them) and ends it as a crash would
// while the record at offset poison of partition part is being handled: the
// records handed over before it are settled done, the poison one is left
// in flight, and the consumer stops without committing. A record the
// attempt record sets aside is settled done, as the source does once it
// has dead-lettered it, and the session then goes on until a batch with a
// later record is done, and crashes with nothing in flight. The crash comes after the attempt record has caught up with the
// records done. It returns the offsets handed over and those set aside.
func CrashSession(ctx context.Context, opts SourceOptions, part int32, poison int64) (handed, setAside []int64, err error) {
	opts.EnsureDefaults()
	so := opts.Source
	so.Topic, so.Name = opts.Topic, opts.Name
	so.EnsureDefaults()
	opts.Source = so
	c, err := newConsumer(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	crash := func() {
		c.mu.Lock()
		c.closing = true
		c.parts = map[int32]*partition{} // nothing to commit on the way out
		c.mu.Unlock()
		c.cancel()
		c.loops.Wait()
		c.client.Close()
	}
	// catchUp waits until the attempt record has mark at least mark.
	catchUp := func(mark int64) {
		for ctx.Err() == nil {
			c.mu.Lock()
			caught := c.attempts.parts[part].Mark >= mark
			c.mu.Unlock()
			if caught {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	passed := false
	for {
		var ds []delivery
		select {
		case ds = <-c.batches:
			c.began(ds)
		case <-ctx.Done():
			crash()
			return handed, setAside, ctx.Err()
		}
		for i := range ds {
			d := &ds[i]
			if d.rec.Partition != part {
				c.settle(d, true)
				continue
			}
			handed = append(handed, d.rec.Offset)
			switch {
			case d.crashStarts > 0:
				setAside = append(setAside, d.rec.Offset)
				passed = true
				c.settle(d, true)
			case d.rec.Offset == poison:
				catchUp(poison)
				crash()
				return handed, setAside, nil
			default:
				c.settle(d, true)
			}
		}
		if last := handed[len(handed)-1]; passed && last > poison {
			// The whole batch done: no record is in flight at the crash.
			catchUp(last + 1)
			crash()
			return handed, setAside, nil
		}
	}
}
