package operators

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/flowrun/flowrun/pipeline"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// Pipeline runs operators in sequence on each event. It is a
// pipeline.Processor: events arrive on "in" and leave on "out" (after the
// last operator), on "err" (an operator failed), or on the ports of route
// operators.
type Pipeline struct {
	ops   []Operator
	names []string
	ports []string
}

var _ pipeline.Processor = (*Pipeline)(nil)

// NewPipeline returns a pipeline running ops in order. With no operators
// every event passes to "out" unchanged.
func NewPipeline(ops []Operator) *Pipeline {
	p := &Pipeline{ops: append([]Operator(nil), ops...)}
	p.ports = []string{pipeline.PortOut, pipeline.PortErr}
	seen := map[string]bool{pipeline.PortOut: true, pipeline.PortErr: true}
	for i, op := range p.ops {
		p.names = append(p.names, opName(i, op))
		for _, port := range op.Ports() {
			if !seen[port] {
				seen[port] = true
				p.ports = append(p.ports, port)
			}
		}
	}
	return p
}

// opName names an operator in meta.error: "operator 2 (set)", counting from
// 1 as a flow file lists them.
func opName(i int, op Operator) string {
	kind := fmt.Sprintf("%T", op)
	if s, ok := op.(fmt.Stringer); ok {
		kind = s.String()
	}
	return "operator " + strconv.Itoa(i+1) + " (" + kind + ")"
}

// Ports returns every output port of the pipeline: "out", "err", then the
// extra ports of its operators in order of first appearance.
func (p *Pipeline) Ports() []string { return append([]string(nil), p.ports...) }

// Process runs every event of the slice through the operators, in order; the
// events each one produces are emitted before those of the next, so the
// order of the slice is kept on every port. An operator error never fails
// the graph: the event as it entered the pipeline is emitted on "err" with
// meta.error naming the operator and the problem. Process never returns an
// error and does not block, so ctx is not consulted.
func (p *Pipeline) Process(_ context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	r := &run{p: p, out: emit, emits: make([]func(string, pipeline.Event), len(p.ops))}
	for i := range p.ops {
		r.emits[i] = func(port string, ev pipeline.Event) { r.emit(i, port, ev) }
	}
	for _, ev := range events {
		r.orig = ev
		r.step(0, ev)
	}
	return nil
}

// run is the state of one Process call, so that a Pipeline holds no
// per-slice state and may be shared.
type run struct {
	p     *Pipeline
	out   pipeline.Emitter
	emits []func(string, pipeline.Event) // per operator, bound once per slice
	orig  pipeline.Event                 // the event that entered the pipeline
}

// step applies operator i to ev, or emits ev on "out" past the last one.
func (r *run) step(i int, ev pipeline.Event) {
	if i == len(r.p.ops) {
		r.out.Emit(pipeline.PortOut, ev)
		return
	}
	if err := r.p.ops[i].Apply(ev, r.emits[i]); err != nil {
		r.out.Emit(pipeline.PortErr, r.orig.Derive(r.orig.Data, errorMeta(r.orig.MetaJSON(), r.p.names[i]+": "+err.Error())))
	}
}

// emit handles what operator i emits: "out" feeds the next operator, any
// other port leaves the pipeline.
func (r *run) emit(i int, port string, ev pipeline.Event) {
	if port == pipeline.PortOut {
		r.step(i+1, ev)
		return
	}
	r.out.Emit(port, ev)
}

// errorMeta returns a copy of meta with "error" set to msg, or a fresh
// object when meta cannot be updated.
func errorMeta(meta []byte, msg string) []byte {
	// Encode without HTML escaping so that messages with <, > and & stay
	// readable in the output.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(msg) // a string always encodes
	raw := bytes.TrimSuffix(b.Bytes(), []byte("\n"))
	out, err := sjson.SetRawBytes(meta, "error", raw)
	if err != nil || !gjson.ValidBytes(out) {
		out, _ = sjson.SetRawBytes([]byte("{}"), "error", raw)
	}
	return out
}
