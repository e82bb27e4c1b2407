package mqtt

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/ijson"
)

// received is what decode needs of a received MQTT message.
type received struct {
	topic     string
	payload   []byte
	qos       byte
	retained  bool
	duplicate bool
}

// decoder turns received MQTT messages into watermill messages for the bus
// Source (which turns them into events with bus.ToEvent).
type decoder struct {
	codec  string
	idFrom string
	check  ijson.Checker // used by one goroutine: the client's router
	fields []metaValue   // direct's scratch space, as check
	keys   []byte        // direct's scratch space for bus.JSONKeysKey
	// The last meta.mqtt made, for a message of the same topic and
	// flags, and the last bus.JSONKeysKey value: strings shared by the
	// messages of a run instead of one each.
	last     received
	lastInfo string
	lastKeys string
}

// decode returns the message for r: payload the event's data, metadata
// its meta (MetaKey with r's MQTT fields; with CodecEvent, the envelope's
// meta), UUID its message id ("" when it has none). A payload it cannot
// decode gives a message carrying bus.DecodeErrorKey, which the Source
// dead-letters. The message of a payload that is an event as it is (the
// usual case, see direct) carries that event too (bus.WithEvent), so the
// Source does not convert its metadata back.
func (d *decoder) decode(r received) *message.Message {
	if m := d.direct(r); m != nil {
		return m
	}
	return d.decodeMessage(r)
}

// decodeMessage is decode through the message's metadata alone: the
// message without an event attached, which bus.ToEvent converts.
func (d *decoder) decodeMessage(r received) *message.Message {
	md := message.Metadata{MetaKey: mqttInfo(r)}
	jsonKeys := []string{MetaKey}
	finish := func(id string, payload []byte, reason string) *message.Message {
		m := message.NewMessage(id, payload)
		m.Metadata = md
		md.Set(bus.JSONKeysKey, strings.Join(jsonKeys, ","))
		if reason != "" {
			md.Set(bus.DecodeErrorKey, reason)
		}
		return m
	}
	data, id := r.payload, ""
	if d.codec == CodecEvent {
		var reason string
		data, id, jsonKeys, reason = d.envelope(r.payload, md, jsonKeys)
		if reason != "" {
			return finish("", r.payload, reason)
		}
	}
	switch d.idFrom {
	case "":
	case IDHash:
		id = HashID(r.topic, r.payload)
	default:
		if !gjson.ValidBytes(data) {
			break // the Source reports a payload that is not JSON
		}
		v := gjson.GetBytes(data, d.idFrom)
		switch v.Type {
		case gjson.String, gjson.Number:
			id = v.String()
		default:
			return finish("", r.payload, fmt.Sprintf("id_from %q: no string or number at that path of the data", d.idFrom))
		}
		if id == "" {
			return finish("", r.payload, fmt.Sprintf("id_from %q: empty id", d.idFrom))
		}
	}
	return finish(id, data, "")
}

// mqttInfo returns meta.mqtt of r, {"topic", "qos", "retained",
// "duplicate"}: the bytes json.Marshal gives for these fields, without its
// reflection for each message.
func mqttInfo(r received) string {
	b := make([]byte, 0, len(r.topic)+64)
	b = append(b, `{"topic":`...)
	if plainJSONString(r.topic) {
		b = append(b, '"')
		b = append(b, r.topic...)
		b = append(b, '"')
	} else {
		q, _ := json.Marshal(r.topic)
		b = append(b, q...)
	}
	b = append(b, `,"qos":`...)
	b = strconv.AppendUint(b, uint64(r.qos), 10)
	b = append(b, `,"retained":`...)
	b = strconv.AppendBool(b, r.retained)
	b = append(b, `,"duplicate":`...)
	b = strconv.AppendBool(b, r.duplicate)
	b = append(b, '}')
	return string(b)
}

