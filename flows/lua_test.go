package flows

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
)

// luaSharedFlow has a lua node bound to a kv connector nothing links to:
// the connector must stay open for the script while the graph runs, and
// its limits (max_value_bytes) apply to the script's writes.
const luaSharedFlow = `name: shared
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state, max_value_bytes: 64 }
  count:
    type: lua
    kv: store
    max_memory: 32MiB
    script: |
      if event.data.big then
        local ok, err = kv.set("big", string.rep("x", 100))
        emit("out", {err = err})
      else
        emit("out", {n = kv.increment("n")})
      end
  results: { type: stdout }
  errors:  { type: stdout }
links:
  - input/out -> count/in
  - input/err -> errors/in
  - count/out -> results/in
  - count/err -> errors/in
`

// kvGetFlow reads the same store and namespace (the flow name) with a
// command.
const kvGetFlow = `name: shared
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state }
  results: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> results/in
  - store/out -> results/in
  - store/err -> results/in
`

func runFlow(t *testing.T, flow *Flow, input string) []string {
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

func TestLuaUsesNamedKVConnector(t *testing.T) {
	for _, optimistic := range []bool{false, true} {
		t.Run(fmt.Sprintf("optimistic_scripts=%v", optimistic), func(t *testing.T) {
			flow := luaSharedFlow
			if optimistic {
				flow = strings.Replace(flow, "max_value_bytes: 64 }", "max_value_bytes: 64, optimistic_scripts: true }", 1)
			}
			testLuaUsesNamedKVConnector(t, flow)
		})
	}
}

func testLuaUsesNamedKVConnector(t *testing.T, flow string) {
	dir := t.TempDir()
	lua := writeFlow(t, dir, flow)
	got := runFlow(t, lua, "{\"data\":{}}\n{\"data\":{}}\n{\"data\":{\"big\":true}}\n")
	if len(got) != 3 {
		t.Fatalf("got %d lines, want 3: %q", len(got), got)
	}
	if !strings.HasPrefix(got[1], `{"data":{"n":2}`) {
		t.Errorf("second increment: %s, want n 2", got[1])
	}
	if !strings.Contains(got[2], "limit is 64 bytes") {
		t.Errorf("a 100-byte value passed the connector's max_value_bytes of 64: %s", got[2])
	}
	// The store was closed when the graph ended (a second build opens the
	// directory again) and the kv connector sees the script's key in the
	// same namespace.
	get := writeFlow(t, dir, kvGetFlow)
	got = runFlow(t, get, `{"meta":{"kv":{"get":"n"}}}`+"\n")
	if len(got) != 1 || !strings.HasPrefix(got[0], `{"data":2,`) {
		t.Errorf("get n through the kv connector: %q, want data 2", got)
	}
}
