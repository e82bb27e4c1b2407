package flowrun_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/operators/lua"
	"github.com/flowrun/flowrun/pipeline"
)

// within is the bound of "does not hang" waits; never reached when all is
// well.
const within = 30 * time.Second

// steppedSource emits the events it is sent, one slice at a time, and
// reports on done when each slice is done (every event of it stored,
// dropped or failed); it ends when steps is closed.
type steppedSource struct {
	steps chan []pipeline.Event
	done  chan []pipeline.Outcome
}

func (s *steppedSource) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	for {
		var batch []pipeline.Event
		select {
		case <-ctx.Done():
			return nil
		case b, ok := <-s.steps:
			if !ok {
				return nil
			}
			batch = b
		}
		outcomes := make([]pipeline.Outcome, len(batch))
		finished := make(chan struct{})
		tr := pipeline.NewTracker(len(batch), func(i int, o pipeline.Outcome) { outcomes[i] = o }, func() { close(finished) })
		for i, ev := range batch {
			emit.Emit("out", tr.Track(i, ev))
		}
		if err := emit.Flush(ctx); err != nil {
			return err
		}
		select {
		case <-finished:
		case <-ctx.Done():
			return nil
		}
		s.done <- outcomes
	}
}

// TestFlowSharesStore: with RunOptions.Store, a running flow's kv
// connector on the Store's directory uses the Store's Pebble instance: the
// program reads what the flow wrote as soon as the flow is done with the
// event, and the flow reads what the program wrote, while it runs. Without
// it, the flow cannot open the directory the Store holds.
func TestFlowSharesStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ns := st.Namespace("shared")

	src := &steppedSource{steps: make(chan []pipeline.Event), done: make(chan []pipeline.Outcome)}
	var mu sync.Mutex
	var results []string
	b := flowrun.NewFlowBuilder("shared", nil)
	b.AddSource("in", src)
	// The directory reached by another spelling shares the store too.
	b.AddConnector("store", "kv", map[string]any{"dir": filepath.Join(dir, "..", filepath.Base(dir))})
	b.AddSink("results", pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range events {
			results = append(results, string(ev.Data))
		}
		return nil
	}))
	b.Link("in", "store")
	b.Link("store/out", "results")
	b.Link("store/err", "results")
	flow, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("without Store", func(t *testing.T) {
		err := flow.Run(ctx, flowrun.RunOptions{})
		if err == nil || !strings.Contains(err.Error(), "connector store") {
			t.Fatalf("a flow opening the directory a Store holds: err = %v, want the connector's open error", err)
		}
	})

	runErr := make(chan error, 1)
	go func() { runErr <- flow.Run(ctx, flowrun.RunOptions{Store: st}) }()
	step := func(events ...string) []pipeline.Outcome {
		t.Helper()
		batch := make([]pipeline.Event, len(events))
		for i, e := range events {
			if err := batch[i].UnmarshalJSON([]byte(e)); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case src.steps <- batch:
		case err := <-runErr:
			t.Fatalf("flow ended early: %v", err)
		case <-time.After(within):
			t.Fatal("the flow does not take events")
		}
		select {
		case o := <-src.done:
			return o
		case err := <-runErr:
			t.Fatalf("flow ended early: %v", err)
		case <-time.After(within):
			t.Fatal("events never done")
		}
		return nil
	}

	// The flow writes; the program reads it while the flow runs.
	if o := step(`{"data":7,"meta":{"kv":{"put":"k"}}}`); !o[0].Sunk() || o[0].Errored() {
		t.Fatalf("put outcome: %+v", o[0])
	}
	if v, found, err := ns.Get(ctx, "k"); err != nil || !found || string(v) != "7" {
		t.Fatalf("program's Get of the flow's write: %s %v %v, want 7", v, found, err)
	}
	// The program writes; the flow reads it.
	if err := ns.Put(ctx, "p", []byte(`"from go"`), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	step(`{"meta":{"kv":{"get":"p"}}}`)
	close(src.steps)
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(within):
		t.Fatal("flow does not end")
	}
	if want := []string{"7", `"from go"`}; !slices.Equal(results, want) {
		t.Errorf("results %q, want %q", results, want)
	}
	// The flow closed its handle; the Store is still open and works.
	if n, err := ns.Increment(ctx, "k", 1); err != nil || n != 8 {
		t.Errorf("after the flow: Increment = %d, %v, want 8", n, err)
	}

	t.Run("sync mismatch", func(t *testing.T) {
		b := flowrun.NewFlowBuilder("nosync", nil)
		b.AddSource("in", pipeline.SourceFunc(func(context.Context, pipeline.SourceEmitter) error { return nil }))
		b.AddConnector("store", "kv", map[string]any{"dir": dir, "sync": false})
		b.Link("in", "store")
		flow, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		err = flow.Run(ctx, flowrun.RunOptions{Store: st})
		if err == nil || !strings.Contains(err.Error(), "already open with sync=true, asked for sync=false") {
			t.Errorf("a flow asking for sync=false on a synced Store: %v", err)
		}
	})

	t.Run("closed Store", func(t *testing.T) {
		st2, err := flowrun.OpenStore(ctx, t.TempDir(), flowrun.StoreOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st2.Close()
		err = flow.Run(ctx, flowrun.RunOptions{Store: st2})
		if !errors.Is(err, flowrun.ErrClosed) {
			t.Errorf("Run with a closed Store: %v, want ErrClosed", err)
		}
	})
}

