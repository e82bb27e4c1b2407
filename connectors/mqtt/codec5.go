package mqtt

import (
	"slices"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/flowrun/flowrun/connectors/bus"
)

// decode5 returns the message for a received MQTT 5 publish: as decode
// does for MQTT 3.1.1, plus the user properties in its metadata.
func (d *decoder) decode5(pb *paho5.Publish) *message.Message {
	r := received{topic: pb.Topic, payload: pb.Payload, qos: pb.QoS, retained: pb.Retain, duplicate: pb.Duplicate()}
	if pb.Properties == nil || len(pb.Properties.User) == 0 {
		return d.decode(r)
	}
	m := d.decodeMessage(r)
	withUserProperties(m, pb.Properties.User, d.idFrom)
	return m
}

// UserProperties returns the MQTT 5 user properties carrying m's metadata
// when a sink publishes it with CodecJSON and Protocol5: one per metadata
// field, named as the event meta field ("correlation" for
// meta.correlation), its value the string, or the JSON text of a value that
// is not a string; bus.JSONKeysKey ("flowrun_json") lists the latter, and
// bus.MessageIDMeta ("message_id") holds m's UUID. The fields MetaKey
// ("mqtt": the MQTT fields of a received message) and the receiving side's
// own keys are left out.
func UserProperties(m *message.Message) paho5.UserProperties {
	up := make(paho5.UserProperties, 0, len(m.Metadata)+1)
	if m.UUID != "" {
		up = append(up, paho5.UserProperty{Key: bus.MessageIDMeta, Value: m.UUID})
	}
	keys := make([]string, 0, len(m.Metadata))
	for k := range m.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := m.Metadata[k]
		switch k {
		case MetaKey, bus.DeliveredKey, bus.DecodeErrorKey, bus.MessageIDMeta:
			continue
		case bus.CorrelationKey:
			k = bus.CorrelationMeta
		}
		up = append(up, paho5.UserProperty{Key: k, Value: v})
	}
	return up
}

// withUserProperties adds the user properties of a received message to
// m's metadata (see UserProperties): a field the envelope (CodecEvent)
// already set is kept; a property named as one of the receiving side's
// own keys is ignored; "message_id" names the message when nothing else
// did (id_from unset, no envelope id); a property listed in the
// "flowrun_json" property is JSON, any other a string. When a key repeats,
// the last value counts.
func withUserProperties(m *message.Message, up paho5.UserProperties, idFrom string) {
	if len(up) == 0 || m.Metadata.Get(bus.DecodeErrorKey) != "" {
		return
	}
	isJSON := map[string]bool{}
	for _, p := range up {
		if p.Key == bus.JSONKeysKey {
			for _, k := range strings.Split(p.Value, ",") {
				isJSON[strings.TrimSpace(k)] = true
			}
		}
	}
	fromEnvelope := map[string]bool{}
	for k := range m.Metadata {
		fromEnvelope[k] = true
	}
	jsonKeys := strings.Split(m.Metadata.Get(bus.JSONKeysKey), ",")
	id := ""
	for _, p := range up {
		k := p.Key
		switch k {
		case MetaKey, bus.JSONKeysKey, bus.DeliveredKey, bus.DecodeErrorKey:
			continue
		case bus.MessageIDMeta:
			if idFrom == "" && m.UUID == "" {
				id = p.Value
			}
			continue
		case bus.CorrelationMeta, bus.CorrelationKey:
			k = bus.CorrelationKey
		}
		if fromEnvelope[k] {
			continue
		}
		if _, seen := m.Metadata[k]; !seen && isJSON[p.Key] {
			jsonKeys = append(jsonKeys, k)
		}
		m.Metadata.Set(k, p.Value)
	}
	if id != "" {
		m.UUID = id
	}
	m.Metadata.Set(bus.JSONKeysKey, strings.Join(slices.DeleteFunc(jsonKeys, func(s string) bool { return s == "" }), ","))
}
