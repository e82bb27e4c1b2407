package redisstream_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/internal/proctest"
)

// TestKillAndRestart runs `flowrun run` on redis_streams -> kv ->
// redis_streams over 10,000 entries, SIGKILLs it midway and starts it
// again (same consumer: it reads back what it had not acknowledged, not
// waiting for claim_idle, ten minutes here). No
// entry is lost; with idem_from: message_id the counters are exact,
// without it they hold at least their count (the duplicates are logged).
func TestKillAndRestart(t *testing.T) {
	url := redisURL(t)
	if testing.Short() {
		t.Skip("builds flowrun and moves 10,000 entries twice")
	}
	const n, counters = 10_000, 100
	for _, tc := range []struct {
		name  string
		idem  bool
		store string
	}{
		{name: "idempotent", idem: true, store: "{ type: kv, dir: state, namespace: load, idem_from: message_id }"},
		{name: "at least once", store: "{ type: kv, dir: state, namespace: load }"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := buildFlowrun(t)
			c := newClient(t, url)
			dir := t.TempDir()
			in, out := unique("kill.in"), unique("kill.out")
			flow := fmt.Sprintf(`name: kill
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: c1, window: 256, claim_idle: 10m }
  store:  %s
  output: { type: redis_streams, mode: write, url: %q, stream: %q }
links:
  - input/out -> store/in
  - store/out -> output/in
`, url, in, tc.store, url, out)
			must(t, os.WriteFile(filepath.Join(dir, "flow.yaml"), []byte(flow), 0o644))
			addEntries(t, c, in, n, kvEntry)
			ctx := context.Background()

			first := startProcess(t, bin, dir, "flow.yaml")
			waitFor(t, 60*time.Second, "a third of the results", func() bool {
				l, _ := c.XLen(ctx, out).Result()
				return l >= n/3
			})
			must(t, first.cmd.Process.Signal(syscall.SIGKILL))
			_ = first.cmd.Wait()
			atKill, _ := c.XLen(ctx, out).Result()
			inFlight := pending(t, c, in, "g")
			t.Logf("SIGKILL with %d results out and %d entries pending", atKill, inFlight)
			if atKill >= n {
				t.Fatalf("killed after the end: %d results", atKill)
			}

			second := startProcess(t, bin, dir, "flow.yaml")
			waitFor(t, 60*time.Second, "every correlation answered", func() bool {
				seen, _ := correlations(t, c, out)
				return len(seen) >= n
			})
			waitFor(t, 10*time.Second, "nothing pending", func() bool { return pending(t, c, in, "g") == 0 })
			must(t, second.cmd.Process.Signal(syscall.SIGTERM))
			if err := second.cmd.Wait(); err != nil {
				t.Fatalf("second run after SIGTERM: %v\n%s", err, tail(second.stderr.String(), 2000))
			}
			seen, total := correlations(t, c, out)
			t.Logf("%d results for %d correlations: %d published again", total, len(seen), total-len(seen))

			// The store: puts exact; counters exact with idempotency keys,
			// at least their count without.
			res := proctest.Replay(t, bin, dir, `name: verify
connectors:
  queries: { type: stdin }
  store:   { type: kv, dir: state, namespace: load }
  show:    { type: stdout }
links:
  - queries/out -> store/in
  - store/out -> show/in
  - store/err -> show/in
`,
				`{"meta":{"kv":{"get_all":"c/"}}}`+"\n"+`{"meta":{"kv":{"get_all":"p/"}}}`+"\n")
			lines := bytes.Split(bytes.TrimSpace(res), []byte("\n"))
			if len(lines) != 2 {
				t.Fatalf("verify output: %s", tail(string(res), 500))
			}
			cs, puts := gjson.GetBytes(lines[0], "data"), gjson.GetBytes(lines[1], "data")
			per, extra := n/2/counters, 0
			for k := range counters {
				v := int(cs.Get(fmt.Sprintf("c/%d", k)).Int())
				if v < per || tc.idem && v != per {
					t.Errorf("counter c/%d = %d, want %d", k, v, per)
				}
				extra += v - per
			}
			nputs := 0
			puts.ForEach(func(k, v gjson.Result) bool {
				nputs++
				i, _ := strconv.Atoi(strings.TrimPrefix(k.String(), "p/"))
				if v.Get("i").Int() != int64(i) {
					t.Errorf("put %s = %s", k, v.Raw)
				}
				return true
			})
			if nputs != n/2 {
				t.Errorf("%d puts, want %d", nputs, n/2)
			}
			t.Logf("counters hold %d increments applied twice", extra)
		})
	}
}

