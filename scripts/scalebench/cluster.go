package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// clusterSpec says how one of the repository's cluster scripts starts and
// stops its servers, and where it keeps their pids.
type clusterSpec struct {
	name   string   // for messages
	script string   // scripts/nats-cluster.sh
	start  []string // its arguments
	stop   []string
	env    []string // added to the environment
	pids   []string // pid files of the servers
}

// cluster is a running cluster: its client URLs, its servers' pids, and
// whether this run started it (and so stops it).
type cluster struct {
	spec    clusterSpec
	urls    string
	pids    []int
	started bool
}

// runDir is where the scripts keep their state.
func runDir() string {
	if d := os.Getenv("TMPDIR"); d != "" {
		return d
	}
	return "/tmp"
}

// natsCluster is scripts/nats-cluster.sh on base.
func natsCluster(root string, base int) clusterSpec {
	dir := filepath.Join(runDir(), "flowrun-nats-cluster-"+strconv.Itoa(base))
	b := strconv.Itoa(base)
	return clusterSpec{
		name:   "NATS cluster on " + b,
		script: filepath.Join(root, "scripts", "nats-cluster.sh"),
		start:  []string{"start", b}, stop: []string{"stop", b},
		pids: []string{filepath.Join(dir, "node-1.pid"), filepath.Join(dir, "node-2.pid"), filepath.Join(dir, "node-3.pid")},
	}
}

// etcdCluster is scripts/etcd-cluster.sh with FLOWRUN_ETCD_PORT_BASE=base.
func etcdCluster(root string, base int) clusterSpec {
	dir := filepath.Join(runDir(), "flowrun-etcd")
	if base != 23790 {
		dir += "-" + strconv.Itoa(base)
	}
	return clusterSpec{
		name:   "etcd cluster on " + strconv.Itoa(base),
		script: filepath.Join(root, "scripts", "etcd-cluster.sh"),
		start:  []string{"start"}, stop: []string{"stop"},
		env:  []string{"FLOWRUN_ETCD_PORT_BASE=" + strconv.Itoa(base)},
		pids: []string{filepath.Join(dir, "member-1.pid"), filepath.Join(dir, "member-2.pid"), filepath.Join(dir, "member-3.pid")},
	}
}

// startCluster starts the cluster, or uses it when its first server is
// already running (then it is left running at the end).
func startCluster(ctx context.Context, spec clusterSpec, logf func(string, ...any)) (*cluster, error) {
	c := &cluster{spec: spec}
	_, running := readPid(spec.pids[0])
	cmd := exec.CommandContext(ctx, "bash", append([]string{spec.script}, spec.start...)...)
	cmd.Env = append(os.Environ(), spec.env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("start the %s: %s %s: %w\n%s", spec.name, spec.script, strings.Join(spec.start, " "), err, stderr.String())
	}
	c.urls = strings.TrimSpace(string(out))
	c.started = !running
	for _, f := range spec.pids {
		pid, ok := readPid(f)
		if !ok {
			c.stop(logf)
			return nil, fmt.Errorf("the %s: no running server in %s", spec.name, f)
		}
		c.pids = append(c.pids, pid)
	}
	if c.started {
		logf("started the %s: %s", spec.name, c.urls)
	} else {
		logf("using the running %s: %s", spec.name, c.urls)
	}
	return c, nil
}

// stop stops the cluster if this run started it.
func (c *cluster) stop(logf func(string, ...any)) {
	if !c.started {
		return
	}
	cmd := exec.Command("bash", append([]string{c.spec.script}, c.spec.stop...)...)
	cmd.Env = append(os.Environ(), c.spec.env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		logf("stop the %s: %v\n%s", c.spec.name, err, out)
		return
	}
	logf("stopped the %s", c.spec.name)
}

// readPid reads a pid file and says whether that process is alive.
func readPid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, syscall.Kill(pid, 0) == nil
}
