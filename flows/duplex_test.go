package flows

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

// loopback is a duplex component: its source side emits 1, 2, 3 and its
// sink side records what comes back.
type loopback struct {
	mu   sync.Mutex
	back []string
}

func (l *loopback) spec() component.Spec {
	return component.Spec{
		Type:  "loopback",
		Kind:  component.KindDuplex,
		Ports: component.StaticPorts(pipeline.PortOut),
		Build: func(context.Context, *component.Env, *component.Config) (component.Component, error) {
			src := pipeline.SourceFunc(func(_ context.Context, emit pipeline.SourceEmitter) error {
				for _, d := range []string{"1", "2", "3"} {
					emit.Emit(pipeline.PortOut, pipeline.Event{Data: []byte(d)})
				}
				return nil
			})
			sink := pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
				l.mu.Lock()
				defer l.mu.Unlock()
				for _, ev := range events {
					l.back = append(l.back, string(ev.Data))
				}
				return nil
			})
			return component.Component{Source: src, Processor: sink}, nil
		},
	}
}

// TestDuplexConnector checks that a duplex connector is linked from its
// out port and into its in port without forming a cycle, runs as a source
// and a sink, and counts among the sources and the sinks.
func TestDuplexConnector(t *testing.T) {
	lb := &loopback{}
	reg := builtin.NewRegistry()
	reg.MustRegister(lb.spec())
	src := `name: duplex
connectors:
  api: { type: loopback }
pipelines:
  double:
    - set: { data: 'data * 2' }
links:
  - api/out -> double/in
  - double/out -> api/in
  - double/err -> api/in
`
	flow, diags, err := LoadBytes("flow.yaml", []byte(src), reg)
	if err != nil || len(diags) > 0 {
		t.Fatalf("load: %v %v", err, diags)
	}
	if got := strings.Join(flow.Sources(), ",") + " " + strings.Join(flow.Sinks(), ","); got != "api api" {
		t.Errorf("sources and sinks: %s, want api api", got)
	}
	built, err := flow.Build(context.Background(), BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	slices.Sort(lb.back)
	if got := strings.Join(lb.back, ","); got != "2,4,6" {
		t.Fatalf("came back: %s, want 2,4,6", got)
	}

	// Replayed: the duplex connector is not built; its source side is
	// replaced and its sink side captured.
	lb.back = nil
	var mu sync.Mutex
	var captured []string
	built, err = flow.Build(context.Background(), BuildOptions{
		ReplaceSource: "api",
		Source: pipeline.SourceFunc(func(_ context.Context, emit pipeline.SourceEmitter) error {
			emit.Emit(pipeline.PortOut, pipeline.Event{Data: []byte("5")})
			return nil
		}),
		Capture: func(sink string) pipeline.Processor {
			return pipeline.ProcessorFunc(func(_ context.Context, events []pipeline.Event, _ pipeline.Emitter) error {
				mu.Lock()
				defer mu.Unlock()
				for _, ev := range events {
					captured = append(captured, sink+":"+string(ev.Data))
				}
				return nil
			})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(captured, ","); got != "api:10" || len(lb.back) != 0 {
		t.Fatalf("replayed: captured %s, component saw %v; want api:10 and nothing", got, lb.back)
	}

	// Nothing coming back is warned about.
	oneWay := strings.Replace(strings.Replace(src, "  - double/out -> api/in\n", "  - double/out -> out/in\n", 1), "  - double/err -> api/in\n", "  - double/err -> out/in\n", 1)
	oneWay = strings.Replace(oneWay, "  api: { type: loopback }\n", "  api: { type: loopback }\n  out: { type: stdout }\n", 1)
	if _, diags, err := LoadBytes("flow.yaml", []byte(oneWay), reg); err != nil || !strings.Contains(diagText(diags), "nothing links into api/in") {
		t.Fatalf("no warning for a duplex connector nothing links into: %v %s", err, diagText(diags))
	}

	// A cycle through other nodes is still one.
	bad := strings.Replace(src, "  - double/err -> api/in\n", "  - double/err -> double/in\n", 1)
	if _, diags, err := LoadBytes("flow.yaml", []byte(bad), reg); err == nil || !strings.Contains(diagText(diags), "cycle") {
		t.Fatalf("cycle not reported: %v", diags)
	}
}

func diagText(diags []Diagnostic) string {
	var b strings.Builder
	for _, d := range diags {
		b.WriteString(d.String() + "\n")
	}
	return b.String()
}
