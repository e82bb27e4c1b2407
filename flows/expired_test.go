package flows

import (
	"strings"
	"testing"

	"github.com/flowrun/flowrun/flows/builtin"
)

// TestExpiredPortFlow: a kv connector with expired_events emits, on its
// expired port, each key whose expiry ran out, with its last value, by
// the end of a flow whose input ended; the keys are then gone.
func TestExpiredPortFlow(t *testing.T) {
	dir := t.TempDir()
	flow := writeFlow(t, dir, `name: exp
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state, sync: false, expired_events: true }
  results: { type: null }
  expired: { type: stdout }
links:
  - input/out -> store/in
  - input/err -> results/in
  - store/out -> results/in
  - store/err -> results/in
  - store/expired -> expired/in
`)
	got := runLines(t, flow, `{"data":{"n":1},"meta":{"kv":{"put":"a","expire_at":1000}}}
{"data":2,"meta":{"kv":{"increment":"b","expire_at":2000}}}
{"data":3,"meta":{"kv":{"put":"c","ttl":3600}}}
`)
	want := []string{
		`{"data":{"namespace":"exp","key":"a","value":{"n":1},"expired_at":1000},"meta":{}}`,
		`{"data":{"namespace":"exp","key":"b","value":1,"expired_at":2000},"meta":{}}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("expired port:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Reported and deleted: a second run reports nothing.
	if got := runLines(t, flow, ``); len(got) != 1 || got[0] != "" {
		t.Fatalf("second run reported again: %q", got)
	}
}

// TestExpiredPortChecked: the expired port exists only with
// expired_events, and etcd, which deletes expired keys itself, refuses it.
func TestExpiredPortChecked(t *testing.T) {
	for _, tt := range []struct{ store, want string }{
		{`{ type: kv, dir: state }`, `no output port "expired" (ports: out, err)`},
		{`{ type: kv, backend: etcd, endpoints: "http://127.0.0.1:1", expired_events: true }`, "expired_events is not available with backend etcd"},
	} {
		src := `name: exp
connectors:
  input: { type: stdin }
  store: ` + tt.store + `
  out:   { type: null }
links:
  - input/out -> store/in
  - input/err -> out/in
  - store/out -> out/in
  - store/err -> out/in
  - store/expired -> out/in
`
		_, diags, _ := LoadBytes("f.yaml", []byte(src), builtin.NewRegistry())
		if !HasErrors(diags) || !strings.Contains(joinDiags(diags), tt.want) {
			t.Errorf("store %s: diagnostics\n%s\nwant an error containing %q", tt.store, joinDiags(diags), tt.want)
		}
	}
}