// plainJSONString tells whether s is printable ASCII that json.Marshal
// copies as is between quotes.
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// envelope reads a CodecEvent payload {"data": ..., "meta": {...}}: data,
// the id in meta.message_id, and meta's fields into md (their keys whose
// values are JSON added to jsonKeys). reason is not "" when payload is not
// an envelope.
func (d *decoder) envelope(payload []byte, md message.Metadata, jsonKeys []string) (data []byte, id string, keys []string, reason string) {
	const want = `an event envelope {"data": ..., "meta": {...}} (codec event)`
	if _, err := d.check.Check(payload, ""); err != nil {
		return nil, "", jsonKeys, "payload is not " + want + ": " + err.Error()
	}
	root := gjson.ParseBytes(payload)
	if !root.IsObject() {
		return nil, "", jsonKeys, "payload is not " + want
	}
	var meta gjson.Result
	var bad string
	root.ForEach(func(k, v gjson.Result) bool {
		switch k.String() {
		case "data":
			data = []byte(v.Raw)
		case "meta":
			meta = v
		default:
			bad = fmt.Sprintf("payload is not %s: unexpected member %q", want, k.String())
			return false
		}
		return true
	})
	if bad != "" {
		return nil, "", jsonKeys, bad
	}
	if meta.Exists() && !meta.IsObject() && meta.Type != gjson.Null {
		return nil, "", jsonKeys, "payload is not " + want + ": meta is not an object"
	}
	if !meta.IsObject() {
		// Absent or null: no fields (ForEach would visit null itself, as
		// a member named "").
		return data, id, jsonKeys, ""
	}
	meta.ForEach(func(k, v gjson.Result) bool {
		key := k.String()
		switch key {
		case bus.MessageIDMeta:
			if v.Type == gjson.String {
				id = v.String()
			}
			return true
		case MetaKey, bus.JSONKeysKey, bus.DeliveredKey, bus.DecodeErrorKey:
			return true // set by the receiving side only
		case bus.CorrelationMeta:
			key = bus.CorrelationKey
		}
		if v.Type == gjson.String {
			md.Set(key, v.String())
		} else {
			md.Set(key, v.Raw)
			jsonKeys = append(jsonKeys, key)
		}
		return true
	})
	return data, id, jsonKeys, ""
}

// HashID returns the IDHash message id of a payload received on topic: the
// first 128 bits of SHA-256 over topic, a NUL and payload, in hex.
func HashID(topic string, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(topic))
	h.Write([]byte{0})
	h.Write(payload)
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// encode returns the payload publishing m with codec. With CodecJSON it is
// m's payload; with CodecEvent an envelope of m's payload (as a JSON
// string when it is not JSON: a dead letter of a payload that was not)
// and metadata, meta.message_id being m's UUID.
func encode(m *message.Message, codec string) []byte {
	if codec == CodecJSON {
		return m.Payload
	}
	c := m
	if !json.Valid(m.Payload) && len(strings.TrimSpace(string(m.Payload))) > 0 {
		quoted, _ := json.Marshal(string(m.Payload))
		c = message.NewMessage(m.UUID, quoted)
		c.Metadata = m.Metadata
	}
	ev, _ := bus.ToEvent(c) // on error ev still holds valid JSON
	data, meta := ev.Data, ev.Meta
	if gjson.GetBytes(meta, MetaKey).Exists() {
		// Where an upstream source read the event: a source sets its own
		// (a dead letter keeps it as SourceMetaKey, see keepSource).
		if m, err := sjson.DeleteBytes(meta, MetaKey); err == nil {
			meta = m
		}
	}
	if len(data) == 0 {
		data = []byte("null")
	}
	if len(meta) == 0 {
		meta = []byte("{}")
	}
	out := make([]byte, 0, len(data)+len(meta)+20)
	out = append(out, `{"data":`...)
	out = append(out, data...)
	out = append(out, `,"meta":`...)
	out = append(out, meta...)
	return append(out, '}')
}

// deliveries returns the delivery count the subscriber set on m.
func deliveries(m *message.Message) int {
	n, _ := strconv.Atoi(m.Metadata.Get(bus.DeliveredKey))
	return n
}