// TestBuilderErrors: every mistake made building a flow from code is a
// clear error naming what is wrong (node, option, link), wrapping
// ErrInvalidFlow, never a panic.
func TestBuilderErrors(t *testing.T) {
	dir := t.TempDir()
	nop := pipeline.SourceFunc(func(context.Context, pipeline.SourceEmitter) error { return nil })
	sink := pipeline.ProcessorFunc(func(context.Context, []pipeline.Event, pipeline.Emitter) error { return nil })
	tests := []struct {
		name  string
		build func(b *flowrun.FlowBuilder)
		is    error
		want  []string
	}{
		{"unknown type, close to one", func(b *flowrun.FlowBuilder) {
			b.AddConnector("store", "kvv", nil)
		}, flowrun.ErrUnknownType, []string{`connector store: unknown component type "kvv" (did you mean "kv"?) (valid: stdin, stdout, file, null, kv)`}},
		{"unknown type", func(b *flowrun.FlowBuilder) {
			b.AddConnector("q", "kafka", nil)
		}, flowrun.ErrUnknownType, []string{`unknown component type "kafka" (valid: stdin, stdout, file, null, kv)`}},
		{"operator as connector", func(b *flowrun.FlowBuilder) {
			b.AddConnector("f", "filter", nil)
		}, flowrun.ErrUnknownType, []string{`unknown component type "filter"`}},
		{"bad option value", func(b *flowrun.FlowBuilder) {
			b.AddConnector("store", "kv", map[string]any{"dir": dir, "max_scan": "lots"})
		}, nil, []string{`connector store: option max_scan: expected an integer, got "lots"`}},
		{"option out of range", func(b *flowrun.FlowBuilder) {
			b.AddConnector("store", "kv", map[string]any{"dir": dir, "max_scan": 0})
		}, nil, []string{`connector store: option max_scan: max_scan is 0, out of range: must be at least 1`}},
		{"unknown option", func(b *flowrun.FlowBuilder) {
			b.AddConnector("store", "kv", map[string]any{"dri": dir})
		}, nil, []string{`connector store: unknown option "dri" (did you mean "dir"?)`, `missing option "dir"`}},
		{"bad duration", func(b *flowrun.FlowBuilder) {
			b.AddConnector("store", "kv", map[string]any{"dir": dir, "reclaim_interval": time.Millisecond})
		}, nil, []string{`connector store: option reclaim_interval: reclaim_interval is 1ms, out of range: must be at least 1s`}},
		{"bad expression", func(b *flowrun.FlowBuilder) {
			b.AddPipeline("main", map[string]any{"filter": "data.x =="})
		}, nil, []string{`pipeline main, step 0 (filter): option if: invalid expression "data.x =="`}},
		{"unknown operator", func(b *flowrun.FlowBuilder) {
			b.AddPipeline("p", map[string]any{"filtr": "true"})
		}, nil, []string{`pipeline p, step 0: unknown operator "filtr" (did you mean "filter"?)`}},
		{"duplicate node", func(b *flowrun.FlowBuilder) {
			b.AddSource("in", nop)
			b.AddConnector("in", "null", nil)
		}, flowrun.ErrDuplicateNode, []string{`duplicate node "in"`}},
		{"duplicate pipeline", func(b *flowrun.FlowBuilder) {
			b.AddSink("out", sink)
			b.AddPipeline("out")
		}, flowrun.ErrDuplicateNode, []string{`duplicate node "out"`}},
		{"invalid name", func(b *flowrun.FlowBuilder) {
			b.AddSource("a/b", nop)
		}, nil, []string{`invalid node name "a/b"`}},
		{"nil source", func(b *flowrun.FlowBuilder) {
			b.AddSource("in", nil)
		}, nil, []string{`source in: nil value`}},
		{"unknown port", func(b *flowrun.FlowBuilder) {
			b.AddSource("in", nop)
			b.AddSink("out", sink)
			b.Link("in/nope", "out")
		}, nil, []string{`link "in/nope -> out": connector "in" has no output port "nope" (ports: out)`}},
		{"unknown node", func(b *flowrun.FlowBuilder) {
			b.AddSource("in", nop)
			b.Link("in", "stroe")
		}, nil, []string{`link "in -> stroe": link to unknown node "stroe"`}},
		{"link into a source", func(b *flowrun.FlowBuilder) {
			b.AddSource("in", nop)
			b.AddSource("in2", nop)
			b.Link("in", "in2")
		}, nil, []string{`link "in -> in2": link into a source`}},
		{"link from a sink", func(b *flowrun.FlowBuilder) {
			b.AddSink("out", sink)
			b.AddSink("out2", sink)
			b.Link("out", "out2")
		}, nil, []string{`connector "out" is a sink and has no output ports`}},
		{"malformed link", func(b *flowrun.FlowBuilder) {
			b.Link("a -> b", "c")
		}, nil, []string{`malformed link "a -> b -> c"`}},
		{"two mistakes", func(b *flowrun.FlowBuilder) {
			b.AddConnector("x", "nope", nil)
			b.AddConnector("x", "null", nil)
		}, flowrun.ErrDuplicateNode, []string{`unknown component type "nope"`, `duplicate node "x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := flowrun.NewFlowBuilder("f", nil)
			tt.build(b)
			flow, err := b.Build()
			if err == nil {
				t.Fatalf("Build succeeded (%v)", flow)
			}
			if !errors.Is(err, flowrun.ErrInvalidFlow) {
				t.Errorf("error does not wrap ErrInvalidFlow: %v", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error does not wrap %v: %v", tt.is, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %v\ndoes not say\n  %s", err, w)
				}
			}
			if strings.Contains(err.Error(), "go:") {
				t.Errorf("error names the builder's internal types: %v", err)
			}
		})
	}
}

// TestBuilderValues: option values from code of every type reach the
// component as they would from YAML (durations as durations, lists as
// lists, sizes as sizes).
func TestBuilderValues(t *testing.T) {
	b := flowrun.NewFlowBuilder("values", nil)
	b.AddSource("in", pipeline.SourceFunc(func(context.Context, pipeline.SourceEmitter) error { return nil }))
	b.AddConnector("store", "kv", map[string]any{
		"dir": t.TempDir(), "sync": false, "max_value_bytes": "1MiB", "max_delay": 2 * time.Millisecond,
		"reclaim_interval": time.Minute, "namespace": "n",
	})
	b.Link("in", "store")
	flow, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if w := flow.Warnings(); len(w) != 2 || !strings.Contains(w[0], `connector store: warning: port "out" is not linked`) ||
		!strings.Contains(w[1], `connector store: warning: port "err" is not linked`) {
		t.Errorf("warnings %q, want one about each unlinked port, out and err", w)
	}
	if err := flow.Run(context.Background(), flowrun.RunOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestParseFlowErrors: a flow file's errors name the file, line, column
// and option; an unknown type lists the registered ones, a program's own
// included.
func TestParseFlowErrors(t *testing.T) {
	reg := flowrun.NewRegistry()
	if err := reg.Register(scaleSpec()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, src string
		want      []string
	}{
		{"unknown type", "name: f\nconnectors:\n  in: { type: kafka }\n",
			[]string{`flow.yaml:3:15: error: connectors.in.type: unknown connector type "kafka" (registered: stdin, stdout, file, null, kv, scale)`}},
		{"unknown operator", "name: f\npipelines:\n  p:\n    - lua: {}\n",
			[]string{`flow.yaml:4:7: error: pipelines.p[0]: unknown operator "lua" (registered: filter, set, route, drop)`}},
		{"own component's option", "name: f\nconnectors:\n  s: { type: scale, by: 0 }\n",
			[]string{`flow.yaml:3:25: error: connectors.s.by: by is 0, out of range: must be at least 1`}},
		{"own component's required option", "name: f\nconnectors:\n  s: { type: scale }\n",
			[]string{`flow.yaml:3:3: error: connectors.s: missing required option "by"`}},
		{"not YAML", "name: [", []string{`flow.yaml:1:1: error: invalid YAML`}},
		{"empty", "", []string{`empty flow file`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := flowrun.ParseFlow([]byte(tt.src), reg)
			if !errors.Is(err, flowrun.ErrInvalidFlow) {
				t.Fatalf("err = %v, want ErrInvalidFlow", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n  %v\ndoes not say\n  %s", err, w)
				}
			}
		})
	}
	path := filepath.Join(t.TempDir(), "f.yaml")
	if err := os.WriteFile(path, []byte("name: f\nconnectors:\n  s: { type: scale, by: x }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := flowrun.LoadFlow(path, reg); err == nil || !strings.Contains(err.Error(), path+`:3:25: error: connectors.s.by: expected an integer, got "x"`) {
		t.Errorf("LoadFlow error %v, want its file:line:col and option", err)
	}
	if _, err := flowrun.LoadFlow(filepath.Join(t.TempDir(), "missing.yaml"), nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadFlow of a missing file: %v", err)
	}
}

// TestNewRegistry: the default registry holds the light built-ins only;
// each heavy one is one line away, and registries are independent values.
func TestNewRegistry(t *testing.T) {
	got := flowrun.NewRegistry().Types("")
	want := []string{"stdin", "stdout", "file", "null", "kv", "filter", "set", "route", "drop"}
	if !slices.Equal(got, want) {
		t.Errorf("types %q, want %q", got, want)
	}

	etcdFlow := "name: f\nconnectors:\n  s: { type: kv, backend: etcd, endpoints: 127.0.0.1:1 }\n"
	if _, err := flowrun.ParseFlow([]byte(etcdFlow), nil); err == nil || !strings.Contains(err.Error(), `invalid value "etcd" (want one of pebble)`) {
		t.Errorf("backend etcd without registering it: %v", err)
	}
	if _, err := flowrun.ParseFlow([]byte(etcdFlow), flowrun.NewRegistry(etcdstore.Backend())); err != nil {
		t.Errorf("backend etcd after registering it: %v", err)
	}

	luaFlow := "name: f\nconnectors:\n  l: { type: lua, script: 'emit(\"out\", event)' }\n"
	reg := flowrun.NewRegistry()
	if _, err := flowrun.ParseFlow([]byte(luaFlow), reg); err == nil {
		t.Error("type lua accepted without registering it")
	}
	if err := reg.Register(lua.Spec()); err != nil {
		t.Fatal(err)
	}
	if _, err := flowrun.ParseFlow([]byte(luaFlow), reg); err != nil {
		t.Errorf("lua after registering it: %v", err)
	}
	if _, err := flowrun.ParseFlow([]byte(luaFlow), flowrun.NewRegistry()); err == nil {
		t.Error("registering lua on one registry changed another")
	}
}

// TestFlowRunTwice: a loaded flow runs again from scratch, and its stdout
// lines are each written whole.
func TestFlowRunTwice(t *testing.T) {
	dir := t.TempDir()
	flow, err := flowrun.ParseFlow([]byte(`
name: twice
connectors:
  in:    { type: stdin, codec: json }
  store: { type: kv, dir: `+strconv.Quote(dir)+` }
  out:   { type: stdout, codec: json }
pipelines:
  p:
    - set: { meta.kv: '{"increment": "n"}' }
links:
  - in -> p
  - p -> store
  - store -> out
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for run, want := range []string{"1\n2\n", "3\n4\n"} {
		var out bytes.Buffer
		if err := flow.Run(context.Background(), flowrun.RunOptions{Stdin: strings.NewReader("{}\n{}\n"), Stdout: &out}); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Errorf("run %d: output %q, want %q", run, out.String(), want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = flow.Run(ctx, flowrun.RunOptions{Stdin: strings.NewReader(fmt.Sprintln("{}"))})
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("run with a cancelled context: %v", err)
	}
}

// TestFlowOutlivesStore: a Store closed while a flow sharing its
// directory runs leaves the flow working; the directory is released once
// the flow ends too, with every acknowledged write of both in it.
func TestFlowOutlivesStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Namespace("outlive").Put(ctx, "before", []byte("1"), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	src := &steppedSource{steps: make(chan []pipeline.Event), done: make(chan []pipeline.Outcome)}
	b := flowrun.NewFlowBuilder("outlive", nil)
	b.AddSource("in", src)
	b.AddConnector("store", "kv", map[string]any{"dir": dir})
	b.AddConnector("sink", "null", nil)
	b.Link("in", "store")
	b.Link("store/out", "sink")
	b.Link("store/err", "sink")
	flow, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- flow.Run(ctx, flowrun.RunOptions{Store: st}) }()
	put := func(key string) pipeline.Outcome {
		t.Helper()
		var ev pipeline.Event
		if err := ev.UnmarshalJSON([]byte(`{"data":2,"meta":{"kv":{"put":"` + key + `"}}}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case src.steps <- []pipeline.Event{ev}:
		case <-time.After(within):
			t.Fatal("the flow does not take events")
		}
		select {
		case o := <-src.done:
			return o[0]
		case <-time.After(within):
			t.Fatal("event never done")
		}
		return pipeline.Outcome{}
	}
	put("first") // the flow has opened the store
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if o := put("after-close"); o.Errored() || !o.Sunk() {
		t.Fatalf("a put after the Store closed: errored %v, sunk %v", o.Errored(), o.Sunk())
	}
	if _, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{}); err == nil {
		t.Fatal("the directory was released while the flow still held it")
	}
	close(src.steps)
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(within):
		t.Fatal("flow does not end")
	}
	st2, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		t.Fatalf("reopening after both closed: %v", err)
	}
	defer st2.Close()
	n, err := st2.Namespace("outlive").Count(ctx, "")
	if err != nil || n != 3 {
		t.Errorf("keys after both closed: %d, %v, want 3 (before, first, after-close)", n, err)
	}
}

// TestBuilderGoProcessor: a processor of the program's own, with ports of
// its own, runs between connectors declared by type.
func TestBuilderGoProcessor(t *testing.T) {
	var out bytes.Buffer
	b := flowrun.NewFlowBuilder("double", nil)
	b.AddConnector("in", "stdin", map[string]any{"codec": "json"})
	b.AddProcessor("double", pipeline.ProcessorFunc(func(_ context.Context, batch []pipeline.Event, emit pipeline.Emitter) error {
		for _, ev := range batch {
			n, err := strconv.Atoi(string(ev.Data))
			if err != nil {
				emit.Emit("odd", ev)
				continue
			}
			emit.Emit("out", ev.Derive([]byte(strconv.Itoa(2*n)), nil))
		}
		return nil
	}), "out", "odd")
	b.AddConnector("stdout", "stdout", map[string]any{"codec": "json"})
	b.Link("in", "double")
	b.Link("double/out", "stdout")
	b.Link("double/odd", "stdout")
	flow, err := b.Build()
	if err != nil {
		t.Fatal(err)
	}
	if err := flow.Run(context.Background(), flowrun.RunOptions{Stdin: strings.NewReader("1\n\"x\"\n21\n"), Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	// Each port's events go downstream in order; the two ports' are not
	// ordered with respect to each other.
	got := strings.Fields(out.String())
	slices.Sort(got)
	if want := []string{`"x"`, "2", "42"}; !slices.Equal(got, want) {
		t.Errorf("output %q, want the lines %q", out.String(), want)
	}
}
