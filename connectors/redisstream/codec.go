package redisstream

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"
)

// Entry fields with a meaning of their own.
const (
	// DataField is the entry field holding the payload (JSON text).
	DataField = "data"
	// MetaPrefix prefixes the field of a metadata key that would
	// otherwise be read as something else: "data", or a key that starts
	// with MetaPrefix itself.
	MetaPrefix = "meta."
	// StreamMeta is the metadata key (and event meta field) a source
	// sets to the stream an entry was read from.
	StreamMeta = "redis_stream"
	// ConsumerMeta is the metadata key (and event meta field) a source
	// sets to the consumer that received the entry.
	ConsumerMeta = "redis_consumer"
)

// entryValues lays out m as the field-value pairs of a stream entry: the
// payload under DataField, then one field per metadata key, in key order.
func entryValues(m *message.Message) []any {
	keys := make([]string, 0, len(m.Metadata))
	for k := range m.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vals := make([]any, 0, 2+2*len(keys))
	vals = append(vals, DataField, []byte(m.Payload))
	for _, k := range keys {
		f := k
		if k == DataField || strings.HasPrefix(k, MetaPrefix) {
			f = MetaPrefix + k
		}
		vals = append(vals, f, m.Metadata[k])
	}
	return vals
}

// toMessage turns a stream entry into a message whose UUID is the entry
// ID, the same on every delivery. A metadata key given by two fields,
// key and MetaPrefix + key (a producer outside flowrun may write both),
// takes the value of MetaPrefix + key: that field can only mean the key.
func toMessage(x redis.XMessage) *message.Message {
	m := message.NewMessage(x.ID, nil)
	// Room for the fields and the three keys the subscriber adds, so the
	// map does not grow.
	m.Metadata = make(message.Metadata, len(x.Values)+3)
	var prefixed bool
	for f, v := range x.Values {
		switch {
		case f == DataField:
			m.Payload = []byte(valueString(v))
		case strings.HasPrefix(f, MetaPrefix):
			prefixed = true
		default:
			m.Metadata[f] = valueString(v)
		}
	}
	if prefixed {
		for f, v := range x.Values {
			if k, ok := strings.CutPrefix(f, MetaPrefix); ok {
				m.Metadata[k] = valueString(v)
			}
		}
	}
	return m
}

func valueString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}
