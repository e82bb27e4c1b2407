package lua

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// bomb is a script that, without the library's limits, runs for seconds
// inside one library call or grows the process until it is killed.
type bomb struct {
	name   string
	script string
	events int    // events sent, one slice each, until one fails
	want   string // in the failing event's meta.error; "": none fails
}

// bombTimeout and bombMemory are the limits the bombs run under.
const (
	bombTimeout = time.Second
	bombMemory  = 64 << 20
)

// leakBound is the most heap a bomb that no event fails may leave after
// its events and a collection: its state is limited to bombMemory, so
// more is memory the limit does not see (2-8 MiB is left here). The
// events of such bombs are as few as still exceed it several times over
// if each leaked what it allocates: each event under -race costs about a
// tenth of a second in page faults of its large strings.
const leakBound = bombMemory

var bombs = []bomb{
	{"find backtracking n=100", `string.find(string.rep("a", 100), ".-.-.-.-b")`, 1, "(timeout)"},
	{"find backtracking n=200", `string.find(string.rep("a", 200), ".-.-.-.-b")`, 1, "(timeout)"},
	{"match backtracking", `string.match(string.rep("a", 200), ".-.-.-.-b")`, 1, "(timeout)"},
	{"gmatch backtracking", `for m in string.gmatch(string.rep("a", 200), ".-.-.-.-b") do end`, 1, "(timeout)"},
	{"gsub backtracking", `string.gsub(string.rep("a", 200), ".-.-.-.-b", "")`, 1, "(timeout)"},
	{"pcall around a backtracking find", `while true do pcall(string.find, string.rep("a", 200), ".-.-.-.-b") end`, 1, "(timeout)"},
	{"unpack 1e5", `unpack({}, 1, 1e5)`, 1, "too many results to unpack"},
	{"string.byte of 1 MiB", `string.byte(string.rep("x", 1048576), 1, -1)`, 1, "string slice too long"},
	{"gsub 60000 x 60000", `string.gsub(string.rep("x", 60000), "x", string.rep("y", 60000))`, 1, "string.gsub result over"},
	{"table.concat 1000 x 4 MiB", `local s = string.rep("x", 4194304) local t = {} for i = 1, 1000 do t[i] = s end table.concat(t)`, 1, "table.concat result over"},
	{"format %999999d x 4000", `local t = {} for i = 1, 4000 do t[i] = i end string.format(string.rep("%999999d", 4000), unpack(t))`, 1, "width or precision too long"},
	{"format %*d", `string.format("%*d", 1e9, 1)`, 1, "invalid option"},
	{"format %s x 2000 of 1 MiB", `local s = string.rep("x", 1048576) local t = {} for i = 1, 2000 do t[i] = s end string.format(string.rep("%s", 2000), unpack(t))`, 1, "string.format result over"},
	{"globals grown by string.rep", `big = big or {} big[#big + 1] = string.rep("x", 4194304)`, 900, "(max_memory)"},
	{"globals grown by concatenation", `s = s or string.rep("x", 1048576) big = big or {} big[#big + 1] = s .. #big`, 900, "(max_memory)"},
	// A moderate state and much garbage: no event fails.
	{"moderate state, much garbage", `cache = cache or {} cache[#cache % 100 + 1] = string.rep("x", 65536) local tmp = string.rep("y", 4000000) .. "z"`, 60, ""},
	// Substrings kept in globals: each must hold only its own bytes, not
	// the 4 MiB string or kv value it was cut from; no event fails, and
	// the heap after them stays under leakBound (100 leaked parents
	// would be 200-400 MiB).
	{"globals holding substrings", `keep = keep or {} keep[#keep + 1] = string.rep("x", 4194304):sub(1, 10)`, 100, ""},
	{"globals holding strings of kv values", `if not kv.exists("big") then kv.set("big", {a = string.rep("x", 2000000), b = "y"}) end keep = keep or {} keep[#keep + 1] = kv.get("big").b`, 100, ""},
	{"globals holding gmatch iterators", `its = its or {} its[#its + 1] = string.gmatch(string.rep("x", 4194304), "x")`, 900, "(max_memory)"},
}

