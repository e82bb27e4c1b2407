package partitioned

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/lease"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/pipeline"
)

// repartGroup is testGroup that also deletes the streams of every later
// generation.
func repartGroup(t *testing.T, js jetstream.JetStream, partitions int) string {
	t.Helper()
	group := testGroup(t, js, partitions)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = removeGenerations(ctx, js, group, -1)
	})
	return group
}

// command runs one command through c and returns its single result.
func command(t *testing.T, c *Connector, fields, data string) kvtest.Emitted {
	t.Helper()
	var rec kvtest.Recorder
	if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(kvtest.M(fields), data)}, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Events) != 1 {
		t.Fatalf("%s: %d results: %v", fields, len(rec.Events), kvtest.Strings(rec.Events))
	}
	return rec.Events[0]
}

// mustOut runs a command that must succeed and returns its data.
func mustOut(t *testing.T, c *Connector, fields, data string) string {
	t.Helper()
	e := command(t, c, fields, data)
	if e.Port != pipeline.PortOut {
		t.Fatalf("%s: %s", fields, e)
	}
	return string(e.Event.Data)
}

// state is what the test wrote: the value of every live key, the keys
// with a TTL, the deleted ones, and the idempotent increments.
type state struct {
	values  map[string]string
	ttl     map[string]bool
	deleted []string
	expired []string
	// idem are the increments "c<i>" made with idempotency key "inc-c<i>"
	// (by 5), each once.
	idem []string
}

// writeState writes puts, increments (some with idempotency keys),
// deletions, long and short TTLs through c.
func writeState(t *testing.T, c *Connector) state {
	t.Helper()
	s := state{values: map[string]string{}, ttl: map[string]bool{}}
	for i := range 40 {
		k := fmt.Sprintf("k%d", i)
		mustOut(t, c, fmt.Sprintf(`"put":%q`, k), fmt.Sprintf(`{"n":%d}`, i))
		s.values[k] = fmt.Sprintf(`{"n":%d}`, i)
	}
	for i := range 12 {
		k := fmt.Sprintf("c%d", i)
		for range 3 {
			mustOut(t, c, fmt.Sprintf(`"increment":%q`, k), "")
		}
		mustOut(t, c, fmt.Sprintf(`"increment":%q,"by":5,"idem":"inc-%s"`, k, k), "")
		s.values[k] = "8"
		s.idem = append(s.idem, k)
	}
	for i := range 10 {
		k := fmt.Sprintf("t%d", i)
		mustOut(t, c, fmt.Sprintf(`"put":%q,"ttl":3600`, k), fmt.Sprintf(`"ttl%d"`, i))
		s.values[k] = fmt.Sprintf(`"ttl%d"`, i)
		s.ttl[k] = true
	}
	for i := range 8 {
		k := fmt.Sprintf("d%d", i)
		mustOut(t, c, fmt.Sprintf(`"put":%q`, k), `"gone"`)
		mustOut(t, c, fmt.Sprintf(`"delete":%q`, k), "")
		s.deleted = append(s.deleted, k)
	}
	for i := range 4 {
		k := fmt.Sprintf("e%d", i)
		mustOut(t, c, fmt.Sprintf(`"put":%q,"ttl":0.2`, k), `"short"`)
		s.expired = append(s.expired, k)
	}
	time.Sleep(300 * time.Millisecond) // the e keys expire
	return s
}

// checkState reads every key of s through c: values, remaining TTLs,
// deleted and expired keys absent, and idempotent increments replayed,
// not applied again.
func checkState(t *testing.T, c *Connector, s state) {
	t.Helper()
	for k, want := range s.values {
		if got := mustOut(t, c, fmt.Sprintf(`"get":%q`, k), ""); got != want {
			t.Errorf("get %s = %s, want %s", k, got, want)
		}
		exp := mustOut(t, c, fmt.Sprintf(`"expiry":%q`, k), "")
		ttl := gjson.Get(exp, "ttl_ms")
		switch {
		case s.ttl[k] && (ttl.Type != gjson.Number || ttl.Int() < 3000_000 || ttl.Int() > 3600_000):
			t.Errorf("expiry %s = %s, want about an hour left", k, exp)
		case !s.ttl[k] && ttl.Type != gjson.Null:
			t.Errorf("expiry %s = %s, want none", k, exp)
		}
	}
	for _, k := range append(append([]string(nil), s.deleted...), s.expired...) {
		e := command(t, c, fmt.Sprintf(`"get":%q`, k), "")
		if e.Port != pipeline.PortOut || gjson.GetBytes(e.Event.Meta, "kv.found").Bool() {
			t.Errorf("get %s (deleted or expired) = %s, want not found", k, e)
		}
	}
	for _, k := range s.idem {
		e := command(t, c, fmt.Sprintf(`"increment":%q,"by":5,"idem":"inc-%s"`, k, k), "")
		if e.Port != pipeline.PortOut || string(e.Event.Data) != "8" || !gjson.GetBytes(e.Event.Meta, "kv.replayed").Bool() {
			t.Errorf("redelivered increment of %s = %s, want the recorded 8, replayed", k, e)
		}
	}
}

