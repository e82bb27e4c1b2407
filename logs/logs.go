// Package logs builds flowrun's structured loggers (log/slog, text or JSON,
// always to one writer, normally stderr) and keeps error floods readable:
// UnlinkedErrors logs events dropped on unlinked err ports individually at
// first, then as periodic counts, so a burst of failures never turns into a
// line per event.
package logs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/pipeline"
)

// Errors returned for bad logging settings.
var (
	// ErrLevel reports a level other than debug, info, warn or error.
	ErrLevel = errors.New("unknown log level")
	// ErrFormat reports a format other than text or json.
	ErrFormat = errors.New("unknown log format")
)

// Levels and Formats list the accepted names, for flag help.
var (
	Levels  = []string{"debug", "info", "warn", "error"}
	Formats = []string{"text", "json"}
)

// ParseLevel returns the slog level named by s (case-insensitive).
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%w %q (want one of %s)", ErrLevel, s, strings.Join(Levels, ", "))
}

// New returns a logger writing to w at the given level ("debug", "info",
// "warn", "error") in the given format ("text": key=value lines, "json":
// one JSON object per line). Durations are written as Go duration strings
// in both formats ("elapsed":"3ms"), not as integer nanoseconds.
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: durationString}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w %q (want one of %s)", ErrFormat, format, strings.Join(Formats, ", "))
}

// durationString writes a duration attribute as a string such as "3ms".
func durationString(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// Defaults for UnlinkedOptions.
const (
	DefaultBurst    = 10
	DefaultInterval = 10 * time.Second
)

// UnlinkedOptions configure UnlinkedErrors.
type UnlinkedOptions struct {
	// Burst is how many events per node are logged one line each before
	// lines are replaced by counts. Default DefaultBurst.
	Burst int
	// Interval is the least time between two count lines of one node.
	// Default DefaultInterval.
	Interval time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// EnsureDefaults fills unset fields with their defaults.
func (o *UnlinkedOptions) EnsureDefaults() {
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// UnlinkedErrors is a pipeline.Options.Unlinked hook for events emitted on
// err ports that lead nowhere: such an event is dropped, so it is logged at
// error level with its meta.error, data and metadata. Per node, the first
// Burst events get a line each; after that a line
//
//	"events on unlinked err port suppressed" node=N suppressed=COUNT last_error=...
//
// is written at most once per Interval, when an event arrives, and by
// Flush for what remains. Events on other unlinked ports are discarded
// silently, as by the pipeline default. It is safe for concurrent use.
type UnlinkedErrors struct {
	logger *slog.Logger
	opts   UnlinkedOptions

	mu    sync.Mutex
	nodes map[string]*nodeState
}

type nodeState struct {
	dropped    int       // every event seen
	logged     int       // events logged one line each
	suppressed int       // events since the last line
	lastLine   time.Time // time of the last count line
	lastErr    string
}

// NewUnlinkedErrors returns a hook logging to logger.
func NewUnlinkedErrors(logger *slog.Logger, opts UnlinkedOptions) *UnlinkedErrors {
	opts.EnsureDefaults()
	return &UnlinkedErrors{logger: logger, opts: opts, nodes: map[string]*nodeState{}}
}

// Hook is the function to set as pipeline.Options.Unlinked.
func (u *UnlinkedErrors) Hook(node, port string, ev pipeline.Event) {
	if port != pipeline.PortErr {
		return
	}
	msg := errorOf(ev)
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.nodes[node]
	if st == nil {
		st = &nodeState{}
		u.nodes[node] = st
	}
	st.dropped++
	if st.logged < u.opts.Burst {
		st.logged++
		u.logger.Error("event on unlinked err port dropped", "node", node, "error", msg,
			"data", string(ev.DataJSON()), "meta", string(ev.MetaJSON()))
		if st.logged == u.opts.Burst {
			u.logger.Error("further events on this unlinked err port are counted, not logged one by one",
				"node", node, "every", u.opts.Interval)
			st.lastLine = u.opts.Now()
		}
		return
	}
	st.suppressed++
	st.lastErr = msg
	if now := u.opts.Now(); now.Sub(st.lastLine) >= u.opts.Interval {
		u.summarise(node, st)
		st.lastLine = now
	}
}

// Flush logs the count of events not yet reported, per node. Call it when
// the graph has stopped.
func (u *UnlinkedErrors) Flush() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for node, st := range u.nodes {
		if st.suppressed > 0 {
			u.summarise(node, st)
		}
	}
}

// Dropped returns how many events each node dropped on an unlinked err
// port so far.
func (u *UnlinkedErrors) Dropped() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]int{}
	for node, st := range u.nodes {
		out[node] = st.dropped
	}
	return out
}

func (u *UnlinkedErrors) summarise(node string, st *nodeState) {
	u.logger.Error("events on unlinked err port dropped", "node", node, "count", st.suppressed, "last_error", st.lastErr)
	st.suppressed = 0
}

// errorOf returns the event's meta.error, or "" when it has none.
func errorOf(ev pipeline.Event) string {
	if len(ev.Meta) == 0 {
		return ""
	}
	return gjson.GetBytes(ev.Meta, "error").String()
}
