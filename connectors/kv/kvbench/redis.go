package kvbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flowrun/flowrun/pipeline"
)

// PeerRedis, as Config.Peer, also measures each workload that has a Redis
// counterpart (put: SET, get: GET, increment: INCR) on a redis-server
// started for it, with redis-benchmark.
const PeerRedis = "redis"

// ErrNoRedis reports that the executables the Redis peer runs are not
// installed.
var ErrNoRedis = errors.New("redis-server, redis-cli and redis-benchmark are needed (Debian: apt-get install redis-server redis-tools)")

// DefaultRedisClients is RedisOptions.Clients by default: as many
// pipelines in flight as the graph queues batches on a link, so that Redis
// gets as much concurrent work to group under one fsync as the connector
// does.
const DefaultRedisClients = pipeline.DefaultQueueDepth

// RedisOptions configures the Redis peer (Config.Peer PeerRedis).
type RedisOptions struct {
	// Port is the loopback port redis-server listens on; 0 picks a free
	// one.
	Port int
	// Clients is redis-benchmark's -c: connections, each sending
	// Config.Batch commands at a time (-P) and waiting for their replies.
	// Default DefaultRedisClients.
	Clients int
	// Server, CLI and Benchmark are the executables, looked up in PATH.
	// Defaults "redis-server", "redis-cli", "redis-benchmark".
	Server, CLI, Benchmark string
}

func (o *RedisOptions) ensureDefaults() {
	if o.Clients <= 0 {
		o.Clients = DefaultRedisClients
	}
	if o.Server == "" {
		o.Server = "redis-server"
	}
	if o.CLI == "" {
		o.CLI = "redis-cli"
	}
	if o.Benchmark == "" {
		o.Benchmark = "redis-benchmark"
	}
}

// RedisTest returns the redis-benchmark test that matches workload (SET,
// GET, INCR), or "" when Redis has none.
func RedisTest(workload string) string {
	switch workload {
	case Put:
		return "SET"
	case Get:
		return "GET"
	case Increment:
		return "INCR"
	}
	return ""
}

// redisConfig is the configuration redis-server is started with: durable
// as the flowrun store is (append-only file, fsynced before any reply to a
// write: appendfsync always), no RDB snapshots (the AOF is the persistence
// under test; a snapshot would fork mid-run), loopback only, everything
// else at Redis's defaults (AOF rewrites included, as Pebble's compactions
// run on the flowrun side).
func redisConfig(port int, dir string) string {
	return fmt.Sprintf(`bind 127.0.0.1
protected-mode yes
port %d
daemonize no
dir %q
logfile ""
save ""
appendonly yes
appendfsync always
`, port, dir)
}

// redisBenchArgs are redis-benchmark's arguments for test: cfg.Ops
// requests over cfg.Keys random keys (-r), values of cfg.ValueBytes bytes
// (-d), cfg.Batch commands per pipeline (-P), as the flowrun side hands
// the graph batches of cfg.Batch events.
func redisBenchArgs(cfg Config, port int, test string) []string {
	return []string{
		"-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-n", strconv.Itoa(cfg.Ops),
		"-r", strconv.Itoa(cfg.Keys),
		"-d", strconv.Itoa(cfg.ValueBytes),
		"-P", strconv.Itoa(cfg.Batch),
		"-c", strconv.Itoa(cfg.Redis.Clients),
		"-t", strings.ToLower(test),
		"--csv",
	}
}

// parseRedisCSV returns the requests per second of test from
// redis-benchmark's --csv output: a line "TEST","RPS"[,...] per test,
// after a header line "test","rps",... (Redis 7; earlier versions print
// no header).
func parseRedisCSV(out []byte, test string) (float64, error) {
	r := csv.NewReader(bytes.NewReader(out))
	r.FieldsPerRecord = -1
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("redis-benchmark printed no %s result: %q", test, out)
		}
		if err != nil {
			return 0, fmt.Errorf("redis-benchmark output: %w", err)
		}
		if len(rec) < 2 || !strings.EqualFold(rec[0], test) {
			continue
		}
		rps, err := strconv.ParseFloat(rec[1], 64)
		if err != nil || rps <= 0 {
			return 0, fmt.Errorf("redis-benchmark %s: requests per second %q is not a positive number", test, rec[1])
		}
		if math.IsInf(rps, 0) {
			// It times a run in whole milliseconds.
			return 0, fmt.Errorf("redis-benchmark %s: requests per second %q: the run took under a millisecond; give more operations", test, rec[1])
		}
		return rps, nil
	}
}

// redisKey is the key redis-benchmark's test uses for random number n:
// its pattern ("key:__rand_int__", "counter:__rand_int__" for INCR) with
// n in twelve digits.
func redisKey(dst []byte, test string, n int) []byte {
	if test == "INCR" {
		dst = append(dst, "counter:"...)
	} else {
		dst = append(dst, "key:"...)
	}
	return fmt.Appendf(dst, "%012d", n)
}

// redisPreload returns, in the Redis protocol, a SET of every key test
// reads: the value redis-benchmark writes (valueBytes bytes of 'x') for
// GET, 0 for INCR, as the flowrun side preloads every key. Nil for SET,
// which starts from an empty store as put does.
func redisPreload(test string, keys, valueBytes int) []byte {
	var value []byte
	switch test {
	case "GET":
		value = bytes.Repeat([]byte{'x'}, valueBytes)
	case "INCR":
		value = []byte{'0'}
	default:
		return nil
	}
	var out, key []byte
	for k := range keys {
		key = redisKey(key[:0], test, k)
		out = fmt.Appendf(out, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(key), key, len(value), value)
	}
	return out
}

