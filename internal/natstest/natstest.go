// Package natstest gives tests a connection to the three-node NATS
// JetStream cluster named by FLOWRUN_NATS_CLUSTER_URLS
// (scripts/nats-cluster.sh start prints it), or a cluster of their own
// whose nodes they may kill (StartCluster).
package natstest

import (
	"bytes"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// EnvClusterURLs names the environment variable holding the cluster's
// client URLs, comma-separated.
const EnvClusterURLs = "FLOWRUN_NATS_CLUSTER_URLS"

// ClusterURLs returns the cluster's URLs. Without them, or when the
// cluster is unreachable, the test is skipped, except under CI (CI=true),
// where it fails: CI starts the cluster and must not pass without it.
func ClusterURLs(t testing.TB) string {
	t.Helper()
	urls := os.Getenv(EnvClusterURLs)
	inCI := os.Getenv("CI") == "true"
	give := func(msg string) {
		t.Helper()
		if inCI {
			t.Fatalf("%s (CI needs the cluster: scripts/nats-cluster.sh start)", msg)
		}
		t.Skip(msg)
	}
	if urls == "" {
		give(EnvClusterURLs + " is not set; start a cluster with `scripts/nats-cluster.sh start 24222` and set " +
			EnvClusterURLs + " to the URLs it prints to run these tests")
	}
	nc, err := nats.Connect(urls, nats.Timeout(2*time.Second))
	if err != nil {
		give("NATS cluster at " + EnvClusterURLs + "=" + urls + " is unreachable: " + err.Error())
	}
	nc.Close()
	return urls
}

// JetStream connects to the cluster (see ClusterURLs) and returns a
// JetStream context; the connection is closed when the test ends.
func JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	return JetStreamAt(t, ClusterURLs(t))
}

// JetStreamAt connects to the servers at urls (comma-separated), trying
// again for ever when one goes away, and returns a JetStream context; the
// connection is closed when the test ends.
func JetStreamAt(t testing.TB, urls string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(urls, nats.Timeout(2*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connect to the NATS cluster at %s: %v", urls, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// Name returns a name no earlier test run used, made of prefix and
// Token (valid as a stream, bucket or subject token): the cluster's
// storage may outlive test runs.
func Name(prefix string) string {
	return prefix + Token()
}

// Token returns 24 lowercase hexadecimal digits of a random 96-bit
// number: unique across test runs and processes. (A NUID lowercased is
// not: its letters of both cases fold together, and two names of one
// process were once the same, so that two tests shared a group.)
func Token() string {
	var b [12]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Cluster is a three-node JetStream cluster of a test's own, started by
// StartCluster with scripts/nats-cluster.sh on free loopback ports: a
// test may kill and restart its nodes, which it must never do to the
// shared cluster of FLOWRUN_NATS_CLUSTER_URLS.
type Cluster struct {
	// URLs are the client URLs of nodes 1-3, comma-separated.
	URLs   string
	base   int
	script string
}

// Ports a private cluster's base is chosen from: BASE..BASE+2 are its
// client ports, BASE+1000.. its monitoring ports, BASE+2000.. its cluster
// ports, clear of the ports CI's servers use (below 30000).
const (
	clusterBaseMin = 44000
	clusterBaseMax = 50000
)

// StartCluster starts a private three-node cluster on a base port whose
// nine ports are free, and stops it (removing its storage) when the test
// ends. Without nats-server or curl the test is skipped, except under CI
// (CI=true), where it fails.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	for _, tool := range []string{"nats-server", "curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := tool + " is not installed: a private NATS cluster needs it (apt-get install -y nats-server curl)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	script, err := clusterScript()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		base := clusterBaseMin + rand.IntN((clusterBaseMax-clusterBaseMin)/10)*10
		if !portsFree(base) {
			continue
		}
		c := &Cluster{base: base, script: script}
		out, err := c.run("start", strconv.Itoa(base))
		if err != nil {
			// Another process may have taken a port since the check.
			t.Logf("NATS cluster on base %d: %v", base, err)
			continue
		}
		t.Cleanup(func() {
			if _, err := c.run("stop", strconv.Itoa(base)); err != nil {
				t.Errorf("stop the NATS cluster on %d: %v", base, err)
			}
			// The script keeps the nodes' logs there.
			logs := filepath.Join(os.TempDir(), "flowrun-nats-cluster-"+strconv.Itoa(base))
			if t.Failed() {
				t.Logf("the NATS nodes' logs are in %s", logs)
				return
			}
			_ = os.RemoveAll(logs)
		})
		c.URLs = strings.TrimSpace(string(out))
		return c
	}
	t.Fatalf("no NATS cluster started on a free base port in %d-%d", clusterBaseMin, clusterBaseMax)
	return nil
}

// Node returns the number (1-3) of the node whose server name is name,
// as JetStream reports stream leaders, or 0 for another name.
func (c *Cluster) Node(name string) int {
	for n := 1; n <= 3; n++ {
		if name == fmt.Sprintf("flowrun-%d-%d", c.base, n) {
			return n
		}
	}
	return 0
}

// Kill SIGKILLs node n (1-3), as a crash: its storage stays.
func (c *Cluster) Kill(n int) error {
	_, err := c.run("kill", strconv.Itoa(c.base), strconv.Itoa(n))
	return err
}

// Restart starts node n again on its ports and storage, and returns once
// it reports healthy.
func (c *Cluster) Restart(n int) error {
	_, err := c.run("restart", strconv.Itoa(c.base), strconv.Itoa(n))
	return err
}

func (c *Cluster) run(args ...string) ([]byte, error) {
	cmd := exec.Command("bash", append([]string{c.script}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(c.script), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// portsFree reports whether the nine ports of a cluster on base accept a
// listener on loopback.
func portsFree(base int) bool {
	for _, off := range []int{0, 1000, 2000} {
		for n := range 3 {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(base+off+n))
			if err != nil {
				return false
			}
			l.Close()
		}
	}
	return true
}

// clusterScript finds scripts/nats-cluster.sh in the module holding the
// working directory (a test runs in its package's directory).
func clusterScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "scripts", "nats-cluster.sh"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("natstest: no go.mod above the working directory, so no scripts/nats-cluster.sh")
		}
		dir = parent
	}
}
