package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tidwall/gjson"
)

// TestHTTPModerationExample replays examples/http-moderation against a
// local webhook: the reports that bring alice and carol to 3 warnings call
// it once each, with the token and the idempotency key; the answers reach
// the actions sink, the report without a player the errors sink.
func TestHTTPModerationExample(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls = append(calls, r.URL.Path+" "+r.Header.Get("Authorization")+" "+r.Header.Get("Idempotency-Key")+" "+string(body))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"action":"mute"}`)
	}))
	defer hook.Close()
	t.Setenv("MODERATION_URL", hook.URL)
	t.Setenv("MODERATION_TOKEN", "t0k")
	dir := copyExample(t, "http-moderation")
	flow := filepath.Join(dir, "flow.yaml")
	if code, out, errOut := runCLI(t, "", "validate", flow); code != 0 {
		t.Fatalf("validate: exit %d: %s%s", code, out, errOut)
	}
	code, out, errOut := runCLI(t, "", "replay", "-q", flow, filepath.Join(dir, "events.jsonl"))
	if code != 0 {
		t.Fatalf("replay: exit %d: %s", code, errOut)
	}
	slices.Sort(calls)
	want := []string{
		`/players/alice/moderation Bearer t0k warnings-alice-3 {"player":"alice","warnings":3}`,
		`/players/carol/moderation Bearer t0k warnings-carol-3 {"player":"carol","warnings":3}`,
	}
	if !slices.Equal(calls, want) {
		t.Fatalf("webhook calls:\n%s\nwant:\n%s", strings.Join(calls, "\n"), strings.Join(want, "\n"))
	}
	var actions, errs int
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch gjson.Get(line, "sink").String() {
		case "actions":
			actions++
			if gjson.Get(line, "data.action").String() != "mute" {
				t.Errorf("action line: %s", line)
			}
		case "errors":
			errs++
		}
	}
	if actions != 2 || errs != 1 {
		t.Fatalf("%d actions and %d errors, want 2 and 1:\n%s", actions, errs, out)
	}
}
