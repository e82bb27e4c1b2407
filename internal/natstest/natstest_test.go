package natstest

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestRestartWaitsForItsPortsToBeFree: while a killed node is down,
// another socket may take one of its ports (its ports sit in Linux's
// ephemeral range, and a client dialling a dead port can even be given
// that port and connect to itself). Restart starts the node again until
// the port is free, instead of failing at once with the node's "address
// already in use".
func TestRestartWaitsForItsPortsToBeFree(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster; skipped with -short")
	}
	c := StartCluster(t)
	const node = 3
	if err := c.Kill(node); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(c.base+node-1) // node 3's client port
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("hold node %d's client port: %v", node, err)
	}
	// Released while Restart tries.
	held := time.AfterFunc(3*time.Second, func() { _ = l.Close() })
	defer held.Stop()
	if err := c.Restart(node); err != nil {
		t.Fatalf("restart of node %d while its client port was taken for 3 s: %v", node, err)
	}
	nc, err := nats.Connect("nats://"+addr, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("node %d restarted but does not accept clients: %v", node, err)
	}
	nc.Close()
}

// TestNamesAreUnique: names made one after the other in one process never
// repeat, and are lowercase letters and digits. Lowercased NUIDs, as
// names were once made, repeat within a few thousand in one process of
// five: two tests then shared a stream or a partitioned group.
func TestNamesAreUnique(t *testing.T) {
	seen := make(map[string]int, 100_000)
	for i := range 100_000 {
		name := Name("x")
		if j, ok := seen[name]; ok {
			t.Fatalf("name %d is name %d: %s", i, j, name)
		}
		seen[name] = i
		if strings.ToLower(name) != name || strings.ContainsAny(name, ".*> ") {
			t.Fatalf("name %q is not lowercase letters and digits", name)
		}
	}
}
