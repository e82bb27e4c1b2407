// Package natstest gives tests a connection to the three-node NATS
// JetStream cluster named by FLOWRUN_NATS_CLUSTER_URLS
// (scripts/nats-cluster.sh start prints it).
package natstest

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
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
	nc, err := nats.Connect(ClusterURLs(t), nats.Timeout(2*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatalf("connect to the NATS cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// Name returns a name no earlier test run used, made of prefix and
// letters and digits (valid as a stream, bucket or subject token): the
// cluster's storage may outlive test runs.
func Name(prefix string) string {
	return prefix + strings.ToLower(nuid.Next())
}
