package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/redisstream"
)

// kvEntry is entry i of the flow tests: even ones increment one of 100
// counters, odd ones put a value under their own key.
func kvEntry(i int) []any {
	if i%2 == 0 {
		return []any{"data", "{}", "correlation_id", fmt.Sprintf("m-%d", i), "kv", fmt.Sprintf(`{"increment":"c/%d"}`, (i/2)%100)}
	}
	return []any{"data", fmt.Sprintf(`{"i":%d}`, i), "correlation_id", fmt.Sprintf("m-%d", i), "kv", fmt.Sprintf(`{"put":"p/%d"}`, i)}
}

func kvFlow(url, in, out, extra string) string {
	return fmt.Sprintf(`name: rt
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: c1%s }
  store:  { type: kv, dir: state }
  output: { type: redis_streams, mode: write, url: %q, stream: %q }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, extra, url, out)
}

// TestRoundTripThroughKV: 10,000 entries through redis_streams -> kv ->
// redis_streams; every correlation is answered once, with its metadata,
// and nothing is left pending.
func TestRoundTripThroughKV(t *testing.T) {
	url := redisURL(t)
	const n = 10_000
	c := newClient(t, url)
	in, out := unique("rt.in"), unique("rt.out")
	addEntries(t, c, in, n, kvEntry)
	f := startFlow(t, t.TempDir(), kvFlow(url, in, out, ""))
	waitFor(t, 3*time.Minute, "every result appended", func() bool {
		l, err := c.XLen(context.Background(), out).Result()
		return err == nil && l >= n
	})
	f.stop(t)
	seen, total := correlations(t, c, out)
	for i := range n {
		if seen[fmt.Sprintf("m-%d", i)] != 1 {
			t.Fatalf("correlation m-%d answered %d times", i, seen[fmt.Sprintf("m-%d", i)])
		}
	}
	if total != n {
		t.Errorf("%d results, want %d", total, n)
	}
	if p := pending(t, c, in, "g"); p != 0 {
		t.Errorf("%d entries still pending after a graceful stop", p)
	}
	// A result's fields: the kv outcome as JSON, listed in flowrun_json.
	xs, err := c.XRangeN(context.Background(), out, "-", "+", 1).Result()
	must(t, err)
	v := xs[0].Values
	if v["flowrun_json"] != "kv" || !strings.HasPrefix(v["kv"].(string), `{"op":"increment"`) {
		t.Errorf("result fields %v", v)
	}
}

// TestPoisonEntryIsRetriedThenDeadLettered: an entry whose command fails
// is claimed back after retry_delay (not after claim_idle, a minute
// here), delivered max_deliveries times as Redis counts them, then
// appended to the dead-letter stream; the other entries flow.
func TestPoisonEntryIsRetriedThenDeadLettered(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	in, out := unique("poison.in"), unique("poison.out")
	addEntries(t, c, in, 20, func(i int) []any {
		if i == 7 {
			return []any{"data", "{}", "correlation_id", "m-7", "kv", `{"increment":"c/x","by":"many"}`}
		}
		return kvEntry(i)
	})
	start := time.Now()
	f := startFlow(t, t.TempDir(), kvFlow(url, in, out, ", max_deliveries: 3, retry_delay: 50ms, claim_idle: 1m"))
	dead := in + ".dead"
	waitFor(t, 20*time.Second, "a dead letter", func() bool {
		l, err := c.XLen(context.Background(), dead).Result()
		return err == nil && l >= 1
	})
	took := time.Since(start)
	waitFor(t, 10*time.Second, "19 results", func() bool {
		l, _ := c.XLen(context.Background(), out).Result()
		return l >= 19
	})
	f.stop(t)
	v := onlyDeadLetter(t, c, dead)
	if v["correlation_id"] != "m-7" || v["data"] != "{}" || !strings.Contains(v["error"].(string), "delivery 3 of 3") {
		t.Errorf("dead letter %v", v)
	}
	seen, _ := correlations(t, c, out)
	if len(seen) != 19 || seen["m-7"] != 0 {
		t.Errorf("results for %d correlations (m-7: %d), want 19 and 0", len(seen), seen["m-7"])
	}
	if p := pending(t, c, in, "g"); p != 0 {
		t.Errorf("%d entries pending", p)
	}
	t.Logf("dead-lettered after %v", took.Round(time.Millisecond))
}

// TestUnparsableEntryIsDeadLetteredAtOnce: an entry whose payload is not
// JSON, which no retry mends, goes to the dead letter at its first
// delivery (not after max_deliveries), with its fields, the stream and
// consumer that read it, and the reason; the others are handled and
// nothing is left pending.
func TestUnparsableEntryIsDeadLetteredAtOnce(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	in, out := unique("unparsable.in"), unique("unparsable.out")
	addEntries(t, c, in, 10, func(i int) []any {
		if i == 3 {
			return []any{"data", "hello", "correlation_id", "m-3", "kv", `{"put":"k"}`}
		}
		return kvEntry(i)
	})
	f := startFlow(t, t.TempDir(), kvFlow(url, in, out, ", max_deliveries: 3, retry_delay: 50ms, claim_idle: 1m"))
	dead := in + ".dead"
	waitFor(t, 20*time.Second, "a dead letter and 9 results", func() bool {
		d, err := c.XLen(context.Background(), dead).Result()
		o, _ := c.XLen(context.Background(), out).Result()
		return err == nil && d >= 1 && o >= 9
	})
	waitFor(t, 10*time.Second, "nothing pending", func() bool { return pending(t, c, in, "g") == 0 })
	f.stop(t)
	v := onlyDeadLetter(t, c, dead)
	reason, _ := v["error"].(string)
	if v["data"] != "hello" || v["correlation_id"] != "m-3" || v["kv"] != `{"put":"k"}` ||
		v[redisstream.StreamMeta] != in || v[redisstream.ConsumerMeta] != "c1" || !strings.Contains(reason, "delivery 1 of 3") {
		t.Errorf("dead letter %v, want the entry's fields, stream %s, consumer c1, delivery 1 of 3", v, in)
	}
	seen, _ := correlations(t, c, out)
	if len(seen) != 9 || seen["m-3"] != 0 {
		t.Errorf("results for %d correlations (m-3: %d), want 9 and 0", len(seen), seen["m-3"])
	}
}

// TestServerRestartedMidRun: the private server (append-only, fsync
// always) is killed while a flow reads and writes it, and started again on
// the same files: the flow reports itself not ready meanwhile, reconnects
// and finishes, every correlation answered and nothing left pending.
// Entries an XREADGROUP took just before the kill, its reply lost, are
// pending for the consumer unseen: its claimer takes them back once idle
// for claim_idle, 5 s here (the default 30 s, checked every 15 s, left
// little of the 60 s below on a loaded machine).
func TestServerRestartedMidRun(t *testing.T) {
	redisURL(t) // runs where the shared server runs: CI installs redis-server
	const n = 5000
	port, dir := freePort(t), t.TempDir()
	srv := startPrivateServer(t, port, dir)
	c := redis.NewClient(&redis.Options{Addr: srv.addr()})
	defer c.Close()
	in, out := "restart.in", "restart.out"
	addEntries(t, c, in, n, kvEntry)
	f := startFlow(t, t.TempDir(), kvFlow(srv.url(), in, out,
		", window: 64, reconnect_initial: 20ms, reconnect_max: 200ms, claim_idle: 5s")+
		"") // the sink retries with the same defaults
	waitFor(t, 60*time.Second, "a third of the results", func() bool {
		l, _ := c.XLen(context.Background(), out).Result()
		return l >= n/3
	})
	srv.kill()
	health := component.HealthOf(f.res)
	waitFor(t, 10*time.Second, "not ready while the server is down", func() bool {
		return errors.Is(health.Err(), component.ErrNotReady)
	})
	time.Sleep(300 * time.Millisecond)
	srv = startPrivateServer(t, port, dir)
	deadline := time.Now().Add(60 * time.Second)
	for {
		seen, total := correlations(t, c, out)
		if len(seen) >= n {
			break
		}
		if time.Now().After(deadline) {
			p, err := c.XPending(context.Background(), in, "g").Result()
			t.Fatalf("after the restart, %d of %d correlations answered (%d results) in 60s; pending %+v %v; ready: %v",
				len(seen), n, total, p, err, health.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, 10*time.Second, "ready again", func() bool { return health.Err() == nil })
	waitFor(t, 10*time.Second, "nothing pending", func() bool { return pending(t, c, in, "g") == 0 })
	f.stop(t)
	seen, total := correlations(t, c, out)
	for i := range n {
		if seen[fmt.Sprintf("m-%d", i)] == 0 {
			t.Fatalf("correlation m-%d never answered", i)
		}
	}
	t.Logf("%d results for %d correlations (%d published again after the restart)", total, len(seen), total-len(seen))
}

// TestSinkTrimsToMaxLen: max_len keeps the stream at about that many
// entries (XADD MAXLEN ~ trims whole nodes of 100 entries).
func TestSinkTrimsToMaxLen(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	in, out := unique("trim.in"), unique("trim.out")
	addEntries(t, c, in, 2000, func(i int) []any { return []any{"data", fmt.Sprint(i)} })
	f := startFlow(t, t.TempDir(), fmt.Sprintf(`name: trim
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: c1 }
  output: { type: redis_streams, mode: write, url: %q, stream: %q, max_len: 300 }
links:
  - input/out -> output/in
`, url, in, url, out))
	waitFor(t, 30*time.Second, "every entry moved", func() bool { return pending(t, c, in, "g") == 0 && lastIs(c, out, "1999") })
	f.stop(t)
	// The meta of the source's delivery (its stream and consumer) stays
	// with it: a sink of the same bus does not publish it as the output
	// entry's own.
	xs, err := c.XRevRangeN(context.Background(), out, "+", "-", 1).Result()
	must(t, err)
	if v := xs[0].Values; v["data"] != "1999" || v["redis_stream"] != nil || v["redis_consumer"] != nil {
		t.Errorf("output fields %v, want data 1999 without the input's delivery meta", v)
	}
	l, err := c.XLen(context.Background(), out).Result()
	must(t, err)
	if l < 300 || l > 500 {
		t.Errorf("output stream holds %d entries, want about 300", l)
	}
}

// lastIs says whether the last entry of stream has data v.
func lastIs(c *redis.Client, stream, v string) bool {
	xs, err := c.XRevRangeN(context.Background(), stream, "+", "-", 1).Result()
	return err == nil && len(xs) == 1 && xs[0].Values["data"] == v
}

// TestOverdeliveredEntryIsSetAside: an entry the group has already
// delivered more than max_deliveries times to a consumer that never
// acknowledged it (a process that died handling it each time) is
// dead-lettered when that consumer reads it back at start, before the
// flow sees it; Redis's delivery count (XPENDING) is what tells.
func TestOverdeliveredEntryIsSetAside(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	ctx := context.Background()
	in, out := unique("over.in"), unique("over.out")
	must(t, c.XGroupCreateMkStream(ctx, in, "g", "0").Err())
	addEntries(t, c, in, 2, kvEntry)
	// Three deliveries of m-0 to consumer c1, never acknowledged.
	must(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c1", Streams: []string{in, ">"}, Count: 1}).Err())
	for range 2 {
		must(t, c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c1", Streams: []string{in, "0"}, Count: 1}).Err())
	}
	f := startFlow(t, t.TempDir(), kvFlow(url, in, out, ", max_deliveries: 2"))
	waitFor(t, 20*time.Second, "m-1 answered and m-0 set aside", func() bool {
		l, _ := c.XLen(ctx, out).Result()
		d, _ := c.XLen(ctx, in+".dead").Result()
		return l >= 1 && d >= 1
	})
	f.stop(t)
	xs, err := c.XRange(ctx, in+".dead", "-", "+").Result()
	must(t, err)
	if len(xs) != 1 || xs[0].Values["correlation_id"] != "m-0" ||
		!strings.Contains(fmt.Sprint(xs[0].Values["error"]), "delivered 4 times, more than max_deliveries 2") {
		t.Errorf("dead letters %v", xs)
	}
	seen, _ := correlations(t, c, out)
	if seen["m-0"] != 0 || seen["m-1"] != 1 {
		t.Errorf("results %v: want m-1 only", seen)
	}
}

// TestGroupDeletedMidRun: a command failing for good (the group was
// destroyed: NOGROUP) ends the source's session; it connects again,
// creates the group again (from the stream's start, so earlier entries are
// delivered again) and goes on with the entries added since.
func TestGroupDeletedMidRun(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	ctx := context.Background()
	in, out := unique("nogroup.in"), unique("nogroup.out")
	addEntries(t, c, in, 10, kvEntry)
	f := startFlow(t, t.TempDir(), kvFlow(url, in, out, ", reconnect_initial: 10ms, reconnect_max: 50ms"))
	waitFor(t, 20*time.Second, "the first 10 results", func() bool { l, _ := c.XLen(ctx, out).Result(); return l >= 10 })
	must(t, c.XGroupDestroy(ctx, in, "g").Err())
	addEntries(t, c, in, 20, func(i int) []any { return kvEntry(10 + i) })
	waitFor(t, 20*time.Second, "the 20 entries added after", func() bool {
		seen, _ := correlations(t, c, out)
		return len(seen) >= 30
	})
	f.stop(t)
}

// TestSlowEntryIsNotDeliveredTwice: an entry still being handled when it
// has been idle for claim_idle is claimed by its own consumer's claimer
// too, which must not hand it out a second time.
func TestSlowEntryIsNotDeliveredTwice(t *testing.T) {
	url := redisURL(t)
	c := newClient(t, url)
	ctx := context.Background()
	in, out := unique("slow.in"), unique("slow.out")
	addEntries(t, c, in, 1, func(int) []any { return []any{"data", "{}", "correlation_id", "m-0"} })
	f := startFlow(t, t.TempDir(), fmt.Sprintf(`name: slow
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: c1, claim_idle: 20ms }
  work:   { type: lua, script: "local n = 0 for i = 1, 5000000 do n = n + 1 end emit('out')", timeout: 1m }
  output: { type: redis_streams, mode: write, url: %q, stream: %q }
links:
  - input/out -> work/in
  - work/out -> output/in
`, url, in, url, out))
	start := time.Now()
	waitFor(t, 60*time.Second, "the result", func() bool { l, _ := c.XLen(ctx, out).Result(); return l >= 1 })
	took := time.Since(start)
	waitFor(t, 10*time.Second, "nothing pending", func() bool { return pending(t, c, in, "g") == 0 })
	time.Sleep(100 * time.Millisecond)
	delivered := uint64(0)
	for _, pc := range f.built.Graph.Counts() {
		if pc.Node == "input" && pc.Port == "out" {
			delivered = pc.Events
		}
	}
	f.stop(t)
	if delivered != 1 {
		t.Errorf("the entry was delivered %d times, want 1", delivered)
	}
	if took < 100*time.Millisecond {
		t.Errorf("the entry took %v, not long past claim_idle: the test shows nothing", took)
	}
	t.Logf("the entry took %v", took.Round(time.Millisecond))
}

// TestSlowEntryStaysWithItsConsumer: an entry that takes longer than
// claim_idle stays with the consumer handling it (which keeps resetting
// its idle time); another live consumer of the group does not take it
// over and handle it a second time.
func TestSlowEntryStaysWithItsConsumer(t *testing.T) {
	url := redisURL(t)
	if raceEnabled {
		t.Skip("times a Lua loop against claim_idle; the race detector makes Lua ten times slower")
	}
	c := newClient(t, url)
	ctx := context.Background()
	in, out := unique("busy.in"), unique("busy.out")
	flow := func(consumer string) string {
		return fmt.Sprintf(`name: busy
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: %s, claim_idle: 500ms }
  work:   { type: lua, script: "local n = 0 for i = 1, 12000000 do n = n + 1 end emit('out')", timeout: 1m }
  output: { type: redis_streams, mode: write, url: %q, stream: %q }
