// Package kvtest is the conformance table of the kv command set. Run drives
// every command's normal, edge and error cases through a kv.Connector over
// a Backend under test, asserting the exact events on "out" and "err", so
// every backend is held to the same user-visible contract. RunPersistent
// adds the restart checks for backends that store data in a directory.
package kvtest

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/pipeline"
)

// Clock is a manual clock for expiry tests. Its zero value reads as the
// Unix epoch plus Start.
type Clock struct {
	ms atomic.Int64
}

// Start is the instant, in Unix milliseconds, a new Clock reads.
const Start = int64(1_700_000_000_000)

// NewClock returns a clock reading Start.
func NewClock() *Clock {
	c := &Clock{}
	c.ms.Store(Start)
	return c
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time { return time.UnixMilli(c.ms.Load()) }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

// Emitted is one event a connector emitted, with its port.
type Emitted struct {
	Port  string
	Event pipeline.Event
}

// String renders the event as `PORT {"data":...,"meta":...}`.
func (e Emitted) String() string {
	return e.Port + " " + string(e.Event.AppendJSON(nil))
}

// Recorder is a pipeline.Emitter keeping what it is given. It is safe for
// concurrent use.
type Recorder struct {
	mu     sync.Mutex
	Events []Emitted
}

// Emit implements pipeline.Emitter.
func (r *Recorder) Emit(port string, ev pipeline.Event) {
	r.mu.Lock()
	r.Events = append(r.Events, Emitted{Port: port, Event: ev})
	r.mu.Unlock()
}

// sharedBackend lets several connectors use one backend without any of
// them closing it; the harness closes it once.
type sharedBackend struct{ kv.Backend }

func (sharedBackend) Close() error { return nil }

// UpdateHinted passes read hints on to a wrapped kv.ReadHinter, so the
// conformance table runs the hinted path of backends that have one.
func (s sharedBackend) UpdateHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	if h, ok := s.Backend.(kv.ReadHinter); ok {
		return h.UpdateHinted(ctx, fns, hints, errs)
	}
	return s.Backend.Update(ctx, fns, errs)
}

// MaxTxnWrites passes on the wrapped backend's limit (kv.TxnLimiter), if
// any, so connectors size their reclaim transactions as they would on the
// backend itself.
func (s sharedBackend) MaxTxnWrites() int {
	if l, ok := s.Backend.(kv.TxnLimiter); ok {
		return l.MaxTxnWrites()
	}
	return 0
}

// sharedViewer is a sharedBackend that keeps its backend's read-only path,
// so the table runs read-only slices the way a flow does.
type sharedViewer struct {
	sharedBackend
	v kv.Viewer
}

func (s sharedViewer) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return s.v.View(ctx, fns, errs)
}

// ViewHinted passes read hints on to a wrapped kv.ViewHinter, so the
// table runs the hinted read-only path of backends that have one.
func (s sharedViewer) ViewHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	if h, ok := s.v.(kv.ViewHinter); ok {
		return h.ViewHinted(ctx, fns, hints, errs)
	}
	return s.v.View(ctx, fns, errs)
}

// sharedSubmitter is a sharedViewer that also keeps its backend's queued
// write path (kv.Submitter), so the table runs slices the way a staged
// flow node does.
type sharedSubmitter struct {
	sharedViewer
	s kv.Submitter
}

func (s sharedSubmitter) Submit(ctx context.Context, fns []kv.TxnFunc, errs []error) func() error {
	return s.s.Submit(ctx, fns, errs)
}

// SubmitHinted passes read hints on to a wrapped kv.HintedSubmitter, so
// the table runs the hinted queued write path of backends that have one.
func (s sharedSubmitter) SubmitHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) func() error {
	if h, ok := s.s.(kv.HintedSubmitter); ok {
		return h.SubmitHinted(ctx, fns, hints, errs)
	}
	return s.s.Submit(ctx, fns, errs)
}

// shareBackend wraps b for a connector of the harness, keeping the
// optional paths a connector looks for.
func shareBackend(b kv.Backend) kv.Backend {
	v, viewer := b.(kv.Viewer)
	sub, submitter := b.(kv.Submitter)
	switch {
	case viewer && submitter:
		return sharedSubmitter{sharedViewer{sharedBackend{b}, v}, sub}
	case viewer:
		return sharedViewer{sharedBackend{b}, v}
	}
	return sharedBackend{b}
}

