package flowrun_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// tempDir makes a fresh directory for an example's store.
func tempDir() string {
	dir, err := os.MkdirTemp("", "flowrun-example")
	if err != nil {
		log.Fatal(err)
	}
	return dir
}

// A flow file run over an in-memory input, its output in a buffer.
func ExampleParseFlow() {
	dir := tempDir()
	defer os.RemoveAll(dir)

	flow, err := flowrun.ParseFlow([]byte(`
name: counter
connectors:
  input:   { type: stdin, codec: json }
  store:   { type: kv, dir: `+strconv.Quote(dir)+` }
  results: { type: stdout, codec: json }
pipelines:
  count:
    - set:
        meta.kv: '{"increment": "hits_" + data.player}'
links:
  - input/out -> count/in
  - count/out -> store/in
  - store/out -> results/in
`), nil) // nil: flowrun.NewRegistry()
	if err != nil {
		log.Fatal(err)
	}
	in := strings.NewReader(`{"player": "ada"}` + "\n" + `{"player": "bob"}` + "\n" + `{"player": "ada"}` + "\n")
	var out bytes.Buffer
	if err := flow.Run(context.Background(), flowrun.RunOptions{Stdin: in, Stdout: &out}); err != nil {
		log.Fatal(err)
	}
	fmt.Print(out.String())
	// Output:
	// 1
	// 1
	// 2
}

// A flow built from code: the program's own source and sink around a
// pipeline and the kv connector, whose options are checked by the same
// spec as in a flow file.
func ExampleNewFlowBuilder() {
	dir := tempDir()
	defer os.RemoveAll(dir)

	var results []string
	b := flowrun.NewFlowBuilder("scores", nil)
	b.AddSource("in", pipeline.SourceFunc(func(ctx context.Context, emit pipeline.SourceEmitter) error {
		for _, p := range []string{`{"player":"ada","points":5}`, `{"player":"ada","points":7}`} {
			emit.Emit("out", pipeline.Event{Data: []byte(p)})
		}
		return nil // the graph flushes what is queued
	}))
	b.AddPipeline("main", map[string]any{"set": map[string]any{
		"meta.kv": `{"increment": "score_" + data.player, "by": data.points}`,
	}})
	b.AddConnector("store", "kv", map[string]any{"dir": dir, "max_scan": 100})
	b.AddSink("collect", pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
		for _, ev := range events { // one goroutine calls Process: no lock needed
			results = append(results, string(ev.Data))
		}
		return nil
	}))
	b.Link("in/out", "main")
	b.Link("main/out", "store")
	b.Link("store/out", "collect")
	flow, err := b.Build() // reports the errors of every call above
	if err != nil {
		log.Fatal(err)
	}
	if err := flow.Run(context.Background(), flowrun.RunOptions{}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(results)
	// Output: [5 12]
}

// scaleSpec declares a processor type of the program's own: it multiplies
// numeric payloads by its option "by", and sends the others to err.
func scaleSpec() component.Spec {
	return component.Spec{
		Type:    "scale",
		Kind:    component.KindProcessor,
		Summary: "Multiplies each numeric payload by `by`.",
		Fields: []component.Field{
			{Name: "by", Type: component.TypeInt, Required: true, Min: "1", Doc: "The factor."},
		},
		Ports: component.StaticPorts("out", "err"),
		Build: func(_ context.Context, _ *component.Env, c *component.Config) (component.Component, error) {
			by := c.Int("by")
			return component.Component{Processor: pipeline.ProcessorFunc(
				func(_ context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
					for _, ev := range events {
						n, err := strconv.Atoi(string(ev.Data))
						if err != nil {
							emit.Emit("err", ev.Derive(ev.Data, []byte(`{"error":"not a number"}`)))
							continue
						}
						emit.Emit("out", ev.Derive([]byte(strconv.Itoa(n*by)), ev.Meta))
					}
					return nil
				})}, nil
		},
	}
}

// A component of the program's own, registered on a registry and used
// from YAML by its type. Its options are checked as the built-ins' are:
// "by: 0" would be refused at load, naming the file, line and option.
func ExampleNewRegistry() {
	reg := flowrun.NewRegistry()
	if err := reg.Register(scaleSpec()); err != nil {
		log.Fatal(err)
	}
	flow, err := flowrun.ParseFlow([]byte(`
name: triple
connectors:
  input:  { type: stdin, codec: json }
  triple: { type: scale, by: 3 }
  output: { type: stdout, codec: json }
links:
  - input/out -> triple/in
  - triple/out -> output/in
  - triple/err -> output/in
`), reg)
	if err != nil {
		log.Fatal(err)
	}
	var out bytes.Buffer
	err = flow.Run(context.Background(), flowrun.RunOptions{Stdin: strings.NewReader("1\n14\n\"x\"\n"), Stdout: &out})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(out.String())
	// Output:
	// 3
	// 42
	// "x"
}

