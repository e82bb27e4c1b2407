package flows

import (
	"strings"
	"testing"

	"github.com/flowrun/flowrun/flows/builtin"
)

// TestMapOption checks a component.TypeMap option (http_client headers):
// a mapping of strings with ${NAME} expanded in values, anything else
// refused at its position.
func TestMapOption(t *testing.T) {
	t.Setenv("FLOWRUN_TEST_KEY", "k1")
	const head = "name: m\nconnectors:\n  in: { type: stdin }\n  out: { type: stdout }\n  call:\n    type: http_client\n    url: http://127.0.0.1:1/x\n"
	const links = "links:\n  - in -> call\n  - in/err -> out\n  - call -> out\n  - call/err -> out\n"
	flow, diags, err := LoadBytes("f.yaml", []byte(head+"    headers: { X-Key: '${FLOWRUN_TEST_KEY}', X-Player: '{data.player}' }\n"+links), builtin.NewRegistry())
	if err != nil {
		t.Fatalf("%v %v", err, diags)
	}
	n, _ := flow.Node("call")
	if h := n.Config.Map("headers"); len(h) != 2 || h["X-Key"] != "k1" || h["X-Player"] != "{data.player}" {
		t.Fatalf("headers %v", h)
	}
	for _, tc := range []struct{ headers, want string }{
		{"    headers: 'X-Key: v'\n", `8:14: error: connectors.call.headers: expected a mapping of names to strings`},
		{"    headers: { X-Key: [a, b] }\n", `8:23: error: connectors.call.headers.X-Key: expected a string, got a list`},
		{"    headers: { X-Key: '${FLOWRUN_TEST_UNSET_KEY}' }\n", `8:23: error: connectors.call.headers.X-Key: environment variable FLOWRUN_TEST_UNSET_KEY is not set`},
		{"    headers: { 'X Key': v }\n", `connectors.call.headers: "X Key" is not a header name`},
	} {
		_, diags, err := LoadBytes("f.yaml", []byte(head+tc.headers+links), builtin.NewRegistry())
		if err == nil || !strings.Contains(diagText(diags), tc.want) {
			t.Errorf("%s: diagnostics\n%s\nwant %q", strings.TrimSpace(tc.headers), diagText(diags), tc.want)
		}
	}
}