// Conn is what the table drives: a *kv.Connector, or a processor that
// stands for one (a partitioned connector routing to its partitions'
// connectors).
type Conn interface {
	pipeline.Processor
	// Reclaim runs a reclaim pass, as kv.Connector.Reclaim.
	Reclaim(ctx context.Context) (int, error)
	Close(ctx context.Context) error
}

// NewConn makes the connector of a harness for opts (Namespace, Now and
// ReclaimInterval set by the harness); it is closed by the harness.
type NewConn func(t testing.TB, opts kv.Options) Conn

// Harness holds one backend under test, a clock and one connector per
// namespace, all sharing the backend (or made by NewConn).
type Harness struct {
	T       testing.TB
	Backend kv.Backend
	Clock   *Clock
	// Options is the template for new connectors (Namespace, Now and
	// ReclaimInterval are set by the harness).
	Options kv.Options
	// newConn, when set, makes the connectors instead of kv.New over
	// Backend (NewConnHarness).
	newConn NewConn
	conns   map[string]Conn
}

// NewConnHarness returns a harness whose connectors newConn makes, one
// per namespace; it has no Backend.
func NewConnHarness(t testing.TB, newConn NewConn) *Harness {
	h := &Harness{T: t, Clock: NewClock(), newConn: newConn, conns: map[string]Conn{}}
	t.Cleanup(func() {
		for _, c := range h.conns {
			_ = c.Close(context.Background())
		}
	})
	return h
}

// NewHarness wraps b; the backend is closed at the end of the test.
func NewHarness(t testing.TB, b kv.Backend) *Harness {
	h := &Harness{T: t, Backend: b, Clock: NewClock(), conns: map[string]Conn{}}
	t.Cleanup(func() {
		for _, c := range h.conns {
			_ = c.Close(context.Background())
		}
		if err := b.Close(); err != nil {
			t.Errorf("closing backend: %v", err)
		}
	})
	return h
}

// Conn returns the connector of namespace ns, creating it on first use.
func (h *Harness) Conn(ns string) Conn {
	if c, ok := h.conns[ns]; ok {
		return c
	}
	opts := h.Options
	opts.Namespace = ns
	opts.Now = h.Clock.Now
	opts.ReclaimInterval = -1
	if h.newConn != nil {
		c := h.newConn(h.T, opts)
		h.conns[ns] = c
		return c
	}
	c, err := kv.New(shareBackend(h.Backend), opts)
	if err != nil {
		h.T.Fatalf("kv.New: %v", err)
	}
	h.conns[ns] = c
	return c
}

// Event builds an event from meta and data JSON text ("" data: nil).
func Event(meta, data string) pipeline.Event {
	ev := pipeline.Event{Meta: []byte(meta)}
	if data != "" {
		ev.Data = []byte(data)
	}
	return ev
}

// Do processes one event in namespace ns and returns what was emitted.
func (h *Harness) Do(ns, meta, data string) []Emitted {
	return h.DoSlice(ns, Event(meta, data))
}

// DoSlice processes events as one slice (one Process call) in namespace ns.
func (h *Harness) DoSlice(ns string, evs ...pipeline.Event) []Emitted {
	h.T.Helper()
	var rec Recorder
	if err := h.Conn(ns).Process(context.Background(), evs, &rec); err != nil {
		h.T.Fatalf("Process: %v", err)
	}
	return rec.Events
}

// Strings renders emitted events with Emitted.String.
func Strings(evs []Emitted) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.String()
	}
	return out
}

// M builds meta {"kv":{FIELDS}}.
func M(fields string) string { return `{"kv":{` + fields + `}}` }

// MC builds meta {"kv":{FIELDS},"correlation":CORR}.
func MC(fields, corr string) string { return `{"kv":{` + fields + `},"correlation":` + corr + `}` }

// Out renders the expected out event with data and meta.kv fields.
func Out(data, kvFields string) string {
	return `out {"data":` + data + `,"meta":{"kv":{` + kvFields + `}}}`
}

// OutC is Out with a correlation.
func OutC(data, kvFields, corr string) string {
	return `out {"data":` + data + `,"meta":{"kv":{` + kvFields + `},"correlation":` + corr + `}}`
}

func join(lines []string) string {
	if len(lines) == 0 {
		return "(nothing)"
	}
	return strings.Join(lines, "\n")
}