// TestDeadConsumerIsClaimed: consumer a of a group takes entries and is
// SIGKILLed while handling them (a Lua loop that never ends); consumer b,
// another process in the group, takes them over once they have been idle
// for claim_idle and completes them, with the entry IDs as message ids.
func TestDeadConsumerIsClaimed(t *testing.T) {
	url := redisURL(t)
	if testing.Short() {
		t.Skip("builds flowrun")
	}
	bin := buildFlowrun(t)
	c := newClient(t, url)
	ctx := context.Background()
	dir := t.TempDir()
	in, out := unique("dead.in"), unique("dead.out")
	const window, n = 8, 20
	flowA := fmt.Sprintf(`name: a
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: a, window: %d, claim_idle: 1s }
  work:   { type: lua, script: "while true do end", timeout: 10m }
  output: { type: redis_streams, mode: write, url: %q, stream: %q }
links:
  - input/out -> work/in
  - work/out -> output/in
`, url, in, window, url, out)
	flowB := fmt.Sprintf(`name: b
connectors:
  input:  { type: redis_streams, mode: read, url: %q, stream: %q, group: g, consumer: b, window: %d, claim_idle: 1s }
  ids:    { type: kv, dir: state, idem_from: message_id }
  output: { type: redis_streams, mode: write, url: %q, stream: %q }
pipelines:
  mark:
    - set:
        data: '{"id": meta.message_id}'
        meta.kv: '{"put": "seen/" + meta.correlation}'
links:
  - input/out -> mark/in
  - mark/out -> ids/in
  - ids/out -> output/in
`, url, in, window, url, out)
	must(t, os.WriteFile(filepath.Join(dir, "a.yaml"), []byte(flowA), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "b.yaml"), []byte(flowB), 0o644))
	addEntries(t, c, in, window, func(i int) []any { return []any{"data", "{}", "correlation_id", fmt.Sprintf("m-%d", i)} })

	a := startProcess(t, bin, dir, "a.yaml")
	waitFor(t, 30*time.Second, "consumer a holds the window", func() bool { return pending(t, c, in, "g") == window })
	time.Sleep(200 * time.Millisecond) // let them reach the script
	must(t, a.cmd.Process.Signal(syscall.SIGKILL))
	_ = a.cmd.Wait()
	// a resets its entries' idle time while it lives (every claim_idle/2),
	// so they are claimable claim_idle after its last reset, which may
	// come before the kill: read it from the server's idle times.
	held, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: in, Group: "g", Start: "-", End: "+", Count: 100}).Result()
	must(t, err)
	var lastTouch time.Time
	now := time.Now()
	for _, p := range held {
		if at := now.Add(-p.Idle); p.Consumer == "a" && at.After(lastTouch) {
			lastTouch = at
		}
	}
	if len(held) != window || lastTouch.IsZero() {
		t.Fatalf("after the kill, %d entries pending (%+v), want a's %d", len(held), held, window)
	}
	ids, err := c.XRange(ctx, in, "-", "+").Result()
	must(t, err)
	addEntries(t, c, in, n-window, func(i int) []any { return []any{"data", "{}", "correlation_id", fmt.Sprintf("m-%d", window+i)} })

	b := startProcess(t, bin, dir, "b.yaml")
	waitFor(t, 30*time.Second, "every correlation answered", func() bool {
		seen, _ := correlations(t, c, out)
		return len(seen) >= n
	})
	took := time.Since(lastTouch)
	waitFor(t, 10*time.Second, "nothing pending", func() bool { return pending(t, c, in, "g") == 0 })
	must(t, b.cmd.Process.Signal(syscall.SIGTERM))
	if err := b.cmd.Wait(); err != nil {
		t.Fatalf("b after SIGTERM: %v\n%s", err, tail(b.stderr.String(), 2000))
	}
	if !strings.Contains(b.stderr.String(), "claimed idle entries") {
		t.Errorf("b did not log the claim:\n%s", tail(b.stderr.String(), 2000))
	}
	if took < time.Second {
		t.Errorf("a's entries completed %v after a last touched them, before claim_idle", took)
	}
	// The message id of each of a's entries, as b stored it, is its entry
	// ID: the same as at the first delivery.
	got, err := c.XRange(ctx, out, "-", "+").Result()
	must(t, err)
	idOf := map[string]string{}
	for _, r := range got {
		idOf[fmt.Sprint(r.Values["correlation_id"])] = gjson.Get(fmt.Sprint(r.Values["data"]), "id").String()
	}
	for i, x := range ids[:window] {
		if id := idOf[fmt.Sprintf("m-%d", i)]; id != x.ID {
			t.Errorf("m-%d: message_id %q, want the entry ID %s", i, id, x.ID)
		}
	}
	t.Logf("a's %d entries completed by b %v after a last touched them (claim_idle 1s)", window, took.Round(time.Millisecond))
}
