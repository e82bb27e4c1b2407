package kv_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/flows"
)

// memBackend is a kv backend declared outside the kv package, as
// pebblestore and etcdstore declare theirs.
func memBackend() kv.BackendSpec {
	return kv.BackendSpec{
		Name: "memory",
		Doc:  "this process's memory",
		Fields: []component.Field{
			{Name: "label", Type: component.TypeString, Required: true, Doc: "A name for messages."},
		},
		Open: func(_ context.Context, _ *component.Env, c *component.Config) (kv.Backend, string, error) {
			return memstore.New(), "memory " + c.String("label"), nil
		},
	}
}

// TestSpecBackends registers the kv connector with one backend of its
// own: the backend option lists only it, its fields apply only to it, and
// a flow using it runs.
func TestSpecBackends(t *testing.T) {
	r := component.NewRegistry()
	r.MustRegister(jsonl.StdinSpec(), jsonl.StdoutSpec(), kv.Spec(memBackend()))
	spec, _ := r.Spec("kv")
	if f := spec.Field("backend"); f == nil || strings.Join(f.Enum, ",") != "memory" || f.Default != "memory" {
		t.Fatalf("backend option: %+v", f)
	}
	if f := spec.Field("label"); f == nil || f.OnlyWhen == nil || f.RequiredWhen == nil {
		t.Fatalf("backend field label does not apply only to its backend: %+v", f)
	}
	const links = "links:\n  - in -> store\n  - in/err -> out\n  - store -> out\n  - store/err -> out\n"
	_, diags, err := flows.LoadBytes("f.yaml", []byte("name: m\nconnectors:\n  in: { type: stdin }\n  out: { type: stdout }\n"+
		"  store: { type: kv, backend: etcd, endpoints: x }\n"+links), r)
	if err == nil || !strings.Contains(diags[0].Message, `invalid value "etcd" (want one of memory)`) {
		t.Fatalf("backend etcd without the etcd backend registered: %v", err)
	}
	flow, _, err := flows.LoadBytes("f.yaml", []byte("name: m\nconnectors:\n  in: { type: stdin }\n  out: { type: stdout }\n"+
		"  store: { type: kv, label: test }\n"+links), r)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	built, err := flow.Build(context.Background(), flows.BuildOptions{
		Stdin:  strings.NewReader(`{"data":7,"meta":{"kv":{"put":"k"}}}` + "\n" + `{"meta":{"kv":{"get":"k"}}}` + "\n"),
		Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[1], `{"data":7,`) {
		t.Errorf("put then get on the memory backend gave:\n%s", out.String())
	}
}
