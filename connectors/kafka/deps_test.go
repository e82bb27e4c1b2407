package kafka_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoKfakeOutsideTests: kfake, the in-process broker of the tests, is
// linked by no program: neither this package, nor the built-in component
// set, nor the flowrun command. Its test dependencies (go list -test) do
// link it, so the check can fail.
func TestNoKfakeOutsideTests(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	const kfake = "github.com/twmb/franz-go/pkg/kfake"
	list := func(args ...string) string {
		out, err := exec.Command("go", append([]string{"list", "-deps"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for _, pkg := range []string{".", "github.com/flowrun/flowrun/flows/builtin", "github.com/flowrun/flowrun/cmd/flowrun"} {
		for _, dep := range strings.Fields(list(pkg)) {
			if dep == kfake || strings.HasPrefix(dep, kfake+"/") {
				t.Errorf("%s links %s", pkg, dep)
			}
		}
	}
	if !strings.Contains(list("-test", "."), kfake) {
		t.Error("the tests do not link kfake: the check tells nothing")
	}
}
