package logs

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

func TestNew(t *testing.T) {
	tests := []struct {
		level, format string
		err           error
		debugShown    bool
		infoShown     bool
	}{
		{"debug", "text", nil, true, true},
		{"INFO", "json", nil, false, true},
		{"warn", "text", nil, false, false},
		{"error", "json", nil, false, false},
		{"loud", "text", ErrLevel, false, false},
		{"info", "xml", ErrFormat, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.level+"/"+tt.format, func(t *testing.T) {
			var buf bytes.Buffer
			l, err := New(&buf, tt.level, tt.format)
			if !errors.Is(err, tt.err) {
				t.Fatalf("New: %v, want %v", err, tt.err)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "want one of") {
					t.Fatalf("error does not list the choices: %v", err)
				}
				return
			}
			l.Debug("dbg")
			l.Info("inf")
			out := buf.String()
			if strings.Contains(out, "dbg") != tt.debugShown || strings.Contains(out, "inf") != tt.infoShown {
				t.Fatalf("level %s logged %q", tt.level, out)
			}
			if tt.format == "json" && out != "" {
				var m map[string]any
				if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &m); err != nil {
					t.Fatalf("json format wrote %q: %v", out, err)
				}
			}
		})
	}
}

func TestUnlinkedErrorsRateLimits(t *testing.T) {
	var buf bytes.Buffer
	logger, err := New(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	u := NewUnlinkedErrors(logger, UnlinkedOptions{Burst: 3, Interval: time.Second, Now: func() time.Time { return now }})
	ev := func(i int) pipeline.Event {
		return pipeline.Event{Data: []byte(`1`), Meta: []byte(`{"error":"boom ` + string(rune('a'+i%26)) + `"}`)}
	}
	u.Hook("store", pipeline.PortOut, ev(0)) // not an err port: ignored
	for i := range 1100 {
		u.Hook("store", pipeline.PortErr, ev(i))
		now = now.Add(time.Millisecond) // 1100 events over 1.1 s
	}
	u.Hook("filter", pipeline.PortErr, ev(0))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// store: 3 single events (the third at 2 ms) + one "counted" notice +
	// one count line a second later (at 1002 ms); filter: 1 line.
	if len(lines) != 6 {
		t.Fatalf("%d lines, want 6:\n%s", len(lines), buf.String())
	}
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[4]), &last); err != nil {
		t.Fatal(err)
	}
	if last["level"] != "ERROR" || last["count"] != float64(1000) || last["node"] != "store" {
		t.Fatalf("count line: %v", last)
	}
	buf.Reset()
	u.Flush()
	if !strings.Contains(buf.String(), `"count":97`) || !strings.Contains(buf.String(), `"last_error":"boom h"`) {
		t.Fatalf("Flush wrote %q", buf.String())
	}
	buf.Reset()
	u.Flush()
	if buf.Len() != 0 {
		t.Fatalf("second Flush wrote %q", buf.String())
	}
	if d := u.Dropped(); d["store"] != 1100 || d["filter"] != 1 {
		t.Fatalf("Dropped = %v", d)
	}
}