// checkStores opens the local stores of the n partitions under dir (the
// connector closed) and checks each holds only keys of its partition,
// and that together they hold want.
func checkStores(t *testing.T, dir string, n int, want map[string]string) {
	t.Helper()
	seen := map[string]bool{}
	for p := range n {
		s, err := pebblestore.Open(filepath.Join(dir, "p"+partition.Token(p)), pebblestore.Options{Partition: true})
		if err != nil {
			t.Fatalf("partition %d: %v", p, err)
		}
		err = s.Snapshot().Scan(nil, nil, func(key, _ []byte, _ int64) (bool, error) {
			sk, err := kv.ParseStoreKey(key)
			if err != nil {
				return false, err
			}
			if sk.Kind != kv.StoreKeyData {
				return true, nil
			}
			k := string(sk.Key)
			if q := partition.OfString(k, n); q != p {
				t.Errorf("store of partition %d holds %q, of partition %d", p, k, q)
			}
			seen[k] = true
			return true, nil
		})
		_ = s.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	var missing []string
	for k := range want {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	for k := range seen {
		if _, ok := want[k]; !ok {
			missing = append(missing, "extra "+k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Errorf("stores of %d partitions: %v", n, missing)
	}
}

// repartOptions make streams of one replica, as testOptions do.
func repartOptions(t *testing.T, js jetstream.JetStream, group string, to int) RepartitionOptions {
	return RepartitionOptions{JetStream: js, Group: group, Partitions: to, Replicas: 1, WorkDir: t.TempDir(), StopWait: 10 * time.Second}
}

func repartition(t *testing.T, opts RepartitionOptions) Repartitioned {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Repartition(ctx, opts)
	if err != nil {
		t.Fatalf("Repartition to %d: %v", opts.Partitions, err)
	}
	t.Logf("repartitioned: %+v", res)
	return res
}

// TestRepartition writes state through 4 partitions, stops, re-partitions
// to 6, starts with 6 on the same local directory (its old stores p000 to
// p003 still there): every key, TTL, deletion and idempotency record is
// there, each store holds only its partition's keys, 4 is refused. Then
// the same from 6 down to 3. A dry run changes nothing.
func TestRepartition(t *testing.T) {
	_, js := connect(t)
	group := repartGroup(t, js, 6)
	opts := testOptions(t, js, group, "a", 4)
	opts.Wait = time.Minute
	dir := opts.Dir
	c := open(t, opts)
	s := writeState(t, c)
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	dry := repartOptions(t, js, group, 6)
	dry.DryRun = true
	res := repartition(t, dry)
	if res.Keys != len(s.values) || res.Idempotency != len(s.idem) || len(res.Streams) != 0 {
		t.Errorf("dry run: %+v, want %d keys, %d idempotency records, no stream", res, len(s.values), len(s.idem))
	}

	prev := 4
	for _, n := range []int{6, 3} {
		res := repartition(t, repartOptions(t, js, group, n))
		// The expired keys (with their expiry entries) are left out, once.
		wantExpired := 0
		if prev == 4 {
			wantExpired = 2 * len(s.expired)
		}
		if res.From != prev || res.Keys != len(s.values) || len(res.Streams) != n || res.Expired != wantExpired {
			t.Errorf("%d to %d: %+v, want %d keys, %d streams, %d expired records", prev, n, res, len(s.values), n, wantExpired)
		}
		// Idempotency records go to every new partition q ≡ p mod gcd.
		if want := res.Idempotency * n / gcd(prev, n); res.IdempotencyCopies != want || res.IdempotencyConflicts != 0 {
			t.Errorf("%d to %d: %d idempotency copies (%d conflicts), want %d", prev, n, res.IdempotencyCopies, res.IdempotencyConflicts, want)
		}
		o := testOptions(t, js, group, fmt.Sprintf("b%d", n), n)
		o.Wait, o.Dir = time.Minute, dir
		c := open(t, o)
		checkState(t, c, s)
		if err := c.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		checkStores(t, dir, n, s.values)

		old := testOptions(t, js, group, fmt.Sprintf("old%d", n), prev)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := New(ctx, old)
		cancel()
		if !errors.Is(err, ErrConfigMismatch) {
			t.Errorf("an instance with the old count %d after re-partitioning to %d: %v, want ErrConfigMismatch", prev, n, err)
		}
		prev = n
	}
	// The streams of the earlier generations are gone.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lister := js.StreamNames(ctx)
	for name := range lister.Name() {
		if gen, _, ok := parseChangelogStream(group, name); ok && gen != 2 {
			t.Errorf("stream %s of generation %d left", name, gen)
		}
	}
}

// TestRepartitionRefusesALiveGroup: while an instance runs (its leases
// renewed), Repartition fails with ErrGroupRunning and changes nothing.
func TestRepartitionRefusesALiveGroup(t *testing.T) {
	_, js := connect(t)
	group := repartGroup(t, js, 2)
	opts := testOptions(t, js, group, "live", 2)
	c := open(t, opts)
	waitShares(t, 30*time.Second, []*Connector{c}, 2, 2)
	ro := repartOptions(t, js, group, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Repartition(ctx, ro)
	if !errors.Is(err, ErrGroupRunning) || !strings.Contains(err.Error(), "stop every instance") {
		t.Fatalf("Repartition of a live group: %v, want ErrGroupRunning", err)
	}
	t.Log(err)
	if len(c.Serving()) != 2 {
		t.Errorf("the instance serves %v after the refusal", c.Serving())
	}
}

// TestRepartitionCrashMidway: a failure injected at each step before the
// new count is recorded leaves the old state usable at the old count;
// one after it leaves the new state usable at the new count. The next
// run completes and removes what the stopped one left.
func TestRepartitionCrashMidway(t *testing.T) {
	_, js := connect(t)
	for _, tc := range []struct {
		step     string
		switched bool
	}{
		{"read", false},
		{"written", false},
		{"verified", false},
		{"switched", true},
	} {
		t.Run(tc.step, func(t *testing.T) {
			group := repartGroup(t, js, 6)
			opts := testOptions(t, js, group, "a", 4)
			opts.Wait = time.Minute
			c := open(t, opts)
			want := map[string]string{}
			for i := range 20 {
				k := fmt.Sprintf("k%d", i)
				mustOut(t, c, fmt.Sprintf(`"put":%q`, k), fmt.Sprint(i))
				want[k] = fmt.Sprint(i)
			}
			if err := c.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			crash := errors.New("injected crash")
			ro := repartOptions(t, js, group, 6)
			ro.fail = func(step string) error {
				if step == tc.step {
					return crash
				}
				return nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if _, err := Repartition(ctx, ro); !errors.Is(err, crash) {
				t.Fatalf("Repartition: %v, want the injected crash", err)
			}
			n := 4
			if tc.switched {
				n = 6
			}
			o := testOptions(t, js, group, "after", n)
			o.Wait = time.Minute
			c = open(t, o)
			for k, v := range want {
				if got := mustOut(t, c, fmt.Sprintf(`"get":%q`, k), ""); got != v {
					t.Errorf("after a crash at %s, %d partitions: get %s = %s, want %s", tc.step, n, k, got, v)
				}
			}
			mustOut(t, c, `"put":"later"`, `"written after the crash"`)
			want["later"] = `"written after the crash"`
			if err := c.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			// The next run completes, and removes what was left.
			res := repartition(t, repartOptions(t, js, group, 5))
			if res.Keys != len(want) || len(res.Removed) == 0 {
				t.Errorf("next run: %+v, want %d keys and the streams left behind removed", res, len(want))
			}
			o = testOptions(t, js, group, "final", 5)
			o.Wait = time.Minute
			c = open(t, o)
			for k, v := range want {
				if got := mustOut(t, c, fmt.Sprintf(`"get":%q`, k), ""); got != v {
					t.Errorf("after the next run: get %s = %s, want %s", k, got, v)
				}
			}
		})
	}
}

// TestInstanceStopsServingWhenReconfigured: an instance that started
// before the group's config was replaced (an instance started while
// flowrun repartition ran) gives every partition back within a poll and
// takes none: the state it would serve is no longer the group's.
func TestInstanceStopsServingWhenReconfigured(t *testing.T) {
	_, js := connect(t)
	group := repartGroup(t, js, 2)
	c := open(t, testOptions(t, js, group, "early", 2))
	waitShares(t, 30*time.Second, []*Connector{c}, 2, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tbl, err := lease.Open(ctx, js, LeaseStream(group), "tool", lease.Options{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	old, err := tbl.Value(ctx, configName)
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.Replace(ctx, configName, old, []byte(`{"partitions":3,"hash":"xxh64","generation":1}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the instance gives its partitions back", func() bool { return len(c.Serving()) == 0 })
	time.Sleep(time.Second) // several polls
	if s := c.Serving(); len(s) != 0 {
		t.Errorf("serving %v after the config changed", s)
	}
}
