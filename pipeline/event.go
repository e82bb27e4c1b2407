// Package pipeline defines flowrun's event model and the graph runtime that
// moves events between nodes.
//
// An Event is a JSON payload (Data) plus a JSON object of metadata (Meta), both
// kept as raw bytes so that nodes read only the fields they need (with gjson)
// instead of unmarshalling whole events. Nodes are Sources, which produce
// events, and Processors, which receive slices of events on their "in" port
// and emit events on named output ports ("out", "err", ...). A Graph wires
// output ports to the inputs of other nodes with bounded channels, keeps the
// order of events from each upstream node, and shuts down by draining: every
// event a source has emitted is processed before Run returns.
//
// A source that needs to know when one of its events is done (to
// acknowledge a message, answer a request, or order output) tags it with a
// Tracker: the graph reports, once per event, when every event derived from
// it has been consumed, and what became of it (an Outcome).
package pipeline

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Port names used by convention throughout flowrun.
const (
	// PortIn is the single input port of every processor.
	PortIn = "in"
	// PortOut carries a node's normal results.
	PortOut = "out"
	// PortErr carries events a node could not handle, with meta.error set.
	PortErr = "err"
)

// Event is one unit of data flowing through a flow.
//
// Data holds a raw JSON value and Meta a raw JSON object. A nil Data means
// JSON null and a nil Meta means the empty object. Events are shared between
// the nodes a port fans out to, so a node must never modify the bytes of an
// event it received: it builds new slices for what it emits.
type Event struct {
	Data []byte
	Meta []byte
	// origin is the tracked source event this event derives from; see
	// Tracker.
	origin Origin
}

// Derive returns a new event with the given data and metadata that keeps
// e's Origin. Every event a node emits in response to e must be built with
// Derive, so that the source of e learns when it is done (see Tracker).
func (e Event) Derive(data, meta []byte) Event {
	return Event{Data: data, Meta: meta, origin: e.origin}
}

// Origin returns the tracked source event e derives from; the zero Origin
// when it derives from none.
func (e Event) Origin() Origin { return e.origin }

// null is the encoding of a nil Data.
var null = []byte("null")

// DataJSON returns the payload as JSON, "null" when Data is nil.
func (e Event) DataJSON() []byte {
	if len(e.Data) == 0 {
		return null
	}
	return e.Data
}

// MetaJSON returns the metadata as a JSON object, "{}" when Meta is nil.
func (e Event) MetaJSON() []byte {
	if len(e.Meta) == 0 {
		return []byte("{}")
	}
	return e.Meta
}

// ErrInvalidEvent reports an event line or value that is not valid JSON or
// does not have the event shape.
var ErrInvalidEvent = errors.New("invalid event")

// eventEnvelope is the JSON-lines form of an event.
type eventEnvelope struct {
	Data json.RawMessage `json:"data"`
	Meta json.RawMessage `json:"meta,omitempty"`
}

// AppendJSON appends the event as {"data":...,"meta":...} to dst.
func (e Event) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"data":`...)
	dst = append(dst, e.DataJSON()...)
	dst = append(dst, `,"meta":`...)
	dst = append(dst, e.MetaJSON()...)
	return append(dst, '}')
}

// MarshalJSON encodes the event as {"data":...,"meta":...}.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(nil), nil
}

// UnmarshalJSON decodes an event from {"data":...,"meta":{...}}. Meta, when
// present, must be an object.
func (e *Event) UnmarshalJSON(b []byte) error {
	var env eventEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return errors.Join(ErrInvalidEvent, err)
	}
	meta := bytes.TrimSpace(env.Meta)
	if len(meta) > 0 && !bytes.Equal(meta, null) && meta[0] != '{' {
		return errors.Join(ErrInvalidEvent, errors.New(`"meta" must be a JSON object`))
	}
	if bytes.Equal(meta, null) {
		meta = nil
	}
	e.Data = bytes.TrimSpace(env.Data)
	e.Meta = meta
	return nil
}