// TestBombs runs each bomb in a child process whose address space is
// capped at 3 GiB, with timeout 1s (10s for the bombs over many events)
// and max_memory 64 MiB: the event
// running it must fail within twice the timeout with an error naming the
// limit, the child must stay alive, and its peak RSS below 1 GiB. A bomb
// that no event fails must leave under leakBound of heap.
func TestBombs(t *testing.T) {
	if os.Getenv("FLOWRUN_LUA_BOMB") != "" {
		t.Skip("in a bomb's child process")
	}
	for _, b := range bombs {
		t.Run(b.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBombChild$", "-test.v")
			cmd.Env = append(os.Environ(), "FLOWRUN_LUA_BOMB="+b.name)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child failed after %v: %v\n%s", time.Since(start).Round(time.Millisecond), err, tail(out))
			}
			if !strings.Contains(string(out), "--- PASS: TestBombChild") {
				t.Fatalf("child did not run the bomb:\n%s", tail(out))
			}
			ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			if ru != nil {
				rss := ru.Maxrss << 10
				t.Logf("%s; peak RSS %d MiB", lastLog(out), rss>>20)
				if rss > 1<<30 {
					t.Errorf("peak RSS of the child %d MiB, want under 1 GiB", rss>>20)
				}
			}
		})
	}
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func lastLog(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "stopped:") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

