package lua

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// collector records emitted events by port.
type collector struct {
	mu  sync.Mutex
	out map[string][]pipeline.Event
}

func (c *collector) Emit(port string, ev pipeline.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.out == nil {
		c.out = map[string][]pipeline.Event{}
	}
	c.out[port] = append(c.out[port], ev)
}

func newStore(t *testing.T, now func() time.Time) *kv.Connector {
	t.Helper()
	c, err := kv.New(memstore.New(), kv.Options{Namespace: "test", ReclaimInterval: -1, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func newProc(t *testing.T, script string, opts Options) *Processor {
	t.Helper()
	opts.Script = script
	if opts.Store == nil {
		opts.Store = newStore(t, nil)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func ev(data, meta string) pipeline.Event {
	return pipeline.NewTracker(8, nil, nil).Track(7, pipeline.Event{Data: []byte(data), Meta: []byte(meta)})
}

func process(t *testing.T, p *Processor, evs ...pipeline.Event) *collector {
	t.Helper()
	c := &collector{}
	if err := p.Process(context.Background(), evs, c); err != nil {
		t.Fatalf("Process: %v", err)
	}
	return c
}

// storeGet reads key through a command-equivalent session.
func storeGet(t *testing.T, c *kv.Connector, key string) string {
	t.Helper()
	var got string
	errs, err := c.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error {
		v, found, err := s.Get(key, nil)
		if found {
			got = string(v)
		}
		return err
	}})
	if err != nil || errs[0] != nil {
		t.Fatalf("get %q: %v %v", key, err, errs[0])
	}
	return got
}

func TestConversionRoundTrip(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"a":1,"b":"x"}`, `{"a":1,"b":"x"}`},
		{`[1,2,3]`, `[1,2,3]`},
		{`{"n":1.5,"big":9007199254740992,"neg":-3}`, `{"big":9007199254740992,"n":1.5,"neg":-3}`},
		{`{"huge":1e300}`, `{"huge":1e+300}`},
		{`{"z":null,"t":true,"f":false}`, `{"f":false,"t":true,"z":null}`},
		{`[null,1]`, `[null,1]`},
		{`{}`, `{}`},
		{`"s\u0000\"q"`, `"s\u0000\"q"`},
		{`{"nested":{"a":[{"b":[]}]}}`, `{"nested":{"a":[{"b":{}}]}}`}, // empty table is {}
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p := newProc(t, `emit("out", event.data)`, Options{})
			c := process(t, p, ev(tt.in, `{}`))
			if len(c.out["out"]) != 1 {
				t.Fatalf("outputs: %v", c.out)
			}
			if got := string(c.out["out"][0].Data); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
			if c.out["out"][0].Origin().Index() != 7 {
				t.Errorf("seq not kept")
			}
		})
	}
}

func TestConversionErrors(t *testing.T) {
	tests := []struct{ script, want string }{
		{`emit("out", {f = function() end})`, "function"},
		{`local t = {} t.self = t emit("out", t)`, "nested deeper"},
		{`emit("out", {x = 0/0})`, "finite"},
		{`emit("out", {[true] = 1})`, "key of type boolean"},
		{`emit("nope")`, "unknown port \"nope\" (ports: out, err; declare it in the flow with `ports: [nope]`)"},
		// A library function that does not exist is named, with the
		// closest one and what the table has.
		{`kv.incr("n")`, `script:1: kv.incr does not exist (did you mean "increment"?) (kv has: cas, clear, count, delete, exists, get, get_all, increment, keys, set, touch, ttl)`},
		{`local s = string.uper("a")`, `string.uper does not exist (did you mean "upper"?)`},
		{`log.warning("x")`, `log.warning does not exist (did you mean "warn"?) (log has: debug, error, info, warn)`},
		{`local s = ("a"):trim()`, `string.trim does not exist`},
		{`emit("out", 1, "m")`, "meta must be a table"},
		// Keys that would be written twice (I-JSON: member names unique).
		{`emit("out", {[1] = "a", ["1"] = "b", x = 1})`, `both the number key 1 and the string key "1"`},
		{`emit("out", {a = {[2.5] = 1, ["2.5"] = 2}})`, "both the number key 2.5"},
		{`emit("out", {["a\255"] = 1, ["a\254"] = 2})`, "not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.script, func(t *testing.T) {
			p := newProc(t, tt.script, Options{})
			c := process(t, p, ev(`{}`, `{"correlation":9}`))
			if len(c.out["err"]) != 1 || len(c.out["out"]) != 0 {
				t.Fatalf("outputs: %v", c.out)
			}
			msg := gjson.GetBytes(c.out["err"][0].Meta, "error").Str
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not mention %q", msg, tt.want)
			}
			if gjson.GetBytes(c.out["err"][0].Meta, "correlation").Int() != 9 {
				t.Errorf("correlation lost: %s", c.out["err"][0].Meta)
			}
		})
	}
}

func TestSandbox(t *testing.T) {
	tests := []string{
		`os.execute("true")`,
		`io.write("x")`,
		`dofile("/etc/passwd")`,
		`loadfile("/etc/passwd")`,
		`require("os")`,
		`loadstring("return 1")()`,
		`os.exit(1)`,
		`os.getenv("HOME")`,
		`debug.getinfo(1)`,
	}
	for _, script := range tests {
		t.Run(script, func(t *testing.T) {
			p := newProc(t, script, Options{})
			c := process(t, p, ev(`{}`, `{}`))
			if len(c.out["err"]) != 1 {
				t.Fatalf("%s ran: %v", script, c.out)
			}
			if msg := gjson.GetBytes(c.out["err"][0].Meta, "error").Str; !strings.Contains(msg, "script:1:") {
				t.Errorf("error %q lacks chunk name and line", msg)
			}
		})
	}
}

func TestClock(t *testing.T) {
	at := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	p := newProc(t, `emit("out", {t = os.time(), d = os.date("!%Y-%m-%d %H:%M:%S"), e = os.time({year=2026, month=3, day=4, hour=0})})`,
		Options{Now: func() time.Time { return at }})
	c := process(t, p, ev(`{}`, `{}`))
	d := c.out["out"][0].Data
	if got := gjson.GetBytes(d, "t").Int(); got != at.Unix() {
		t.Errorf("os.time() = %d, want %d", got, at.Unix())
	}
	if got := gjson.GetBytes(d, "d").Str; got != "2026-03-04 05:06:07" {
		t.Errorf("os.date = %q", got)
	}
	if !gjson.GetBytes(d, "e").Exists() {
		t.Errorf("os.time(table) missing: %s", d)
	}
}

func TestLimits(t *testing.T) {
	tests := []struct {
		name, script string
		opts         Options
		want         string
	}{
		{"timeout", `while true do end`, Options{Timeout: 50 * time.Millisecond}, "ran longer than"},
		{"recursion", `local function f(n) return 1 + f(n + 1) end f(1)`, Options{}, "max_call_depth"},
		{"string.rep", `local s = string.rep("x", 1e9)`, Options{}, "string.rep"},
		{"outputs", `for i = 1, 100 do emit("out", {s = string.rep("x", 1000)}) end`, Options{MaxStringBytes: 10000}, "outputs total"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProc(t, `if event.data.ok then emit("out") return end `+tt.script, tt.opts)
			c := process(t, p, ev(`{}`, `{}`), ev(`{"ok":true}`, `{}`))
			if len(c.out["err"]) != 1 {
				t.Fatalf("outputs: %v", c.out)
			}
			msg := gjson.GetBytes(c.out["err"][0].Meta, "error").Str
			if !strings.Contains(msg, tt.want) || !strings.Contains(msg, ErrLimit.Error()) {
				t.Errorf("error %q does not mention %q", msg, tt.want)
			}
			// The next event of the batch still runs: the flow keeps going.
			if len(c.out["out"]) != 1 {
				t.Errorf("event after the runaway one: %v", c.out)
			}
		})
	}
}

// optimisticStore is newStore over a Pebble store with the connector's
// optimistic execution on, so scripts run first outside the writer.
func optimisticStore(t *testing.T, now func() time.Time) *kv.Connector {
	t.Helper()
	ps, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := kv.New(ps, kv.Options{Namespace: "test", ReclaimInterval: -1, Now: now, Optimistic: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// stores are the stores the kv tests run on.
var stores = []struct {
	name string
	open func(*testing.T, func() time.Time) *kv.Connector
}{{"memory", newStore}, {"pebble optimistic", optimisticStore}}

func TestRollback(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { testRollback(t, st.open(t, nil)) })
	}
}

func testRollback(t *testing.T, store *kv.Connector) {
	p := newProc(t, `
kv.set("a", {x = 1})
kv.increment("n", 5)
emit("out")
if event.data.fail then error("boom") end`, Options{Store: store})
	c := process(t, p, ev(`{"fail":true}`, `{}`))
	if len(c.out["out"]) != 0 || len(c.out["err"]) != 1 {
		t.Fatalf("outputs: %v", c.out)
	}
	if msg := gjson.GetBytes(c.out["err"][0].Meta, "error").Str; !strings.Contains(msg, "script:5: boom") {
		t.Errorf("error %q", msg)
	}
	if v := storeGet(t, store, "a"); v != "" {
		t.Errorf("a kept after error: %s", v)
	}
	if v := storeGet(t, store, "n"); v != "" {
		t.Errorf("n kept after error: %s", v)
	}
	c = process(t, p, ev(`{"fail":false}`, `{}`))
	if len(c.out["out"]) != 1 {
		t.Fatalf("outputs: %v", c.out)
	}
	if v := storeGet(t, store, "a"); v != `{"x":1}` {
		t.Errorf("a = %s", v)
	}
}

func TestKVFunctions(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) { testKVFunctions(t, st.open) })
	}
}

func testKVFunctions(t *testing.T, open func(*testing.T, func() time.Time) *kv.Connector) {
	now := time.Unix(1000, 0)
	store := open(t, func() time.Time { return now })
	tests := []struct{ name, script, want string }{
		{"get default", `emit("out", {v = kv.get("missing", 42)})`, `{"v":42}`},
		{"set get", `assert(kv.set("k", {a = {1, 2}})) emit("out", {v = kv.get("k")})`, `{"v":{"a":[1,2]}}`},
		{"exists", `emit("out", {a = kv.exists("k"), b = kv.exists("nope")})`, `{"a":true,"b":false}`},
		{"increment", `kv.increment("c") emit("out", {v = kv.increment("c", 2)})`, `{"v":3}`},
		{"increment float", `emit("out", {v = kv.increment("f", 0.5)})`, `{"v":0.5}`},
		{"increment not number", `local v, err = kv.increment("k") emit("out", {v = v, err = err})`,
			`{"err":"increment \"k\": stored value is {\"a\":[1,2]}: stored value is not a number"}`},
		{"keys count", `emit("out", {keys = kv.keys(), n = kv.count(), nc = kv.count("c")})`, `{"keys":["c","f","k"],"n":3,"nc":1}`},
		{"get_all", `emit("out", kv.get_all("c"))`, `{"c":3}`},
		{"cas ok", `emit("out", {ok = kv.cas("c", 3, 10), v = kv.get("c")})`, `{"ok":true,"v":10}`},
		{"cas absent", `emit("out", {ok = kv.cas("new", nil, "x")})`, `{"ok":true}`},
		{"cas mismatch", `local ok, err = kv.cas("c", 3, 11) emit("out", {ok = ok, err = err})`,
			`{"err":"cas \"c\": expected 3, found 10: compare mismatch"}`},
		{"set null", `local ok, err = kv.set("z", json.null) emit("out", {err = err})`,
			`{"err":"put \"z\": value is null: null value (use delete to remove a key)"}`},
		{"bad key", `local ok, err = kv.set("", 1) emit("out", {err = err})`,
			`{"err":"put \"\": key must be a non-empty string: invalid key"}`},
		{"delete", `emit("out", {ok = kv.delete("new"), e = kv.exists("new")})`, `{"e":false,"ok":true}`},
		{"ttl", `kv.set("t", 1, 10) emit("out", {v = kv.get("t")})`, `{"v":1}`},
		{"clear", `emit("out", {n = kv.clear("f"), left = kv.count()})`, `{"left":3,"n":1}`},
		{"ttl read", `kv.set("t2", 1, 10) kv.set("p", 1) emit("out", {t = kv.ttl("t2"), p = kv.ttl("p"), a = kv.ttl("absent")})`, `{"p":false,"t":10}`},
		{"touch", `emit("out", {a = kv.touch("p", 5), b = kv.touch("absent", 5), t = kv.ttl("p")})`, `{"a":true,"b":false,"t":5}`},
		{"touch bad ttl", `local ok, err = kv.touch("p", 0) emit("out", {err = err})`,
			`{"err":"touch \"p\": \"ttl\" must be a positive number of seconds, got 0: invalid command"}`},
		{"increment ttl", `kv.increment("w", 1, 30) emit("out", {v = kv.increment("w", 1, 60), t = kv.ttl("w")})`, `{"t":30,"v":2}`},
		{"increment refresh", `emit("out", {v = kv.increment("w", 0.5, 60, true), t = kv.ttl("w")})`, `{"t":60,"v":2.5}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProc(t, tt.script, Options{Store: store})
			c := process(t, p, ev(`{}`, `{}`))
			if len(c.out["out"]) != 1 {
				t.Fatalf("outputs: %v", c.out)
			}
			if got := string(c.out["out"][0].Data); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	now = now.Add(11 * time.Second)
	if v := storeGet(t, store, "t"); v != "" {
		t.Errorf("t did not expire: %s", v)
	}
}

func TestPortsAndDrop(t *testing.T) {
	p := newProc(t, `
if event.data.drop then return end
event.meta.seen = true
emit("actions", {kick = event.data.player})
emit("out")`, Options{Ports: []string{"actions"}})
	c := process(t, p, ev(`{"player":"p1"}`, `{"correlation":"c"}`), ev(`{"drop":true}`, `{}`))
	if len(c.out["actions"]) != 1 || len(c.out["out"]) != 1 {
		t.Fatalf("outputs: %v", c.out)
	}
	if got := string(c.out["actions"][0].Data); got != `{"kick":"p1"}` {
		t.Errorf("actions data %s", got)
	}
	if got := string(c.out["out"][0].Meta); got != `{"correlation":"c","seen":true}` {
		t.Errorf("out meta %s", got)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		opts Options
		want error
	}{
		{Options{}, ErrInvalidOption},
		{Options{Script: "x = = 1"}, ErrScript},
		{Options{Script: "x = 1", Ports: []string{"a b"}}, ErrInvalidOption},
	}
	for _, tt := range tests {
		if _, err := New(tt.opts); !errors.Is(err, tt.want) {
			t.Errorf("New(%+v) = %v, want %v", tt.opts, err, tt.want)
		}
	}
}

func TestNoStore(t *testing.T) {
	p, err := New(Options{Script: `kv.get("x")`})
	if err != nil {
		t.Fatal(err)
	}
	c := process(t, p, ev(`{}`, `{}`))
	if msg := gjson.GetBytes(c.out["err"][0].Meta, "error").Str; !strings.Contains(msg, "no store") {
		t.Errorf("error %q", msg)
	}
}

func TestMemoryLimit(t *testing.T) {
	store := newStore(t, nil)
	p := newProc(t, `
if event.data.ok then kv.set("ok", true) emit("out") return end
kv.set("a", 1)
if event.data.garbage then
  -- Allocates far more than the limit in total, but keeps none of it.
  local start = os.clock()
  while os.clock() - start < 0.3 do
    local t = {}
    for j = 1, 100 do t[j] = {j} end
  end
  emit("out")
  return
end
local t = {}
local i = 0
while true do
  i = i + 1
  t[i] = {i, tostring(i)}
end`, Options{Store: store, MaxMemory: 16 << 20, Timeout: 5 * time.Minute})
	c := process(t, p, ev(`{}`, `{}`), ev(`{"ok":true}`, `{}`))
	if len(c.out["err"]) != 1 || len(c.out["out"]) != 1 {
		t.Fatalf("outputs: %v", c.out)
	}
	msg := gjson.GetBytes(c.out["err"][0].Meta, "error").Str
	t.Logf("runaway script: %s", msg)
	if !strings.Contains(msg, "memory limit: the process heap grew by") || !strings.Contains(msg, "limit is 16.0 MiB") {
		t.Errorf("error %q does not report the memory limit", msg)
	}
	if v := storeGet(t, store, "a"); v != "" {
		t.Errorf("a kept after the memory limit stopped the script: %s", v)
	}
	if v := storeGet(t, store, "ok"); v != "true" {
		t.Errorf("the event after the runaway one did not commit: ok = %q", v)
	}

	// The error is the sentinel, within ErrLimit.
	var runErr error
	p.mu.Lock()
	_, err := store.Run(context.Background(), []func(*kv.Session) error{func(s *kv.Session) error {
		_, _, runErr = p.runOne(context.Background(), s, ev(`{}`, `{}`))
		return runErr
	}})
	p.endSlice()
	p.mu.Unlock()
	if err != nil || !errors.Is(runErr, ErrMemoryLimit) || !errors.Is(runErr, ErrLimit) {
		t.Errorf("run error %v (commit %v), want ErrMemoryLimit and ErrLimit", runErr, err)
	}

	// Garbage is not growth: a script allocating many times the limit
	// without keeping it runs to the end.
	c = process(t, p, ev(`{"garbage":true}`, `{}`))
	if len(c.out["out"]) != 1 {
		t.Errorf("garbage-producing script: %v", c.out)
		for _, e := range c.out["err"] {
			t.Logf("%s", e.Meta)
		}
	}
}

// TestEventFields covers the event table: data and meta built on first
// access, passed through unchanged when the script never touches them,
// and nothing carried over from one event to the next.
func TestEventFields(t *testing.T) {
	tests := []struct {
		name, script, data, meta string
		wantData, wantMeta       string
	}{
		{"untouched passes through", `emit("out")`, `{"z":1,"a":1e400}`, `{"m":1}`, `{"z":1,"a":1e400}`, `{"m":1}`},
		{"read is re-encoded", `local _ = event.data.z emit("out")`, `{"z":1,"a":2}`, `{}`, `{"a":2,"z":1}`, `{}`},
		{"changed", `event.data.z = 5 event.meta.k = "v" emit("out")`, `{"z":1}`, ``, `{"z":5}`, `{"k":"v"}`},
		{"replaced before read", `event.data = {n = 1} emit("out")`, `{"z":1}`, `{}`, `{"n":1}`, `{}`},
		{"set to nil before read", `event.data = nil emit("out")`, `{"z":1}`, `{}`, `null`, `{}`},
		{"null payload", `emit("out", {isnil = event.data == nil})`, `null`, `{}`, `{"isnil":true}`, `{}`},
		{"own field not kept", `emit("out", {x = event.x}) event.x = 1`, `{}`, `{}`, `{}`, `{}`},
		{"metatable removed", `emit("out", {d = event.data}) setmetatable(event, nil)`, `{"a":1}`, `{}`, `{"d":{"a":1}}`, `{}`},
		{"malformed data unread", `emit("out", {})`, `{"a":`, `{}`, `{}`, `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProc(t, tt.script, Options{})
			for i := range 2 { // the second event must not see the first's state
				c := process(t, p, ev(tt.data, tt.meta))
				if len(c.out["out"]) != 1 {
					t.Fatalf("event %d: outputs %v", i, c.out)
				}
				got := c.out["out"][0]
				if string(got.DataJSON()) != tt.wantData || string(got.MetaJSON()) != tt.wantMeta {
					t.Errorf("event %d: data %s meta %s, want %s %s", i, got.DataJSON(), got.MetaJSON(), tt.wantData, tt.wantMeta)
				}
			}
		})
	}
	p := newProc(t, `local _ = event.data.a`, Options{})
	c := process(t, p, ev(`{"a":`, `{}`))
	if len(c.out["err"]) != 1 || !strings.Contains(string(c.out["err"][0].Meta), "script:1: event.data: invalid JSON: malformed JSON") {
		t.Errorf("malformed data read: %v", c.out)
	}
}
