package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/ijson"
	"github.com/flowrun/flowrun/pipeline"
)

// Metadata keys with a meaning of their own.
const (
	// CorrelationKey is the metadata key that carries meta.correlation: the
	// key watermill's CorrelationID middleware reads and writes.
	CorrelationKey = middleware.CorrelationIDMetadataKey
	// CorrelationMeta is the event meta field mapped to CorrelationKey.
	CorrelationMeta = "correlation"
	// JSONKeysKey lists, comma-separated, the metadata keys whose values
	// are JSON text rather than plain strings. Every message flowrun
	// publishes has it, empty when all values are strings.
	JSONKeysKey = "flowrun_json"
	// DeliveredKey is set by the NATS connector to the number of times the
	// broker has delivered the message (1 on first delivery). It is not
	// copied into event meta.
	DeliveredKey = "flowrun_delivered"
	// MessageIDMeta is the event meta field holding the message's id (the
	// watermill message UUID; for a JetStream message published without
	// one, its Nats-Msg-Id or else stream name and sequence). It is the same
	// on every redelivery of a message, so it serves as the idempotency
	// key of the kv commands the message causes (kv option idem_from).
	// Publishing never copies it: a published message has an id of its own.
	MessageIDMeta = "message_id"
	// ErrorKey is the metadata key of a dead letter's failure reason (it
	// becomes meta.error when read back by a flowrun source).
	ErrorKey = "error"
	// DecodeErrorKey is set by a subscriber that received a message it
	// cannot decode (an MQTT payload that is not the envelope its codec
	// expects): ToEvent then fails with ErrUndecodable and this reason,
	// so the message is dead-lettered at once. It is not copied into
	// event meta nor into the dead letter.
	DecodeErrorKey = "flowrun_decode_error"
)

// ErrNotJSON reports a message payload that is not valid JSON.
var ErrNotJSON = errors.New("message payload is not JSON")

// ErrUndecodable reports a message its subscriber could not decode (see
// DecodeErrorKey).
var ErrUndecodable = errors.New("message cannot be decoded")

// ErrNotIJSON reports a message that every component could not read the
// same way: a payload or JSON metadata value with two members of the same
// name or with a lone surrogate escape or invalid UTF-8 in a member name,
// or metadata (names or values) that is not valid UTF-8. It wraps the
// *ijson.Error that locates the problem when there is one. (Invalid UTF-8
// and lone surrogates in payload string values are repaired to U+FFFD
// instead, as the JSON-lines sources do.)
var ErrNotIJSON = errors.New("message is not I-JSON")

// ToEvent converts a message into an event. A payload that
// is not JSON gives an error wrapping ErrNotJSON and an event suitable for
// an "err" port: its data is the payload as a JSON string and its meta
// carries the message metadata plus "error".
func ToEvent(msg *message.Message) (pipeline.Event, error) {
	var d Decoder
	return d.ToEvent(msg)
}

// Decoder converts messages into events as ToEvent does, keeping its
// scratch space (the I-JSON checker's) from one message to the next: a
// source converting many messages makes one. The zero value is ready; a
// Decoder is not safe for concurrent use.
type Decoder struct{ check ijson.Checker }

