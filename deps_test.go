package flowrun_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportHygiene: importing flowrun links neither the etcd, gRPC and
// NATS clients nor Lua, nor the flows package that links every component:
// a program embedding the store pays only for Pebble.
func TestImportHygiene(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/flowrun/flowrun").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"go.etcd.io/",
		"google.golang.org/grpc",
		"github.com/nats-io/",
		"github.com/yuin/gopher-lua",
		"github.com/flowrun/flowrun/operators/lua",
		"github.com/flowrun/flowrun/flows",
		"github.com/flowrun/flowrun/connectors/kv/etcdstore",
		"github.com/flowrun/flowrun/connectors/bus",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f) && (strings.HasSuffix(f, "/") || dep[len(f)] == '/') {
				t.Errorf("flowrun depends on %s (forbidden: %s)", dep, f)
			}
		}
	}
}
