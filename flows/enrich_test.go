package flows

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/flows/builtin"
)

// enrichFlow looks each input's player up and writes it at data.player.
const enrichFlow = `name: enrich
connectors:
  input:   { type: stdin }
  players: { type: kv, dir: state, sync: false, result: data.player }
  results: { type: stdout }
  errors:  { type: stdout }
pipelines:
  lookup:
    - set:
        meta.kv: '{"get": "p_" + data.id}'
links:
  - input/out -> lookup/in
  - input/err -> errors/in
  - lookup/out -> players/in
  - lookup/err -> errors/in
  - players/out -> results/in
  - players/err -> errors/in
`

func runLines(t *testing.T, flow *Flow, input string) []string {
	t.Helper()
	var out bytes.Buffer
	built, err := flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader(input), Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(out.String()), "\n")
}

// TestEnrichmentFlow runs a flow whose kv connector has a result path: a
// lookup keeps the event (data, meta, correlation) and adds the stored
// player at data.player.
func TestEnrichmentFlow(t *testing.T) {
	dir := t.TempDir()
	seed := writeFlow(t, dir, strings.Replace(enrichFlow, "input/out -> lookup/in", "input/out -> players/in", 1))
	got := runLines(t, seed, `{"data":{"id":"1","name":"ann"},"meta":{"kv":{"put":"p_1"}}}`)
	if want := `{"data":{"id":"1","name":"ann","player":{"op":"put","key":"p_1","found":true,"value":{"id":"1","name":"ann"}}},"meta":{"kv":{"op":"put","key":"p_1","found":true}}}`; got[0] != want {
		t.Fatalf("seeding put:\n got %s\nwant %s", got[0], want)
	}
	got = runLines(t, writeFlow(t, dir, enrichFlow), `{"data":{"id":"1","score":7},"meta":{"correlation":"c-1","trace":"t"}}
{"data":{"id":"2","score":3}}
`)
	want := []string{
		`{"data":{"id":"1","score":7,"player":{"op":"get","key":"p_1","found":true,"value":{"id":"1","name":"ann"}}},"meta":{"correlation":"c-1","trace":"t","kv":{"op":"get","key":"p_1","found":true}}}`,
		`{"data":{"id":"2","score":3,"player":{"op":"get","key":"p_2","found":false,"value":null}},"meta":{"kv":{"op":"get","key":"p_2","found":false}}}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("stdout:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestEnrichmentPathChecked: a result path outside data and meta, or one
// overwriting what the connector sets, is refused when the flow loads.
func TestEnrichmentPathChecked(t *testing.T) {
	for _, tt := range []struct{ path, want string }{
		{"player", "must be a path below data or meta"},
		{"data", "must be a path below data or meta"},
		{"meta.kv", "would overwrite meta.kv"},
		{"meta.correlation.x", "would overwrite meta.correlation"},
		{"data..x", "empty part"},
		{"data.a*", `character '*'`},
	} {
		src := `name: enrich
connectors:
  input:   { type: stdin }
  players: { type: kv, dir: state, result: "` + tt.path + `" }
  results: { type: null }
links:
  - input/out -> players/in
  - input/err -> results/in
  - players/out -> results/in
  - players/err -> results/in
`
		_, diags, _ := LoadBytes("f.yaml", []byte(src), builtin.NewRegistry())
		if !HasErrors(diags) || !strings.Contains(joinDiags(diags), tt.want) {
			t.Errorf("result %q: diagnostics\n%s\nwant an error containing %q", tt.path, joinDiags(diags), tt.want)
		}
	}
}
