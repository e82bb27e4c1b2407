package mqtt

import (
	"bytes"
	"encoding/json"
	"strings"
	"unsafe"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

// direct returns the message of r with its event attached (bus.WithEvent),
// both made in one pass: the payload gets its one I-JSON check, the event's
// data is a view of the payload (which nobody modifies: the clients
// allocate each one), its meta is written in the order bus.ToEvent gives
// (fields sorted by name), and the message's metadata is filled alongside,
// as decodeMessage fills it (dead letters and redeliveries are made of
// it). It returns nil for anything out of the ordinary, which
// decodeMessage handles: a payload that is not JSON or not an envelope,
// strings that need repair, an id_from that finds no id, an envelope meta
// field named correlation_id. TestDirectMatchesMessage and
// FuzzDirectMatchesMessage check that the message and event are those
// decodeMessage and bus.ToEvent give.
func (d *decoder) direct(r received) *message.Message {
	payload := r.payload
	if d.codec == CodecJSON {
		payload = bytes.TrimSpace(payload)
		if len(payload) == 0 {
			return nil
		}
	}
	rep, err := d.check.Check(payload, "")
	if err != nil || rep.BadString != nil {
		return nil
	}
	info := d.info(r)
	md := make(message.Metadata, 4)
	md[MetaKey] = info
	fields := append(d.fields[:0], metaValue{name: MetaKey, raw: info})
	defer func() { clear(fields); d.fields = fields[:0] }()
	data, id := payload, ""
	msgPayload := r.payload
	if d.codec == CodecEvent {
		if payload[0] != '{' {
			return nil
		}
		n := 0
		ds, de, hasData := d.check.Member(payload, "data")
		ms, me, hasMeta := d.check.Member(payload, "meta")
		if hasData {
			n++
		}
		if hasMeta {
			n++
		}
		if d.check.Members() != n || !hasData && d.idFrom != "" && d.idFrom != IDHash {
			return nil
		}
		data = nil
		if hasData {
			data = payload[ds:de:de]
		}
		msgPayload = data
		jsonKeys := append(d.keys[:0], MetaKey...)
		defer func() { d.keys = jsonKeys[:0] }()
		if hasMeta && payload[ms] == '{' {
			ok := true
			gjson.Parse(bytesString(payload[ms:me])).ForEach(func(k, v gjson.Result) bool {
				key := k.String()
				switch key {
				case bus.MessageIDMeta:
					if v.Type == gjson.String {
						id = v.String()
					}
					return true
				case MetaKey, bus.JSONKeysKey, bus.DeliveredKey, bus.DecodeErrorKey:
					return true // set by the receiving side only
				case bus.CorrelationKey:
					ok = false // decodeMessage merges it with correlation
					return false
				}
				if strings.Contains(key, ",") || strings.TrimSpace(key) != key {
					ok = false // decodeMessage lists the JSON ones comma-separated
					return false
				}
				mdKey := key
				if key == bus.CorrelationMeta {
					mdKey = bus.CorrelationKey
				}
				if v.Type == gjson.String {
					s := v.String()
					md[mdKey] = s
					if len(v.Raw) == len(s)+2 && v.Raw[1:len(s)+1] == s && plainJSONString(s) {
						fields = append(fields, metaValue{name: key, raw: v.Raw})
					} else {
						fields = append(fields, metaValue{name: key, str: s, quote: true})
					}
				} else {
					md[mdKey] = v.Raw
					jsonKeys = append(append(jsonKeys, ','), mdKey...)
					fields = append(fields, metaValue{name: key, raw: v.Raw})
				}
				return true
			})
			if !ok {
				return nil
			}
		} else if hasMeta {
			// Not an object: refused by decodeMessage, or null, which
			// decodeMessage reads as a member "" (gjson's ForEach).
			return nil
		}
		if string(jsonKeys) != d.lastKeys {
			d.lastKeys = string(jsonKeys)
		}
		md[bus.JSONKeysKey] = d.lastKeys
	} else {
		md[bus.JSONKeysKey] = MetaKey
	}
	switch d.idFrom {
	case "":
	case IDHash:
		id = HashID(r.topic, r.payload)
	default:
		v := gjson.Get(bytesString(data), d.idFrom)
		if v.Type != gjson.String && v.Type != gjson.Number {
			return nil
		}
		if id = v.String(); id == "" {
			return nil
		}
	}
	if id != "" {
		fields = append(fields, metaValue{name: bus.MessageIDMeta, str: id, quote: true})
	}
	m := message.NewMessage(id, msgPayload)
	m.Metadata = md
	ev := pipeline.Event{Meta: metaObject(fields)}
	if len(data) > 0 {
		ev.Data = data
	}
	bus.WithEvent(m, ev)
	return m
}

// metaValue is one field of the meta object direct writes: the JSON text
// raw, or, with quote, str as bus.ToEvent writes a metadata string.
type metaValue struct {
	name  string
	raw   string
	str   string
	quote bool
}

// info returns mqttInfo(r), the same string as last time when r's topic
// and flags are the same (the usual case: no allocation).
func (d *decoder) info(r received) string {
	if d.lastInfo == "" || r.topic != d.last.topic || r.qos != d.last.qos || r.retained != d.last.retained || r.duplicate != d.last.duplicate {
		d.last = received{topic: r.topic, qos: r.qos, retained: r.retained, duplicate: r.duplicate}
		d.lastInfo = mqttInfo(r)
	}
	return d.lastInfo
}

// metaObject returns the meta object of fields, sorted by name as
// bus.ToEvent sorts them; the names are unique.
func metaObject(fields []metaValue) []byte {
	// An insertion sort: there are few fields.
	for i := 1; i < len(fields); i++ {
		for j := i; j > 0 && fields[j].name < fields[j-1].name; j-- {
			fields[j], fields[j-1] = fields[j-1], fields[j]
		}
	}
	size := 2
	for _, f := range fields {
		size += len(f.name) + len(f.raw) + len(f.str) + 6
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	for i, f := range fields {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, f.name)
		b = append(b, ':')
		if f.quote {
			b = appendJSONString(b, f.str)
		} else {
			b = append(b, f.raw...)
		}
	}
	return append(b, '}')
}

// appendJSONString appends s as a JSON string, the bytes json.Marshal
// gives, as bus.ToEvent writes metadata strings.
func appendJSONString(dst []byte, s string) []byte {
	if plainJSONString(s) {
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	q, _ := json.Marshal(s)
	return append(dst, q...)
}

// bytesString views b as a string, without copying: b must not change
// while the string is in use (a received payload never does).
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
