package kvbench

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
)

// testRedisPort returns a free loopback port for a test's redis-server: a
// fixed one would meet a server started there for other work.
func testRedisPort(t *testing.T) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// needRedis skips the test when the Redis executables are missing, except
// under CI, where their absence fails it.
func needRedis(t *testing.T) {
	t.Helper()
	opts := RedisOptions{}
	opts.ensureDefaults()
	if err := checkRedis(opts); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

func TestParseRedisCSV(t *testing.T) {
	redis7 := `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","242365.48","11.243","2.128","8.407","31.583","60.095","65.247"
"GET","561482.31","16.251","2.584","15.903","23.951","25.903","29.503"
"INCR","455166.12","16.137","1.472","14.223","35.071","42.111","42.527"
`
	redis6 := "\"SET\",\"117247.04\"\n\"INCR\",\"382848.41\"\n"
	for _, tc := range []struct {
		name, out, test string
		want            float64
		wantErr         string
	}{
		{"redis 7 SET", redis7, "SET", 242365.48, ""},
		{"redis 7 GET", redis7, "GET", 561482.31, ""},
		{"redis 7 INCR", redis7, "INCR", 455166.12, ""},
		{"redis 6 without header", redis6, "INCR", 382848.41, ""},
		{"test missing", redis6, "GET", 0, "no GET result"},
		{"empty", "", "SET", 0, "no SET result"},
		{"not a number", "\"SET\",\"fast\"\n", "SET", 0, `"fast" is not a positive number`},
		{"infinite", "\"SET\",\"inf\"\n", "SET", 0, "under a millisecond"},
		{"zero", "\"SET\",\"0.00\"\n", "SET", 0, "not a positive number"},
		{"broken quoting", "\"SET,\"1\n", "SET", 0, "redis-benchmark output"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseRedisCSV([]byte(tc.out), tc.test)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestRedisConfig checks the server is started as durable as the flowrun
// store: every write in an fsynced append-only file before its reply, on
// loopback only.
func TestRedisConfig(t *testing.T) {
	conf := redisConfig(26379, "/tmp/some dir")
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(conf), "\n") {
		name, value, _ := strings.Cut(line, " ")
		got[name] = value
	}
	want := map[string]string{
		"bind":           "127.0.0.1",
		"protected-mode": "yes",
		"port":           "26379",
		"daemonize":      "no",
		"dir":            `"/tmp/some dir"`,
		"logfile":        `""`,
		"save":           `""`,
		"appendonly":     "yes",
		"appendfsync":    "always",
	}
	for name, value := range want {
		if got[name] != value {
			t.Errorf("%s = %q, want %q", name, got[name], value)
		}
	}
	if len(got) != len(want) {
		t.Errorf("config has %d directives, want %d:\n%s", len(got), len(want), conf)
	}
}

func TestRedisBenchArgs(t *testing.T) {
	cfg := Config{Ops: 5000, Keys: 300, ValueBytes: 100, Batch: 250, Peer: PeerRedis}
	cfg.EnsureDefaults()
	got := strings.Join(redisBenchArgs(cfg, 26379, "INCR"), " ")
	want := "-h 127.0.0.1 -p 26379 -n 5000 -r 300 -d 100 -P 250 -c 16 -t incr --csv"
	if got != want {
		t.Errorf("args = %s\nwant   %s", got, want)
	}
	for w, test := range map[string]string{Put: "SET", Get: "GET", Increment: "INCR", Mixed: "", CAS: "", Scan: ""} {
		if got := RedisTest(w); got != test {
			t.Errorf("RedisTest(%s) = %q, want %q", w, got, test)
		}
	}
}

// TestRedisPreload checks the preload writes every key the benchmark's test
// reads, with redis-benchmark's key pattern and the value the flowrun
// side preloads.
func TestRedisPreload(t *testing.T) {
	if p := redisPreload("SET", 10, 100); p != nil {
		t.Errorf("SET preloads %q, want nothing (put starts empty)", p)
	}
	for _, tc := range []struct {
		test, firstKey, lastKey, value string
	}{
		{"GET", "key:000000000000", "key:000000000299", strings.Repeat("x", 100)},
		{"INCR", "counter:000000000000", "counter:000000000299", "0"},
	} {
		p := string(redisPreload(tc.test, 300, 100))
		cmds := strings.Split(p, "*3\r\n")[1:]
		if len(cmds) != 300 {
			t.Fatalf("%s: %d commands, want 300", tc.test, len(cmds))
		}
		for i, key := range map[int]string{0: tc.firstKey, 299: tc.lastKey} {
			want := "$3\r\nSET\r\n$" + strconv.Itoa(len(key)) + "\r\n" + key + "\r\n$" + strconv.Itoa(len(tc.value)) + "\r\n" + tc.value + "\r\n"
			if cmds[i] != want {
				t.Errorf("%s: command %d = %q, want %q", tc.test, i, cmds[i], want)
			}
		}
	}
}

func TestRedisPeerRefusals(t *testing.T) {
	for name, cfg := range map[string]Config{
		"unknown peer":   {Peer: "memcached"},
		"etcd backend":   {Peer: PeerRedis, Backend: BackendEtcd, Etcd: etcdstore.Options{Endpoints: []string{"http://127.0.0.1:1"}}},
		"open loop":      {Peer: PeerRedis, Rate: 1000},
		"port too large": {Peer: PeerRedis, Redis: RedisOptions{Port: 70000}},
	} {
		if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: %v, want ErrBadConfig", name, err)
		}
	}
	cfg := Config{Peer: PeerRedis, Ops: 10, Dir: t.TempDir(), Redis: RedisOptions{Server: "/nonexistent/redis-server"}}
	if _, err := Run(context.Background(), cfg); !errors.Is(err, ErrNoRedis) {
		t.Errorf("missing redis-server: %v, want ErrNoRedis", err)
	}
}

// TestStartRedisDurable starts the server as the peer does and asks it for
// its persistence settings, then checks stop leaves nothing listening.
func TestStartRedisDurable(t *testing.T) {
	needRedis(t)
	port := testRedisPort(t)
	opts := RedisOptions{Port: port}
	opts.ensureDefaults()
	s, err := startRedis(context.Background(), opts, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	for name, want := range map[string]string{"appendonly": "yes", "appendfsync": "always", "save": "", "bind": "127.0.0.1"} {
		out, err := exec.Command("redis-cli", "-p", strconv.Itoa(port), "config", "get", name).Output()
		if err != nil {
			t.Fatalf("config get %s: %v", name, err)
		}
		lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
		if len(lines) != 2 || lines[1] != want {
			t.Errorf("config get %s = %q, want %q", name, out, want)
		}
	}
	if err := s.stop(); err != nil {
		t.Fatal(err)
	}
	if ping(port) {
		t.Error("redis-server still answers after stop")
	}
}

// TestRunRedisPeer runs put, get, increment and cas with the Redis peer:
// the first three get a Redis figure and ratio, cas none, and no server
// or directory is left behind.
func TestRunRedisPeer(t *testing.T) {
	needRedis(t)
	port := testRedisPort(t)
	dir := t.TempDir()
	cfg := Config{Workloads: []string{Put, Get, Increment, CAS}, Ops: 2000, Keys: 200, ValueBytes: 100, Batch: 100,
		Sync: true, Dir: dir, Peer: PeerRedis, Redis: RedisOptions{Port: port, Clients: 4}}
	results, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var tests []string
	for _, r := range results {
		tests = append(tests, r.RedisTest)
		if r.RedisTest == "" {
			if r.RedisOpsPerS != 0 || r.RedisRatio != 0 {
				t.Errorf("%s: redis figures %+v without a redis test", r.Workload, r)
			}
			continue
		}
		if r.RedisOpsPerS <= 0 {
			t.Errorf("%s: redis ops/s %v", r.Workload, r.RedisOpsPerS)
		}
		if r.RedisCPUusPerOp <= 0 && runtime.GOOS == "linux" {
			t.Errorf("%s: redis CPU per request %v µs, want it measured", r.Workload, r.RedisCPUusPerOp)
		}
		if want := r.FlowrunOpsPerS / r.RedisOpsPerS; math.Abs(r.RedisRatio-want) > 1e-9*want {
			t.Errorf("%s: redis ratio %v, want %v", r.Workload, r.RedisRatio, want)
		}
	}
	if want := []string{"SET", "GET", "INCR", ""}; !slices.Equal(tests, want) {
		t.Errorf("redis tests %q, want %q", tests, want)
	}
	if ping(port) {
		t.Error("redis-server still answers after Run")
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left in --dir: %v", left)
	}
}

// TestRedisPreloadAnswered checks the preload is what GET then reads: every
// key holds the value, as on the flowrun side.
func TestRedisPreloadAnswered(t *testing.T) {
	needRedis(t)
	port := testRedisPort(t)
	cfg := Config{Keys: 50, ValueBytes: 20, Peer: PeerRedis, Redis: RedisOptions{Port: port}}
	cfg.EnsureDefaults()
	s, err := startRedis(context.Background(), cfg.Redis, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	if err := s.preload(context.Background(), cfg, "GET"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{0, 49} {
		out, err := exec.Command("redis-cli", "-p", strconv.Itoa(port), "get", string(redisKey(nil, "GET", k))).Output()
		if err != nil || !bytes.Equal(bytes.TrimSpace(out), bytes.Repeat([]byte{'x'}, 20)) {
			t.Errorf("key %d: %q, %v", k, out, err)
		}
	}
}

func TestParseProcStatCPU(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want time.Duration
		ok   bool
	}{
		{"4242 (redis-server) S 1 4242 4242 0 -1 4194560 1571 0 0 0 250 37 0 0 20 0 5 0 123 0 0", 2870 * time.Millisecond, true},
		{"7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 0 0", 70 * time.Millisecond, true},
		{"7 (short) R 1 7", 0, false},
		{"no parenthesis", 0, false},
		{"7 (x) R 1 7 7 0 -1 0 0 0 0 0 u s 0", 0, false},
	} {
		got, ok := parseProcStatCPU([]byte(tc.stat))
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q: %v, %t; want %v, %t", tc.stat, got, ok, tc.want, tc.ok)
		}
	}
}