// TestBombChild runs the bomb named by FLOWRUN_LUA_BOMB (see TestBombs).
func TestBombChild(t *testing.T) {
	name := os.Getenv("FLOWRUN_LUA_BOMB")
	if name == "" {
		t.Skip("run by TestBombs in a child process")
	}
	// A bomb the limits miss fails this process, not the machine.
	lim := syscall.Rlimit{Cur: 3 << 30, Max: 3 << 30}
	if err := syscall.Setrlimit(syscall.RLIMIT_AS, &lim); err != nil {
		t.Logf("cannot cap the address space: %v", err)
	}
	var b bomb
	for _, c := range bombs {
		if c.name == name {
			b = c
		}
	}
	if b.script == "" {
		t.Fatalf("no bomb %q", name)
	}
	store, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kv.New(store, kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// The script also writes, so that it runs in a kv transaction.
	// Bombs over many events test what the state keeps: a longer timeout
	// keeps one slow event on a loaded machine (under -race, a collection
	// of a large heap) from ending them by time instead.
	timeout := bombTimeout
	if b.events > 1 {
		timeout = 10 * time.Second
	}
	p := newProc(t, `kv.set("k", 1) `+b.script+` emit("out")`, Options{Store: conn, Timeout: timeout, MaxMemory: bombMemory})
	for i := range b.events {
		start := time.Now()
		c := process(t, p, ev(`{}`, `{}`))
		took := time.Since(start)
		if took > 2*timeout {
			t.Errorf("event %d took %v, over twice the timeout %v", i, took, timeout)
		}
		errs := c.out["err"]
		if len(errs) == 0 {
			continue
		}
		msg := gjson.GetBytes(errs[0].Meta, "error").Str
		if b.want == "" {
			t.Fatalf("event %d failed: %s", i, msg)
		}
		t.Logf("event %d stopped: %s (after %v)", i, msg, took.Round(time.Millisecond))
		if !strings.Contains(msg, b.want) {
			t.Errorf("error %q does not contain %q", msg, b.want)
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc > 512<<20 {
			t.Errorf("heap %d MiB after the bomb, want under 512 MiB", ms.HeapAlloc>>20)
		}
		return
	}
	if b.want != "" {
		t.Fatalf("none of %d events failed", b.events)
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("all %d events ran, stopped: none, heap %d MiB", b.events, ms.HeapAlloc>>20)
	if ms.HeapAlloc > leakBound {
		t.Errorf("heap %d MiB after %d events, want under %d MiB", ms.HeapAlloc>>20, b.events, leakBound>>20)
	}
}

// TestBombDoesNotStallOtherConnectors: a script stuck in a library call
// holds the store's writer only until its timeout: a command of another
// connector on the same store waits less than twice the timeout, and a
// slice of such scripts does not hold it for one timeout per event.
func TestBombDoesNotStallOtherConnectors(t *testing.T) {
	for _, tt := range []struct {
		name    string
		events  int
		timeout time.Duration
		bound   time.Duration // longest wait of the other command
	}{
		{"one event", 1, bombTimeout, 2 * bombTimeout},
		// Each event runs to its timeout: the slice goes to the store in
		// parts of about one timeout each, and the commands queued
		// meanwhile are committed before the next part starts, so the
		// wait is at most about one timeout, not one per event (five).
		{"slice of 5", 5, 500 * time.Millisecond, 800 * time.Millisecond},
	} {
		for _, optimistic := range []bool{false, true} {
			name := tt.name
			if optimistic {
				// Scripts first run beside the writer; the ones that run
				// in it are deferred the same way, kept results too.
				name += ", optimistic"
			}
			t.Run(name, func(t *testing.T) { testBombStall(t, tt.events, tt.timeout, tt.bound, optimistic) })
		}
	}
}

func testBombStall(t *testing.T, events int, timeout, bound time.Duration, optimistic bool) {
	// Two connectors on one store, as two nodes of a flow sharing a dir.
	pool, dir := pebblestore.NewPool(), t.TempDir()
	open := func(ns string) *kv.Connector {
		b, err := pool.Open(dir, pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := kv.New(b, kv.Options{Namespace: ns, ReclaimInterval: -1, Optimistic: optimistic && ns == "scripts"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close(context.Background()) })
		return c
	}
	scripts, other := open("scripts"), open("other")
	p := newProc(t, `kv.set("k", 1) string.find(string.rep("a", 100), ".-.-.-.-b")`, Options{Store: scripts, Timeout: timeout})
	done := make(chan *collector, 1)
	go func() {
		c := &collector{}
		evs := make([]pipeline.Event, events)
		for i := range evs {
			evs[i] = ev(`{}`, fmt.Sprintf(`{"i":%d}`, i))
		}
		_ = p.Process(context.Background(), evs, c)
		done <- c
	}()
	time.Sleep(100 * time.Millisecond) // the script is in the writer
	start := time.Now()
	errs, err := other.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error {
		return s.Set("x", []byte("1"), 0)
	}})
	waited := time.Since(start)
	if err != nil || errs[0] != nil {
		t.Fatalf("command of the other connector: %v %v", err, errs)
	}
	t.Logf("the other connector's command waited %v", waited.Round(time.Millisecond))
	if waited > bound {
		t.Errorf("the other connector's command waited %v, over %v (the script's timeout is %v)", waited, bound, timeout)
	}
	select {
	case c := <-done:
		if len(c.out["err"]) != events || len(c.out["out"]) != 0 {
			t.Fatalf("outputs: %v, want %d events on err", c.out, events)
		}
		for i, e := range c.out["err"] {
			if gjson.GetBytes(e.Meta, "i").Int() != int64(i) || !strings.Contains(gjson.GetBytes(e.Meta, "error").Str, "(timeout)") {
				t.Errorf("err event %d: meta %s", i, e.Meta)
			}
		}
	case <-time.After(time.Minute):
		t.Fatal("the bomb's event did not finish")
	}
}

// TestSlowBatchSplitIntoCommitGroups: a slice whose scripts hold the
// writer past the timeout is committed in several groups, every event
// run once, in order, with its writes and outputs.
func TestSlowBatchSplitIntoCommitGroups(t *testing.T) {
	for _, tt := range []struct {
		name       string
		pebble     bool
		optimistic bool
	}{
		{"memstore", false, false},
		{"pebble", true, false},
		// Scripts run first beside the writer, their results validated and
		// kept in it (or run again there, the increments conflicting): a
		// deferral in the writer must defer every later event, kept
		// results included.
		{"pebble, optimistic", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var b kv.Backend = memstore.New()
			if tt.pebble {
				s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				b = s
			}
			store, err := kv.New(b, kv.Options{Namespace: "test", ReclaimInterval: -1, Optimistic: tt.optimistic})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = store.Close(context.Background()) })
			p := newProc(t, `
local start = os.clock()
while os.clock() - start < 0.1 do end
local n = kv.increment("n")
kv.set("last", event.data.i)
emit("out", {i = event.data.i, n = n})`, Options{Store: store, Timeout: 500 * time.Millisecond})
			evs := make([]pipeline.Event, 8)
			for i := range evs {
				evs[i] = ev(fmt.Sprintf(`{"i":%d}`, i), `{}`)
			}
			c := process(t, p, evs...)
			if len(c.out["out"]) != len(evs) || len(c.out["err"]) != 0 {
				t.Fatalf("outputs: %v", c.out)
			}
			for i, e := range c.out["out"] {
				if gjson.GetBytes(e.Data, "i").Int() != int64(i) || gjson.GetBytes(e.Data, "n").Int() != int64(i+1) {
					t.Errorf("output %d: %s", i, e.Data)
				}
			}
			if got := storeGet(t, store, "last"); got != "7" {
				t.Errorf("last = %s, want 7", got)
			}
		})
	}
}
