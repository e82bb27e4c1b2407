package flows

import (
	"bytes"
	"context"
	"errors"
	"github.com/flowrun/flowrun/flows/builtin"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

const kvFlow = `name: counter
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state }
  results: { type: stdout }
  errors:  { type: file, path: out/errors.jsonl, mode: truncate }
pipelines:
  main:
    - filter: 'exists(meta.kv)'
    - set:
        meta.kv: '{"increment": "warnings_" + data.steam_id}'
links:
  - input/out -> main/in
  - input/err -> errors/in
  - main/out -> store/in
  - main/err -> errors/in
  - store/out -> results/in
  - store/err -> errors/in
`

func writeFlow(t *testing.T, dir, src string) *Flow {
	t.Helper()
	path := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	flow, diags, err := Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, d := range diags {
		t.Logf("%s", d)
	}
	return flow
}

func TestBuildRunsFlowAndKeepsState(t *testing.T) {
	dir := t.TempDir()
	flow := writeFlow(t, dir, kvFlow)
	input := `{"data":{"steam_id":"1"},"meta":{"kv":{}}}
{"data":{"steam_id":"1"},"meta":{"kv":{}}}
{"data":{"steam_id":"2"}}
not json
{"data":{"steam_id":"1"},"meta":{"kv":{}}}
`
	run := func() string {
		var out bytes.Buffer
		built, err := flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader(input), Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if err := built.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	first := run()
	lines := strings.Split(strings.TrimSpace(first), "\n")
	if len(lines) != 3 {
		t.Fatalf("stdout has %d lines, want 3 (one per kv event):\n%s", len(lines), first)
	}
	if !strings.HasPrefix(lines[2], `{"data":3,`) {
		t.Errorf("third increment of warnings_1 gave %s, want data 3", lines[2])
	}
	errs, err := os.ReadFile(filepath.Join(dir, "out", "errors.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(errs), `input: line 4: invalid JSON`) {
		t.Errorf("errors file does not report line 4: %s", errs)
	}
	// The store is relative to the flow file and survives the process's
	// graph: a second run continues counting.
	if _, err := os.Stat(filepath.Join(dir, "state")); err != nil {
		t.Fatalf("store directory not created next to the flow file: %v", err)
	}
	second := strings.Split(strings.TrimSpace(run()), "\n")
	if !strings.HasPrefix(second[2], `{"data":6,`) {
		t.Errorf("second run's last increment gave %s, want data 6", second[2])
	}
}

// capture records what reaches each sink.
type capture struct {
	mu     sync.Mutex
	events map[string][]string
}

func (c *capture) sink(name string) pipeline.Processor {
	return pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, ev := range events {
			c.events[name] = append(c.events[name], string(ev.AppendJSON(nil)))
		}
		return nil
	})
}

func TestBuildReplaceSourceAndCapture(t *testing.T) {
	dir := t.TempDir()
	src := `name: replay
connectors:
  live:   { type: file, path: missing.jsonl, mode: read }
  input:  { type: stdin }
  store:  { type: kv, dir: state, sync: false }
  out:    { type: file, path: never/out.jsonl, mode: truncate }
  errs:   { type: null }
links:
  - live/out -> store/in
  - live/err -> errs/in
  - input/out -> store/in
  - input/err -> errs/in
  - store/out -> out/in
  - store/err -> errs/in
`
	flow := writeFlow(t, dir, src)
	if got := strings.Join(flow.Sources(), ","); got != "live,input" {
		t.Fatalf("sources %s", got)
	}
	c := &capture{events: map[string][]string{}}
	feed := jsonl.NewReader(strings.NewReader(`{"data":7,"meta":{"kv":{"put":"k"}}}`+"\n"+`{"meta":{"kv":{"get":"k"}}}`+"\n"+`{"meta":{"kv":{"bogus":"k"}}}`), jsonl.ReaderOptions{})
	built, err := flow.Build(context.Background(), BuildOptions{
		Stdin:         strings.NewReader(`{"data":1,"meta":{"kv":{"put":"stdin"}}}`),
		ReplaceSource: "input",
		Source:        feed,
		Capture:       c.sink,
	})
	if err != nil {
		t.Fatalf("Build (the missing file of a source that is not run must not be opened): %v", err)
	}
	if got := strings.Join(built.Sinks, ","); got != "out,errs" {
		t.Errorf("Built.Sinks = %s", got)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(c.events["out"]); n != 2 {
		t.Errorf("captured %d events at out, want 2: %v", n, c.events["out"])
	} else if !strings.HasPrefix(c.events["out"][1], `{"data":7,`) {
		t.Errorf("get after put: %s", c.events["out"][1])
	}
	if n := len(c.events["errs"]); n != 1 {
		t.Errorf("captured %d events at errs, want 1: %v", n, c.events["errs"])
	}
	if _, err := os.Stat(filepath.Join(dir, "never")); !os.IsNotExist(err) {
		t.Errorf("a captured sink was opened anyway (stat: %v)", err)
	}

	_, err = flow.Build(context.Background(), BuildOptions{ReplaceSource: "store", Source: feed})
	if !errors.Is(err, ErrUnknownSource) {
		t.Errorf("replacing a non-source: %v, want ErrUnknownSource", err)
	}
}

func TestBuildReportsLockedStore(t *testing.T) {
	dir := t.TempDir()
	flow := writeFlow(t, dir, kvFlow)
	held, err := pebblestore.Open(filepath.Join(dir, "state"), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, err = flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader(""), Stdout: &bytes.Buffer{}})
	if !errors.Is(err, pebblestore.ErrLocked) {
		t.Fatalf("Build on a locked store: %v, want ErrLocked", err)
	}
	for _, want := range []string{"flow counter", "connector store", filepath.Join(dir, "state")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// The error file opened before the failure was closed again, and a
	// later Build works once the store is free.
	held.Close()
	built, err := flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader(""), Stdout: &bytes.Buffer{}})
	if err != nil {
		t.Fatalf("Build after the store was released: %v", err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestBuildSharesStoreBetweenNamespaces(t *testing.T) {
	dir := t.TempDir()
	src := `name: two
connectors:
  input: { type: stdin }
  a: { type: kv, dir: state, namespace: a }
  b: { type: kv, path: ./state, namespace: b }
  out: { type: stdout }
links:
  - input -> a
  - input -> b
  - input/err -> out
  - a -> out
  - a/err -> out
  - b -> out
  - b/err -> out
`
	flow := writeFlow(t, dir, src)
	var out bytes.Buffer
	resources := component.NewResources()
	pebblestore.UsePool(resources, pebblestore.NewPool())
	built, err := flow.Build(context.Background(), BuildOptions{
		Stdin:  strings.NewReader(`{"data":1,"meta":{"kv":{"put":"k"}}}`),
		Stdout: &out, Resources: resources,
	})
	if err != nil {
		t.Fatalf("two kv connectors on one directory: %v", err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Errorf("got %d result lines, want 2:\n%s", n, out.String())
	}
}
