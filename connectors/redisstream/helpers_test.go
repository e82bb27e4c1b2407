package redisstream_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/internal/proctest"
)

var quiet = slog.New(slog.DiscardHandler)

// redisURL returns the server the tests use, from FLOWRUN_REDIS_URL.
// Under CI (CI=true) a missing or unreachable server fails the test: CI
// installs and starts one, so its absence is a broken setup, not a reason
// to skip.
func redisURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("FLOWRUN_REDIS_URL")
	inCI := os.Getenv("CI") == "true"
	if url == "" {
		msg := "FLOWRUN_REDIS_URL is not set; start a server with `scripts/redis-server.sh start 26380` " +
			"and set FLOWRUN_REDIS_URL=redis://127.0.0.1:26380 to run the Redis Streams tests"
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("FLOWRUN_REDIS_URL=%s: %v", url, err)
	}
	c := redis.NewClient(o)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		msg := fmt.Sprintf("Redis at FLOWRUN_REDIS_URL=%s is unreachable: %v", url, err)
		if inCI {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return url
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// unique returns a key no earlier run used: the server outlives test runs.
func unique(prefix string) string {
	return fmt.Sprintf("test.%s.%d.%x", prefix, time.Now().UnixNano(), rand.Uint32())
}

func newClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	o, err := redis.ParseURL(url)
	must(t, err)
	c := redis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// addEntries appends n entries to stream, entry i with the fields of
// fields(i), pipelined.
func addEntries(t testing.TB, c *redis.Client, stream string, n int, fields func(i int) []any) {
	t.Helper()
	ctx := context.Background()
	for from := 0; from < n; from += 1000 {
		pipe := c.Pipeline()
		for i := from; i < min(n, from+1000); i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: fields(i)})
		}
		_, err := pipe.Exec(ctx)
		must(t, err)
	}
}

// correlations counts the entries of stream by their correlation_id.
func correlations(t testing.TB, c *redis.Client, stream string) (seen map[string]int, total int) {
	t.Helper()
	seen = map[string]int{}
	xs, err := c.XRange(context.Background(), stream, "-", "+").Result()
	must(t, err)
	for _, x := range xs {
		id, _ := x.Values["correlation_id"].(string)
		seen[id]++
	}
	return seen, len(xs)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pending returns how many entries of stream are unacknowledged in group,
// or -1 when the group does not exist yet.
func pending(t testing.TB, c *redis.Client, stream, group string) int64 {
	t.Helper()
	p, err := c.XPending(context.Background(), stream, group).Result()
	if redis.HasErrorPrefix(err, "NOGROUP") {
		return -1
	}
	must(t, err)
	return p.Count
}

// runningFlow is a flow loaded from YAML and running in this process.
type runningFlow struct {
	built  *flows.Built
	res    *component.Resources
	ctx    context.Context
	cancel context.CancelFunc
	done   chan error
}

func startFlow(t testing.TB, dir, yaml string) *runningFlow {
	t.Helper()
	f := buildFlow(t, dir, yaml)
	f.run()
	return f
}

// buildFlow builds the flow (its sources connect) without running it.
func buildFlow(t testing.TB, dir, yaml string) *runningFlow {
	t.Helper()
	path := filepath.Join(dir, "flow.yaml")
	must(t, os.WriteFile(path, []byte(yaml), 0o644))
	flow, diags, err := flows.Load(path, builtin.NewRegistry())
	if err != nil {
		t.Fatalf("load: %v %v", err, diags)
	}
	res := component.NewResources()
	// The flow logs to the test's output, shown when the test fails.
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	built, err := flow.Build(context.Background(), flows.BuildOptions{Logger: logger, Resources: res})
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	f := &runningFlow{built: built, res: res, ctx: ctx, cancel: cancel, done: make(chan error, 1)}
	t.Cleanup(func() { f.stop(t) })
	return f
}

func (f *runningFlow) run() { go func() { f.done <- f.built.Run(f.ctx) }() }

func (f *runningFlow) stop(t testing.TB) {
	t.Helper()
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.cancel = nil
	select {
	case err := <-f.done:
		must(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("flow did not stop within 30s")
	}
}

// flowrunBuild is the flowrun binary the tests run as a process, built
// once per test binary.
var flowrunBuild proctest.SharedBuild

func TestMain(m *testing.M) {
	code := m.Run()
	flowrunBuild.Remove()
	os.Exit(code)
}

// buildFlowrun builds the flowrun command once per test binary.
func buildFlowrun(t testing.TB) string {
	t.Helper()
	return flowrunBuild.Flowrun(t)
}

// process is a `flowrun run` process.
type process struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

func startProcess(t testing.TB, bin, dir, file string) *process {
	t.Helper()
	cmd := exec.Command(bin, "run", file)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	must(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return &process{cmd: cmd, stderr: &stderr}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// freePort returns a loopback port nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// privateServer is a redis-server of one test, with an append-only file
// fsynced on every write in dir.
type privateServer struct {
	port int
	dir  string
	cmd  *exec.Cmd
}

func startPrivateServer(t testing.TB, port int, dir string) *privateServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server not found")
		}
		t.Skip("redis-server not found: apt-get install -y redis-server")
	}
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--logfile", filepath.Join(dir, "redis.log"))
	must(t, cmd.Start())
	s := &privateServer{port: port, dir: dir, cmd: cmd}
	t.Cleanup(s.kill)
	c := redis.NewClient(&redis.Options{Addr: s.addr(), MaxRetries: -1})
	defer c.Close()
	waitFor(t, 10*time.Second, "private redis-server answers", func() bool {
		return c.Ping(context.Background()).Err() == nil
	})
	return s
}

func (s *privateServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }
func (s *privateServer) url() string  { return "redis://" + s.addr() }

// kill stops the server with SIGKILL: with appendfsync always, every
// write it acknowledged is on disk.
func (s *privateServer) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

var _ = strings.Contains