links:
  - input/out -> work/in
  - work/out -> output/in
`, url, in, consumer, url, out)
	}
	a := startFlow(t, t.TempDir(), flow("a"))
	start := time.Now()
	addEntries(t, c, in, 1, func(int) []any { return []any{"data", "{}", "correlation_id", "m-0"} })
	waitFor(t, 10*time.Second, "a holds the entry", func() bool { return pending(t, c, in, "g") == 1 })
	b := startFlow(t, t.TempDir(), flow("b"))
	waitFor(t, 60*time.Second, "the result", func() bool { l, _ := c.XLen(ctx, out).Result(); return l >= 1 })
	took := time.Since(start)
	waitFor(t, 10*time.Second, "nothing pending", func() bool { return pending(t, c, in, "g") == 0 })
	time.Sleep(100 * time.Millisecond)
	delivered := func(f *runningFlow) (n uint64) {
		for _, pc := range f.built.Graph.Counts() {
			if pc.Node == "input" && pc.Port == "out" {
				n = pc.Events
			}
		}
		return n
	}
	da, db := delivered(a), delivered(b)
	a.stop(t)
	b.stop(t)
	if da != 1 || db != 0 {
		t.Errorf("delivered %d times to a and %d to b, want 1 and 0", da, db)
	}
	if took < time.Second {
		t.Errorf("the entry took %v, not long past claim_idle: the test shows nothing", took)
	}
	t.Logf("the entry took %v", took.Round(time.Millisecond))
}

// onlyDeadLetter returns the fields of the one entry of the dead-letter
// stream dead, and fails t unless it holds exactly one.
func onlyDeadLetter(t *testing.T, c *redis.Client, dead string) map[string]any {
	t.Helper()
	xs, err := c.XRange(context.Background(), dead, "-", "+").Result()
	must(t, err)
	if len(xs) != 1 {
		t.Fatalf("%d dead letters, want 1", len(xs))
	}
	return xs[0].Values
}
