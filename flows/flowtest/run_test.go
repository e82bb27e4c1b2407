package flowtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/pipeline"
)

// slowProcessor holds every slice for a while, then passes it on.
type slowProcessor struct{ d time.Duration }

func (s slowProcessor) Process(_ context.Context, events []pipeline.Event, emit pipeline.Emitter) error {
	time.Sleep(s.d)
	for _, ev := range events {
		emit.Emit(pipeline.PortOut, ev)
	}
	return nil
}

// TestTimeout checks that a case running longer than Options.Timeout
// fails, saying so, instead of holding the run.
func TestTimeout(t *testing.T) {
	reg := component.NewRegistry()
	reg.MustRegister(jsonl.StdinSpec(), jsonl.StdoutSpec(), component.Spec{
		Type: "slow", Kind: component.KindProcessor, Ports: component.StaticPorts(pipeline.PortOut),
		Build: func(context.Context, *component.Env, *component.Config) (component.Component, error) {
			return component.Component{Processor: slowProcessor{d: 300 * time.Millisecond}}, nil
		},
	})
	dir := t.TempDir()
	flow := "name: slow\nconnectors:\n  in: {type: stdin}\n  slow: {type: slow}\n  out: {type: stdout}\nlinks:\n  - in/out -> slow/in\n  - slow/out -> out/in\n"
	if err := os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	f, diags, err := Parse(filepath.Join(dir, "flow_test.yaml"), []byte("cases:\n  - name: slow\n    input: [{data: 1}]\n    expect: {out: [{data: 1}]}\n"))
	if err != nil {
		t.Fatal(err, diags)
	}
	r := RunCase(context.Background(), f, f.Cases[0], Options{Registry: reg, Timeout: 50 * time.Millisecond})
	if r.Passed || len(r.Failures) != 1 || !strings.Contains(r.Failures[0].Message, ErrTimeout.Error()) {
		t.Fatalf("result %+v, want one timeout failure", r)
	}
	r = RunCase(context.Background(), f, f.Cases[0], Options{Registry: reg, Timeout: time.Minute})
	if !r.Passed {
		t.Fatalf("with time enough: %+v", r)
	}
}
