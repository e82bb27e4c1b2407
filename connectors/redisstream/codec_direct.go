package redisstream

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// maxDirectFields bounds the fields of an entry direct takes: it finds a
// field given twice by comparing names one by one.
const maxDirectFields = 32

// decoder makes the event of each entry a Source emits, keeping its
// scratch space from one entry to the next: a decoder is not safe for
// concurrent use.
type decoder struct {
	stream, consumer string
	check            ijson.Checker
	bus              bus.Decoder  // for the entries direct leaves
	fields, meta     []entryField // scratch: the metadata keys, the meta fields
}

// entryField is one metadata key of an entry, or one member of the
// event's meta object: text is the value, JSON text when json is set,
// else a string to quote.
type entryField struct {
	key      string
	text     string
	prefixed bool // read from MetaPrefix + key
	json     bool
}

// event returns the event of x, delivered n times: made in one pass
// (direct) unless x is out of the ordinary, then by bus.ToEvent's code
// from x's message (message). An error (a payload that is not JSON, say)
// comes with an event for the "err" port.
func (d *decoder) event(x redis.XMessage, n int) (pipeline.Event, error) {
	if ev, ok := d.direct(x); ok {
		return ev, nil
	}
	return d.bus.ToEvent(d.message(x, n))
}

// message returns the message of x, delivered n times: toMessage's, with
// the delivery metadata set. Dead letters are made of it.
func (d *decoder) message(x redis.XMessage, n int) *message.Message {
	m := toMessage(x)
	setDelivery(m, n, d.stream, d.consumer)
	return m
}

// setDelivery sets the metadata a subscriber adds to an entry's message:
// the delivery count, the stream and the consumer.
func setDelivery(m *message.Message, n int, stream, consumer string) {
	m.Metadata[bus.DeliveredKey] = strconv.Itoa(n)
	m.Metadata[StreamMeta] = stream
	m.Metadata[ConsumerMeta] = consumer
}

// direct returns the event of x (of any delivery: the count is not in
// the meta), made in one pass over the entry's fields, without a message:
// the payload gets its one I-JSON check, the event's data is a copy of it
// without the spaces around it, and its meta is written in the order
// bus.ToEvent gives (fields sorted by name). It returns false for anything
// out of the ordinary, which message and bus.ToEvent handle: a payload
// that is not JSON or not I-JSON or holds strings that need repair, a
// metadata name or value that is not valid UTF-8, a JSON value
// flowrun_json lists that is not I-JSON, a field flowrun_decode_error or
// correlation, a value that is not a string, more than maxDirectFields
// fields. TestDirectMatchesMessage and FuzzDirectMatchesMessage check
// that the event is the one message and bus.ToEvent give.
func (d *decoder) direct(x redis.XMessage) (pipeline.Event, bool) {
	if len(x.Values) > maxDirectFields || x.ID == "" {
		return pipeline.Event{}, false
	}
	fields, kept := d.fields[:0], d.meta[:0]
	defer func() {
		clear(fields)
		clear(kept)
		d.fields, d.meta = fields[:0], kept[:0]
	}()
	var data string
	hasData := false
	for f, v := range x.Values {
		s, ok := v.(string)
		if !ok {
			return pipeline.Event{}, false
		}
		if f == DataField {
			data, hasData = s, true
			continue
		}
		key, prefixed := f, false
		if strings.HasPrefix(f, MetaPrefix) {
			key, prefixed = f[len(MetaPrefix):], true
		}
		switch key {
		case bus.DeliveredKey, StreamMeta, ConsumerMeta:
			continue // set by the subscriber
		case bus.DecodeErrorKey, bus.CorrelationMeta:
			return pipeline.Event{}, false
		}
		fields = putField(fields, entryField{key: key, text: s, prefixed: prefixed})
	}
	// The meta object: what bus.ToEvent makes of the metadata.
	var jsonKeys string
	marked := false
	for _, f := range fields {
		if f.key == bus.JSONKeysKey {
			jsonKeys, marked = f.text, true
		}
	}
	for _, f := range fields {
		switch f.key {
		case bus.JSONKeysKey, bus.MessageIDMeta:
			continue
		case bus.CorrelationKey:
			f.key = bus.CorrelationMeta
		}
		if !utf8.ValidString(f.key) {
			return pipeline.Event{}, false
		}
		trimmed := strings.TrimSpace(f.text)
		asJSON := marked && bus.Listed(jsonKeys, f.key) ||
			!marked && (strings.HasPrefix(trimmed, "{") || strings.HasPrefix(trimmed, "["))
		if asJSON {
			rep, err := d.check.Check(stringBytes(trimmed), "")
			if err == nil && rep.BadString == nil {
				f.text, f.json = trimmed, true
				kept = append(kept, f)
				continue
			}
			if marked {
				return pipeline.Event{}, false // bus.ToEvent refuses it
			}
		}
		if !utf8.ValidString(f.text) {
			return pipeline.Event{}, false
		}
		kept = append(kept, f)
	}
	kept = append(kept,
		entryField{key: bus.MessageIDMeta, text: x.ID},
		entryField{key: StreamMeta, text: d.stream},
		entryField{key: ConsumerMeta, text: d.consumer})

	var evData []byte
	if trimmed := strings.TrimSpace(data); hasData && trimmed != "" {
		rep, err := d.check.Check(stringBytes(trimmed), "")
		if err != nil || rep.BadString != nil {
			return pipeline.Event{}, false
		}
		evData = []byte(trimmed)
	}
	return pipeline.Event{Data: evData, Meta: metaObject(kept)}, true
}

// putField adds f to fields, unless a field of the same key is there:
// then the one read from MetaPrefix + key is kept (of two such fields,
// the latter), as toMessage does.
func putField(fields []entryField, f entryField) []entryField {
	for i := range fields {
		if fields[i].key == f.key {
			if f.prefixed || !fields[i].prefixed {
				fields[i] = f
			}
			return fields
		}
	}
	return append(fields, f)
}

// metaObject returns the meta object of fields, sorted by key as
// bus.ToEvent sorts them; the keys are unique.
func metaObject(fields []entryField) []byte {
	// An insertion sort: there are few fields.
	for i := 1; i < len(fields); i++ {
		for j := i; j > 0 && fields[j].key < fields[j-1].key; j-- {
			fields[j], fields[j-1] = fields[j-1], fields[j]
		}
	}
	size := 2
	for _, f := range fields {
		size += len(f.key) + len(f.text) + 6
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	for i, f := range fields {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.key)
		b = append(b, ':')
		if f.json {
			b = append(b, f.text...)
		} else {
			b = appendJSONString(b, f.text)
		}
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string, the bytes json.Marshal
// gives, as bus.ToEvent writes metadata strings: printable ASCII with
// nothing to escape is copied as is, the rest is left to json.Marshal.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// stringBytes views s as bytes, without copying, for reading only.
func stringBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