// queueSource emits the jobs of an in-memory queue and acknowledges each
// once the flow is done with it, as a broker client would: a
// pipeline.Tracker tells it, per event, what became of it.
type queueSource struct {
	jobs []string

	mu     sync.Mutex
	acked  map[int]string // job index -> what became of it
	stored pipeline.SinkID
}

func (q *queueSource) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	done := make(chan struct{})
	tr := pipeline.NewTracker(len(q.jobs), func(i int, o pipeline.Outcome) {
		// Called once per job, from a graph goroutine: quick, no Emit.
		what := "dropped"
		switch {
		case o.Errored():
			what = "failed"
		case o.Sunk():
			what = "stored"
		}
		q.mu.Lock()
		q.acked[i] = what
		q.mu.Unlock()
	}, func() { close(done) })
	for i, j := range q.jobs {
		emit.Emit("out", tr.Track(i, pipeline.Event{Data: []byte(j)}))
	}
	if err := emit.Flush(ctx); err != nil {
		return err
	}
	select { // every job is settled before the source ends
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// A source of the program's own that learns when each of its events is
// done, and how: stored by the sink, dropped by a filter, or failed.
func ExampleFlowBuilder_AddSource() {
	dir := tempDir()
	defer os.RemoveAll(dir)

	q := &queueSource{jobs: []string{`{"id":"a"}`, `{"id":"skip"}`, `{"id":"too-long"}`, `{"id":"b"}`}, acked: map[int]string{}}
	b := flowrun.NewFlowBuilder("jobs", nil)
	b.AddSource("queue", q)
	b.AddPipeline("main",
		map[string]any{"drop": map[string]any{"if": `data.id == "skip"`}},
		map[string]any{"set": map[string]any{"meta.kv": `{"put": "job_" + data.id}`}})
	b.AddConnector("store", "kv", map[string]any{"dir": dir, "max_key_length": 6})
	b.AddConnector("done", "null", nil)
	b.AddConnector("failed", "null", nil)
	b.Link("queue", "main")
	b.Link("main", "store")
	b.Link("store/out", "done")
	b.Link("store/err", "failed") // "job_too-long" is too long a key
	flow, err := b.Build()
	if err != nil {
		log.Fatal(err)
	}
	if err := flow.Run(context.Background(), flowrun.RunOptions{}); err != nil {
		log.Fatal(err)
	}
	for i, j := range q.jobs {
		fmt.Println(j, q.acked[i])
	}
	// Output:
	// {"id":"a"} stored
	// {"id":"skip"} dropped
	// {"id":"too-long"} failed
	// {"id":"b"} stored
}

// A flow and the program sharing one store directory: the flow's kv
// connector on the Store's directory uses the Store's open Pebble
// instance, so each sees the other's writes as they are made.
func ExampleFlow_Run() {
	ctx := context.Background()
	dir := tempDir()
	defer os.RemoveAll(dir)
	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	visits := st.Namespace("visits")
	if err := visits.Put(ctx, "home", []byte("100"), flowrun.PutOptions{}); err != nil {
		log.Fatal(err)
	}

	flow, err := flowrun.ParseFlow([]byte(`
name: visits
connectors:
  input: { type: stdin, codec: json }
  store: { type: kv, dir: `+strconv.Quote(dir)+` }
pipelines:
  count:
    - set: { meta.kv: '{"increment": data.page}' }
links:
  - input/out -> count/in
  - count/out -> store/in
`), nil)
	if err != nil {
		log.Fatal(err)
	}
	in := strings.NewReader(`{"page":"home"}` + "\n" + `{"page":"about"}` + "\n")
	if err := flow.Run(ctx, flowrun.RunOptions{Stdin: in, Store: st}); err != nil {
		log.Fatal(err)
	}
	for _, page := range []string{"home", "about"} {
		n, _, err := visits.Get(ctx, page)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(page, string(n))
	}
	// Output:
	// home 101
	// about 1
}
