package httpconn_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/httpconn"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/pipeline"
)

// collector is a sink keeping the events it receives.
type collector struct {
	mu  sync.Mutex
	got []pipeline.Event
}

func (c *collector) Process(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, events...)
	return nil
}

// mustOp returns op, failing t on err.
func mustOp(t *testing.T) func(op operators.Operator, err error) operators.Operator {
	return func(op operators.Operator, err error) operators.Operator {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return op
	}
}

// TestModerationFlow runs the flow of examples/http-moderation built by
// hand: each report increments the player's warnings in the kv store, and
// the report that brings a player to exactly 3 warnings calls the
// moderation webhook, whose answer goes to the actions sink. The webhook
// fails for carol, whose event ends on the errors sink after its retry.
func TestModerationFlow(t *testing.T) {
	var mu sync.Mutex
	calls := map[string][]string{} // player → bodies received
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		player := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/players/"), "/moderation")
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls[player] = append(calls[player], string(body))
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if player == "carol" {
			http.Error(w, "moderation queue full", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"player":"`+player+`","action":"mute","minutes":10}`)
	}))
	defer srv.Close()

	reports := []string{
		`{"player":"alice"}`, `{"player":"bob"}`, `{"player":"alice"}`, `{"player":"carol"}`,
		`{"player":"alice"}`, `{"player":"carol"}`, `{"player":"carol"}`, `{"player":"alice"}`,
		`{"reason":"no player"}`,
	}
	input := pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		tr := pipeline.NewTracker(len(reports)+1, nil, nil)
		for i, r := range reports {
			emit.Emit(pipeline.PortOut, tr.Track(i+1, pipeline.Event{Data: []byte(r)}))
		}
		return emit.Flush(ctx)
	})
	must := mustOp(t)
	count := operators.NewPipeline([]operators.Operator{
		must(operators.NewSet(operators.SetOptions{Fields: []operators.Assignment{
			{Target: "meta.kv", Expr: `{"increment": "warnings_" + data.player}`},
			{Target: "meta.correlation", Expr: `data.player`},
		}})),
	})
	store, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	escalate := operators.NewPipeline([]operators.Operator{
		must(operators.NewFilter(operators.FilterOptions{If: `data == 3`})),
		must(operators.NewSet(operators.SetOptions{Fields: []operators.Assignment{
			{Target: "data", Expr: `{"player": meta.correlation, "warnings": data}`},
		}})),
	})
	moderate, err := httpconn.NewClient(httpconn.ClientOptions{
		URL:            srv.URL + "/players/{data.player}/moderation",
		BearerToken:    "t0ken",
		Headers:        map[string]string{"Idempotency-Key": "warnings-{data.player}-{data.warnings}"},
		MaxRetries:     1,
		BackoffInitial: time.Millisecond,
		BackoffMax:     10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	actions, errs := &collector{}, &collector{}

	g := pipeline.New(pipeline.Options{})
	add := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	add(g.AddSource("input", input, pipeline.PortOut))
	add(g.AddProcessor("count", count, count.Ports()...))
	add(g.AddProcessor("store", store, kv.Ports()...))
	add(g.AddProcessor("escalate", escalate, escalate.Ports()...))
	add(g.AddProcessor("moderate", moderate, httpconn.ClientPorts()...))
	add(g.AddProcessor("actions", actions))
	add(g.AddProcessor("errors", errs))
	for _, l := range [][3]string{
		{"input", "out", "count"}, {"count", "out", "store"}, {"count", "err", "errors"},
		{"store", "out", "escalate"}, {"store", "err", "errors"},
		{"escalate", "out", "moderate"}, {"escalate", "err", "errors"},
		{"moderate", "out", "actions"}, {"moderate", "err", "errors"},
	} {
		add(g.Link(l[0], l[1], l[2]))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := g.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}

	// alice's third report, and only it, called the webhook once.
	if len(actions.got) != 1 {
		t.Fatalf("actions: %d events, want 1: %v", len(actions.got), actions.got)
	}
	a := actions.got[0]
	if string(a.Data) != `{"player":"alice","action":"mute","minutes":10}` || gjson.GetBytes(a.Meta, "correlation").String() != "alice" ||
		gjson.GetBytes(a.Meta, "http.status").Int() != 200 || a.Origin().Index() != 5 {
		t.Errorf("action %s %s seq %d, want alice muted, correlated, from report 5", a.Data, a.Meta, a.Origin().Index())
	}
	if want := []string{`{"player":"alice","warnings":3}`}; !slices.Equal(calls["alice"], want) {
		t.Errorf("webhook got %q for alice, want %q", calls["alice"], want)
	}
	// carol's call failed twice (a retry), then went to errors.
	if len(calls["carol"]) != 2 || len(calls) != 2 {
		t.Errorf("webhook calls %v, want alice once and carol twice", calls)
	}
	var sawCarol, sawNoPlayer bool
	for _, e := range errs.got {
		msg := gjson.GetBytes(e.Meta, "error").String()
		switch {
		case gjson.GetBytes(e.Meta, "correlation").String() == "carol":
			sawCarol = strings.Contains(msg, "503 Service Unavailable (2 attempts)") &&
				gjson.GetBytes(e.Meta, "http.body").String() == "moderation queue full\n" &&
				string(e.Data) == `{"player":"carol","warnings":3}` && e.Origin().Index() == 7
		case string(e.Data) == `{"reason":"no player"}`:
			sawNoPlayer = strings.Contains(msg, "missing")
		default:
			t.Errorf("unexpected error event %s %s", e.Data, e.Meta)
		}
	}
	if !sawCarol || !sawNoPlayer || len(errs.got) != 2 {
		t.Errorf("errors %v: want carol's failed call and the report without a player", errs.got)
	}
}
