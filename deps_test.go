package flowrun_test

import (
	"os/exec"
	"strings"
	"testing"
)

// forbiddenDeps are what a program importing flowrun must not link
// unless it registers the components using them: the etcd, gRPC and NATS
// clients, watermill, Lua, and the flowrun packages bringing them in
// (flows/builtin registers every component).
var forbiddenDeps = []string{
	"go.etcd.io/",
	"google.golang.org/grpc",
	"github.com/nats-io/",
	"github.com/ThreeDotsLabs/",
	"github.com/twmb/franz-go",
	"github.com/yuin/gopher-lua",
	"github.com/flowrun/flowrun/operators/lua",
	"github.com/flowrun/flowrun/flows/builtin",
	"github.com/flowrun/flowrun/flows/replay",
	"github.com/flowrun/flowrun/connectors/kv/etcdstore",
	"github.com/flowrun/flowrun/connectors/bus",
	"github.com/flowrun/flowrun/connectors/kafka",
	"github.com/flowrun/flowrun/connectors/httpconn",
}

// TestImportHygiene: importing flowrun, for its Store or for its flows
// (NewRegistry, LoadFlow, FlowBuilder), links none of forbiddenDeps: a
// program embedding the store pays for Pebble, the flow loader and the
// light components, nothing more. A program registering lua and the etcd
// backend does link them, so the check can fail.
func TestImportHygiene(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	for _, pkg := range []string{"github.com/flowrun/flowrun", "./testdata/embed/flowonly"} {
		if bad := forbiddenIn(t, pkg); len(bad) > 0 {
			t.Errorf("%s links %s", pkg, strings.Join(bad, ", "))
		}
	}
	bad := strings.Join(forbiddenIn(t, "./testdata/embed/withlua"), " ")
	for _, want := range []string{"github.com/yuin/gopher-lua", "go.etcd.io/etcd/client/v3", "google.golang.org/grpc"} {
		if !strings.Contains(bad, want) {
			t.Errorf("a program registering lua and etcd does not link %s: the check tells nothing", want)
		}
	}
}

// forbiddenIn returns the forbidden packages pkg depends on.
func forbiddenIn(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	var bad []string
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbiddenDeps {
			if dep == f || strings.HasPrefix(dep, f) && (strings.HasSuffix(f, "/") || dep[len(f)] == '/') {
				bad = append(bad, dep)
			}
		}
	}
	return bad
}