// ToEvent is ToEvent with d's scratch space: the same event and error.
func (d *Decoder) ToEvent(msg *message.Message) (pipeline.Event, error) {
	if ev, ok := attachedEvent(msg); ok {
		return ev, nil
	}
	check := &d.check
	meta, merr := metaFromMetadata(check, msg.Metadata, msg.UUID)
	payload := bytes.TrimSpace(msg.Payload)
	var err error
	switch {
	case msg.Metadata.Get(DecodeErrorKey) != "":
		err = fmt.Errorf("%w: %s", ErrUndecodable, msg.Metadata.Get(DecodeErrorKey))
	case merr != nil:
		err = merr
	case len(payload) == 0:
		return pipeline.Event{Data: nil, Meta: meta}, nil
	default:
		rep, cerr := check.Check(payload, "data")
		switch {
		case errors.Is(cerr, ijson.ErrSyntax):
			err = ErrNotJSON
		case cerr != nil:
			err = fmt.Errorf("%w: %w", ErrNotIJSON, cerr)
		case rep.BadString != nil:
			// As the JSON-lines sources do: every component reads U+FFFD.
			return pipeline.Event{Data: ijson.Repair(nil, payload), Meta: meta}, nil
		default:
			return pipeline.Event{Data: append([]byte(nil), payload...), Meta: meta}, nil
		}
	}
	raw, _ := json.Marshal(string(msg.Payload)) // invalid UTF-8 becomes U+FFFD
	what := "message"
	if msg.UUID != "" {
		what += " " + msg.UUID
	}
	meta = setString(meta, "error", what+": "+err.Error())
	return pipeline.Event{Data: raw, Meta: meta}, err
}

// WithEvent attaches ev to msg: ToEvent (and so a Source) then returns ev
// for msg, without an error, instead of converting its payload and
// metadata. A subscriber that has already made the event of a message
// while decoding it (the one I-JSON check where its bytes become an
// event) attaches it, so that the message is not converted twice. ev must
// be exactly what ToEvent would return for msg, without an error, and msg
// must keep the payload and metadata ToEvent reads: dead letters and
// redeliveries are made of them. A message made from msg (a dead letter, a
// copy) does not carry ev.
func WithEvent(msg *message.Message, ev pipeline.Event) {
	msg.SetContext(&eventContext{Context: msg.Context(), ev: ev})
}

// eventContext is the context of a message WithEvent attached an event
// to: one allocation per message.
type eventContext struct {
	context.Context
	ev pipeline.Event
}

// eventKey is the key of the attached event in a message's context.
type eventKey struct{}

