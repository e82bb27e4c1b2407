package builtin_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/flows/builtin"
)

// TestMinimalSetDeps lists the packages a program registering only the
// jsonl connectors, kv on Pebble and the operators links
// (testdata/minimal): the loader and the spec system must not drag in the
// other backends.
func TestMinimalSetDeps(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	const minimal = "github.com/flowrun/flowrun/flows/builtin/testdata/minimal"
	deps := goListDeps(t, "./testdata/minimal")
	for _, banned := range []string{
		"go.etcd.io/",                // the etcd backend
		"google.golang.org/grpc",     // etcd's transport
		"github.com/nats-io/",        // the nats connector
		"github.com/rabbitmq/",       // the amqp connector
		"github.com/eclipse/paho",    // the mqtt connector
		"github.com/ThreeDotsLabs/",  // watermill, under the bus connectors
		"github.com/twmb/franz-go",   // the kafka connector
		"github.com/yuin/gopher-lua", // the lua processor
		"github.com/flowrun/flowrun/connectors/bus",
		"github.com/flowrun/flowrun/connectors/amqp",
		"github.com/flowrun/flowrun/connectors/kafka",
		"github.com/flowrun/flowrun/connectors/mqtt",
		"github.com/flowrun/flowrun/connectors/kv/etcdstore",
		"github.com/redis/go-redis/", // the redis_streams connector
		"github.com/flowrun/flowrun/connectors/redisstream",
		"github.com/flowrun/flowrun/operators/lua",
		"github.com/flowrun/flowrun/flows/builtin",
	} {
		for _, d := range deps {
			if d == minimal {
				continue
			}
			if d == banned || strings.HasPrefix(d, strings.TrimSuffix(banned, "/")+"/") {
				t.Errorf("the minimal set links %s", d)
				break
			}
		}
	}
	// The full set does link them: the check above can fail.
	full := strings.Join(goListDeps(t, "."), "\n")
	for _, want := range []string{"go.etcd.io/etcd/client/v3", "github.com/nats-io/nats.go", "github.com/rabbitmq/amqp091-go", "github.com/yuin/gopher-lua",
		"github.com/twmb/franz-go/pkg/kgo", "github.com/eclipse/paho.mqtt.golang"} {
		if !strings.Contains(full, want) {
			t.Errorf("the full set does not link %s; the test no longer tells anything", want)
		}
	}
	// The component package itself imports nothing of flowrun but pipeline.
	for _, d := range goListDeps(t, "../../component") {
		if strings.HasPrefix(d, "github.com/flowrun/flowrun/") && d != "github.com/flowrun/flowrun/pipeline" &&
			d != "github.com/flowrun/flowrun/component" && !strings.HasPrefix(d, "github.com/flowrun/flowrun/internal/") {
			t.Errorf("package component links %s", d)
		}
		if strings.Contains(d, ".") && !strings.HasPrefix(d, "github.com/flowrun/flowrun/") {
			t.Errorf("package component links %s", d)
		}
	}
}

func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}

// TestRegister checks that the built-in set registers once per registry.
func TestRegister(t *testing.T) {
	r := builtin.NewRegistry()
	if err := builtin.Register(r); err == nil {
		t.Fatal("registering the built-ins twice in one registry succeeded")
	}
	if got := len(builtin.NewRegistry().Types("")); got != 18 {
		t.Errorf("built-in types: %d, want 18", got)
	}
}
