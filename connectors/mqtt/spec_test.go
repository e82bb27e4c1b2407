package mqtt_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// TestSpecRefusals: options the broker would refuse, or that would loop
// dead letters back into the source, are refused when the flow is loaded,
// at the option.
func TestSpecRefusals(t *testing.T) {
	for _, tc := range []struct{ opts, want string }{
		{`mode: read, topic: "a/#"`, `dead_letter: topic "a/#" has wildcards`},
		{`mode: read, topic: "a/#", dead_letter: a/dead`, `dead_letter: dead_letter "a/dead" matches the topic`},
		{`mode: read, topic: "a/+", dead_letter: "dead/+"`, `dead_letter: dead_letter: topic "dead/+": wildcards`},
		{`mode: read, topic: "a/#/b"`, `topic: topic "a/#/b": '#' must be the last level`},
		{`mode: write, topic: "a/+"`, `topic: topic "a/+": wildcards`},
		{`mode: read, topic: a, window: 600`, `window: 600 is more than max_inflight 512`},
		{`mode: read, topic: a, qos: 3`, `qos`},
		{`mode: read, topic: a, codec: xml`, `codec`},
		{`mode: read, topic: a, tls_cert: c.pem`, `tls_key: tls_cert and tls_key go together`},
	} {
		t.Run(tc.opts, func(t *testing.T) {
			dir := t.TempDir()
			flow := fmt.Sprintf("name: s\nconnectors:\n  m: { type: mqtt, %s }\n  o: { type: stdout }\nlinks:\n  - m/out -> o/in\n", tc.opts)
			if strings.Contains(tc.opts, "write") {
				flow = fmt.Sprintf("name: s\nconnectors:\n  i: { type: stdin }\n  m: { type: mqtt, %s }\nlinks:\n  - i/out -> m/in\n", tc.opts)
			}
			path := filepath.Join(dir, "flow.yaml")
			must(t, os.WriteFile(path, []byte(flow), 0o644))
			_, diags, err := flows.Load(path, builtin.NewRegistry())
			if err == nil {
				t.Fatalf("loaded; diagnostics %v", diags)
			}
			if msg := fmt.Sprint(err, diags); !strings.Contains(msg, tc.want) {
				t.Fatalf("error %s, want %q", msg, tc.want)
			}
		})
	}
}