// Value returns the context itself for eventKey.
func (c *eventContext) Value(key any) any {
	if key == (eventKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// attachedEvent returns the event WithEvent attached to msg.
func attachedEvent(msg *message.Message) (pipeline.Event, bool) {
	if c, ok := msg.Context().Value(eventKey{}).(*eventContext); ok {
		return c.ev, true
	}
	return pipeline.Event{}, false
}

// ToMessage converts an event into a message with a new UUID.
// The payload and metadata are valid UTF-8 (invalid UTF-8 in the event is
// repaired, see ijson.AppendEvent).
func ToMessage(ev pipeline.Event) *message.Message {
	var check ijson.Checker
	payload := ijson.AppendEvent(&check, nil, ev.DataJSON())
	msg := message.NewMessage(watermill.NewUUID(), payload)
	meta := ijson.AppendEvent(&check, nil, ev.MetaJSON())
	var jsonKeys []string
	gjson.ParseBytes(meta).ForEach(func(k, v gjson.Result) bool {
		key := k.String()
		if key == MessageIDMeta {
			return true
		}
		if key == CorrelationMeta {
			key = CorrelationKey
		}
		if v.Type == gjson.String {
			msg.Metadata.Set(key, v.String())
		} else {
			msg.Metadata.Set(key, v.Raw)
			jsonKeys = append(jsonKeys, key)
		}
		return true
	})
	// Set even when empty: it marks the metadata as written by flowrun, so
	// a string that looks like JSON is read back as a string.
	msg.Metadata.Set(JSONKeysKey, strings.Join(jsonKeys, ","))
	return msg
}

// metaFromMetadata builds the meta object of a received message with id
// uuid, keys sorted so the same message always gives the same bytes. A
// name or value that is not valid UTF-8, or a JSON value that is not
// I-JSON, gives an error wrapping ErrNotIJSON; meta is then still valid
// JSON (such names left out, such values as repaired strings) for the
// error event.
func metaFromMetadata(check *ijson.Checker, md message.Metadata, uuid string) ([]byte, error) {
	jsonKeys, marked := md[JSONKeysKey]
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	// Names are unique: metadata keys are, correlation_id and correlation
	// give one "correlation", and a message_id key gives way to uuid. The
	// values' JSON text is appended to vals, each field holding its span.
	var room [8]metaField
	fields := room[:0]
	vals := make([]byte, 0, 256)
	if uuid != "" {
		vals = appendJSONString(vals, uuid)
		fields = append(fields, metaField{name: MessageIDMeta, end: len(vals)})
	}
	for k, v := range md {
		if k == JSONKeysKey || k == DeliveredKey || k == MessageIDMeta || k == DecodeErrorKey {
			continue
		}
		if !utf8.ValidString(k) {
			fail(fmt.Errorf("%w: metadata name %q is not valid UTF-8", ErrNotIJSON, k))
			continue
		}
		name := k
		if k == CorrelationKey {
			name = CorrelationMeta
		} else if k == CorrelationMeta {
			if _, both := md[CorrelationKey]; both {
				continue // correlation_id is the authoritative one
			}
		}
		start := len(vals)
		trimmed := strings.TrimSpace(v)
		asJSON := marked && Listed(jsonKeys, k) || !marked && (strings.HasPrefix(trimmed, "{") || strings.HasPrefix(trimmed, "["))
		if asJSON {
			vals = append(vals, trimmed...)
			rep, err := check.Check(vals[start:], "meta."+name)
			switch {
			case err == nil && rep.BadString == nil:
				fields = append(fields, metaField{name: name, start: start, end: len(vals)})
				continue
			case !marked:
				// A foreign value that only looks like JSON stays a string.
			case err == nil:
				fail(fmt.Errorf("%w: %w", ErrNotIJSON, rep.BadString))
			case !errors.Is(err, ijson.ErrSyntax):
				fail(fmt.Errorf("%w: %w", ErrNotIJSON, err))
			}
			vals = vals[:start]
		}
		if !utf8.ValidString(v) {
			fail(fmt.Errorf("%w: metadata %q is not valid UTF-8", ErrNotIJSON, k))
		}
		vals = appendJSONString(vals, v) // invalid UTF-8 becomes U+FFFD
		fields = append(fields, metaField{name: name, start: start, end: len(vals)})
	}
	if len(fields) == 0 {
		return nil, firstErr
	}
	slices.SortFunc(fields, func(a, b metaField) int { return strings.Compare(a.name, b.name) })
	size := len(vals) + 2
	for _, f := range fields {
		size += len(f.name) + 4
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	for i, f := range fields {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.name)
		b = append(b, ':')
		b = append(b, vals[f.start:f.end]...)
	}
	b = append(b, '}')
	return b, firstErr
}

// metaField is one member of the meta object metaFromMetadata builds.
type metaField struct {
	name       string
	start, end int // the value's JSON text in metaFromMetadata's vals
}

// Listed tells whether the comma-separated list (JSONKeysKey's value)
// names key, ignoring the spaces around each name, as ToEvent reads it.
// Connectors that make events in one pass call it to read the list alike.
func Listed(list, key string) bool {
	for list != "" {
		name, rest, _ := strings.Cut(list, ",")
		if strings.TrimSpace(name) == key {
			return true
		}
		list = rest
	}
	return false
}

// appendJSONString appends s as a JSON string, the bytes json.Marshal
// gives (HTML characters and U+2028/U+2029 escaped, invalid UTF-8 as
// U+FFFD): printable ASCII with nothing to escape is copied as is, the
// rest is left to json.Marshal.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// setString returns a copy of the meta object with key set to the string s.
func setString(meta []byte, key, s string) []byte {
	fields := map[string]json.RawMessage{}
	if len(meta) > 0 {
		_ = json.Unmarshal(meta, &fields)
	}
	v, _ := json.Marshal(s)
	fields[key] = v
	out, _ := json.Marshal(fields)
	return out
}