// redisServer is a redis-server this package started.
type redisServer struct {
	opts RedisOptions
	port int
	cmd  *exec.Cmd
	log  *bytes.Buffer // its stdout and stderr
	done chan error    // Wait's result
}

// startRedis starts redis-server on loopback with redisConfig, its files
// in dir, and waits until it answers PING.
func startRedis(ctx context.Context, opts RedisOptions, dir string) (*redisServer, error) {
	port := opts.Port
	if port == 0 {
		var err error
		if port, err = freePort(); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(conf, []byte(redisConfig(port, dir)), 0o600); err != nil {
		return nil, err
	}
	s := &redisServer{opts: opts, port: port, log: &bytes.Buffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(opts.Server, conf)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoRedis, err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ping(port) {
			return s, nil
		}
		select {
		case err := <-s.done:
			s.done <- err
			return nil, fmt.Errorf("redis-server on port %d exited (%v): %s", port, err, lastLines(s.log.String(), 5))
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("redis-server on port %d did not answer PING within 10s: %s", port, lastLines(s.log.String(), 5))
		}
	}
}

// stop ends the server (SIGTERM: Redis fsyncs its AOF and exits) and waits
// for it, killing it after 10s.
func (s *redisServer) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
		return nil
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("redis-server on port %d did not stop within 10s of SIGTERM; killed", s.port)
	}
}

// preload stores, through redis-cli --pipe, what test reads.
func (s *redisServer) preload(ctx context.Context, cfg Config, test string) error {
	data := redisPreload(test, cfg.Keys, cfg.ValueBytes)
	if data == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, s.opts.CLI, "-h", "127.0.0.1", "-p", strconv.Itoa(s.port), "--pipe")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-cli --pipe preload: %w: %s", err, lastLines(string(out), 3))
	}
	if !bytes.Contains(out, []byte("errors: 0, replies: "+strconv.Itoa(cfg.Keys))) {
		return fmt.Errorf("redis-cli --pipe preload of %d keys: %s", cfg.Keys, lastLines(string(out), 3))
	}
	return nil
}

// bench runs redis-benchmark for test and returns its requests per second
// and the CPU time redis-server and redis-benchmark used meanwhile (0 where
// the server's cannot be read).
func (s *redisServer) bench(ctx context.Context, cfg Config, test string) (float64, time.Duration, error) {
	cmd := exec.CommandContext(ctx, s.opts.Benchmark, redisBenchArgs(cfg, s.port, test)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	before, okBefore := ProcCPU(s.cmd.Process.Pid)
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, fmt.Errorf("redis-benchmark: %w: %s", err, lastLines(stderr.String(), 3))
	}
	after, okAfter := ProcCPU(s.cmd.Process.Pid)
	var cpu time.Duration
	if okBefore && okAfter {
		cpu = after - before + cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	rps, err := parseRedisCSV(out, test)
	return rps, cpu, err
}

// clockTicks is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on every Linux platform Go supports).
const clockTicks = 100

// ProcCPU returns the CPU time (user and system) process pid has used, from
// /proc/PID/stat; false where that cannot be read.
func ProcCPU(pid int) (time.Duration, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	return parseProcStatCPU(data)
}

// parseProcStatCPU reads utime and stime (fields 14 and 15, after the
// parenthesised command name, which may hold spaces) of a /proc/PID/stat
// line.
func parseProcStatCPU(stat []byte) (time.Duration, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3, the state
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, true
}

// runRedisWorkload measures workload's Redis counterpart on a fresh
// redis-server in a fresh directory under cfg.Dir: start, preload as the
// flowrun side does, redis-benchmark, stop. It returns the requests per
// second and the CPU time of server and client during the benchmark, 0 for
// a workload Redis has no counterpart for.
func runRedisWorkload(ctx context.Context, cfg Config, workload string) (float64, time.Duration, error) {
	test := RedisTest(workload)
	if test == "" {
		return 0, 0, nil
	}
	dir, err := os.MkdirTemp(cfg.Dir, "kvbench-redis-"+workload+"-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	s, err := startRedis(ctx, cfg.Redis, dir)
	if err != nil {
		return 0, 0, err
	}
	rps, cpu, err := func() (float64, time.Duration, error) {
		if err := s.preload(ctx, cfg, test); err != nil {
			return 0, 0, err
		}
		return s.bench(ctx, cfg, test)
	}()
	if serr := s.stop(); err == nil {
		err = serr
	}
	return rps, cpu, err
}

// ping reports whether a Redis server on port answers PING.
func ping(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// freePort returns a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port for redis-server: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// lastLines returns the last n lines of s, joined by " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// checkRedis reports ErrNoRedis when an executable of opts is missing.
func checkRedis(opts RedisOptions) error {
	for _, name := range []string{opts.Server, opts.CLI, opts.Benchmark} {
		if _, err := exec.LookPath(name); err != nil {
			return fmt.Errorf("%w: %w", ErrNoRedis, err)
		}
	}
	return nil
}
