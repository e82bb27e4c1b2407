package etcdstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/pipeline"
)

// endpoints returns the cluster named by FLOWRUN_ETCD_ENDPOINTS
// (scripts/etcd-cluster.sh start prints it). Under CI a missing or
// unreachable cluster fails the test; elsewhere the test is skipped.
func endpoints(t *testing.T) []string {
	t.Helper()
	env := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	miss := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s (CI needs the cluster: scripts/etcd-cluster.sh start)", msg)
		}
		t.Skipf("%s; start one with scripts/etcd-cluster.sh start and export FLOWRUN_ETCD_ENDPOINTS", msg)
	}
	if env == "" {
		miss("FLOWRUN_ETCD_ENDPOINTS is not set")
	}
	eps := strings.Split(env, ",")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := Open(ctx, Options{Endpoints: eps, DialTimeout: 3 * time.Second})
	if err != nil {
		miss("etcd at %s is unreachable: %v", env, err)
	}
	_ = s.Close()
	return eps
}

func randomPrefix(t *testing.T) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "flowrun-test/" + hex.EncodeToString(b) + "/"
}

// open opens a store under prefix with etcd's default limits (whatever
// the cluster allows) and removes the prefix's keys when the test ends.
func open(t *testing.T, eps []string, prefix string) *Store {
	t.Helper()
	return openOpts(t, Options{Endpoints: eps, Prefix: prefix})
}

func openOpts(t *testing.T, opts Options) *Store {
	t.Helper()
	eps, prefix := opts.Endpoints, opts.Prefix
	s, err := Open(t.Context(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if prefix != "" {
		// Never wipe the whole cluster: other packages' tests share it
		// and run at the same time. A test without a prefix wipes its own
		// keys.
		t.Cleanup(func() { wipe(t, eps, prefix) })
	}
	return s
}

func wipe(t *testing.T, eps []string, prefix string) {
	if prefix == "" {
		t.Errorf("wipe: refusing to delete every key of the shared cluster")
		return
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 3 * time.Second})
	if err != nil {
		t.Errorf("wipe: %v", err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
		t.Errorf("wipe %s: %v", prefix, err)
	}
}

func TestConformance(t *testing.T) {
	eps := endpoints(t)
	kvtest.Run(t, func(t *testing.T) kv.Backend { return open(t, eps, randomPrefix(t)) })
}

func TestPersistence(t *testing.T) {
	eps := endpoints(t)
	base := randomPrefix(t)
	t.Cleanup(func() { wipe(t, eps, base) })
	kvtest.RunPersistent(t, func(t *testing.T, dir string) kv.Backend {
		// The directory names the store: reopening it reopens the prefix.
		s, err := Open(t.Context(), Options{Endpoints: eps, Prefix: base + dir + "/"})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

// update runs fns in one Update and fails the test on a commit error.
func update(t *testing.T, s *Store, fns ...kv.TxnFunc) []error {
	t.Helper()
	errs := make([]error, len(fns))
	if err := s.Update(t.Context(), fns, errs); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return errs
}

func dump(t *testing.T, s *Store) string {
	t.Helper()
	var out []string
	errs := update(t, s, func(tx kv.Txn) error {
		return tx.Scan([]byte{}, nil, func(k, v []byte, exp int64) (bool, error) {
			out = append(out, fmt.Sprintf("%s=%s@%d", k, v, exp))
			return true, nil
		})
	})
	if errs[0] != nil {
		t.Fatalf("scan: %v", errs[0])
	}
	return strings.Join(out, " ")
}

func setFn(k, v string, exp int64) kv.TxnFunc {
	return func(tx kv.Txn) error { return tx.Set([]byte(k), []byte(v), exp) }
}

// Overlay and etcd data merge: a fn sees its own writes and range
// deletions, and etcd receives them without overlapping put and delete.
func TestOverlay(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	update(t, s, setFn("a", "1", 0), setFn("b", "2", 0), setFn("c", "3", 7), setFn("e", "5", 0))
	var seen string
	errs := update(t, s, func(tx kv.Txn) error {
		if err := tx.Set([]byte("d"), []byte("4"), 0); err != nil {
			return err
		}
		if err := tx.DeleteRange([]byte("a"), []byte("d\x00")); err != nil {
			return err
		}
		for _, k := range []string{"b", "ab"} {
			if err := tx.Set([]byte(k), []byte("new-"+k), 9); err != nil {
				return err
			}
		}
		if _, _, found, err := tx.Get([]byte("c")); err != nil || found {
			return fmt.Errorf("c after DeleteRange: found %v, err %v", found, err)
		}
		var keys []string
		err := tx.Scan([]byte("a"), nil, func(k, v []byte, exp int64) (bool, error) {
			keys = append(keys, fmt.Sprintf("%s=%s@%d", k, v, exp))
			return true, nil
		})
		seen = strings.Join(keys, " ")
		return err
	})
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	want := "ab=new-ab@9 b=new-b@9 e=5@0"
	if seen != want {
		t.Errorf("scan inside the fn: %q, want %q", seen, want)
	}
	if got := dump(t, s); got != want {
		t.Errorf("after commit: %q, want %q", got, want)
	}
}

// With no Prefix, open-ended ranges reach the end of etcd's key space. The
// fn fails on purpose, so nothing is written to the shared cluster.
func TestNoPrefix(t *testing.T) {
	eps := endpoints(t)
	p := randomPrefix(t)
	s := openOpts(t, Options{Endpoints: eps})
	defer s.Close()
	t.Cleanup(func() { wipe(t, eps, p) })
	errs := update(t, s, setFn(p+"a", "1", 0), setFn(p+"b", "2", 0))
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	done := errors.New("done")
	var seen []string
	errs = update(t, s, func(tx kv.Txn) error {
		if err := tx.Set([]byte(p+"c"), []byte("3"), 0); err != nil {
			return err
		}
		// Bounded: a deletion to the end of the key space would hide every
		// later key of the shared cluster, and the scan below would read
		// them all before it ended.
		if err := tx.DeleteRange([]byte(p+"b"), []byte(p+"d")); err != nil {
			return err
		}
		if err := tx.Set([]byte(p+"d"), []byte("4"), 0); err != nil {
			return err
		}
		err := tx.Scan([]byte(p), nil, func(k, v []byte, exp int64) (bool, error) {
			if !strings.HasPrefix(string(k), p) {
				return false, nil
			}
			seen = append(seen, strings.TrimPrefix(string(k), p)+"="+string(v))
			return true, nil
		})
		if err != nil {
			return err
		}
		return done
	})
	if !errors.Is(errs[0], done) {
		t.Fatal(errs[0])
	}
	if got, want := strings.Join(seen, " "), "a=1 d=4"; got != want {
		t.Errorf("scan: %q, want %q", got, want)
	}
	// Nothing of the failed fn reached etcd.
	var stored []string
	update(t, s, func(tx kv.Txn) error {
		return tx.Scan([]byte(p), []byte(p+"~"), func(k, v []byte, exp int64) (bool, error) {
			stored = append(stored, string(k[len(p):]))
			return true, nil
		})
	})
	if got := strings.Join(stored, " "); got != "a b" {
		t.Errorf("stored keys %q, want \"a b\"", got)
	}
}

// A failing fn writes nothing; fns around it commit.
func TestFailingFnWritesNothing(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	boom := errors.New("boom")
	errs := update(t, s,
		setFn("a", "1", 0),
		func(tx kv.Txn) error {
			_ = tx.Set([]byte("a"), []byte("bad"), 0)
			_ = tx.DeleteRange([]byte(""), nil)
			_ = tx.Set([]byte("x"), []byte("bad"), 0)
			return boom
		},
		func(tx kv.Txn) error { panic("oops") },
		setFn("b", "2", 0),
	)
	if errs[0] != nil || !errors.Is(errs[1], boom) || errs[2] == nil || errs[3] != nil {
		t.Fatalf("errs = %v", errs)
	}
	if got, want := dump(t, s), "a=1@0 b=2@0"; got != want {
		t.Errorf("store: %q, want %q", got, want)
	}
}

// Past etcd's limits a fn fails with ErrTxnTooLarge and writes nothing,
// while many small fns in one call are split over several transactions.
func TestLimits(t *testing.T) {
	eps := endpoints(t)
	s := openOpts(t, Options{Endpoints: eps, Prefix: randomPrefix(t)}) // etcd's default limits
	defer s.Close()
	many := func(n int, val string) kv.TxnFunc {
		return func(tx kv.Txn) error {
			for i := range n {
				if err := tx.Set([]byte(fmt.Sprintf("big%04d", i)), []byte(val), 0); err != nil {
					return err
				}
			}
			return nil
		}
	}
	huge := strings.Repeat("x", 2<<20)
	errs := update(t, s, many(129, "v"), many(1, huge), many(128, "v"))
	if !errors.Is(errs[0], ErrTxnTooLarge) || !errors.Is(errs[1], ErrTxnTooLarge) || errs[2] != nil {
		t.Fatalf("errs = %v", errs)
	}
	if got := strings.Count(dump(t, s), "=v@0"); got != 128 {
		t.Errorf("%d keys stored, want 128", got)
	}
	fns := make([]kv.TxnFunc, 300)
	for i := range fns {
		fns[i] = setFn(fmt.Sprintf("k%03d", i), strconv.Itoa(i), 0)
	}
	for i, err := range update(t, s, fns...) {
		if err != nil {
			t.Fatalf("fn %d: %v", i, err)
		}
	}
	if got := strings.Count(dump(t, s), " k"); got != 300 {
		t.Errorf("%d small keys stored, want 300", got)
	}
}

// Many read-modify-writes of distinct keys in one call are split so that
// neither the compares nor the writes of a transaction pass etcd's default
// limit, and every fn sees the writes of those before it.
func TestManyReadsSplit(t *testing.T) {
	eps := endpoints(t)
	s := openOpts(t, Options{Endpoints: eps, Prefix: randomPrefix(t)}) // etcd's default limits
	defer s.Close()
	commits := 0
	s.commitHook = func(cmps, ops int) {
		commits++
		if cmps > s.opts.MaxTxnOps || ops > s.opts.MaxTxnOps {
			t.Errorf("transaction with %d compares and %d writes, limit %d", cmps, ops, s.opts.MaxTxnOps)
		}
	}
	const n = 300
	fns := make([]kv.TxnFunc, n)
	for i := range fns {
		fns[i] = func(tx kv.Txn) error {
			key := []byte(fmt.Sprintf("c%03d", i%150))
			v, _, _, err := tx.Get(key)
			if err != nil {
				return err
			}
			c, _ := strconv.Atoi(string(v))
			return tx.Set(key, []byte(strconv.Itoa(c+1)), 0)
		}
	}
	for i, err := range update(t, s, fns...) {
		if err != nil {
			t.Fatalf("fn %d: %v", i, err)
		}
	}
	if commits < 3 {
		t.Errorf("%d transactions for 300 writes, want at least 3", commits)
	}
	if got := strings.Count(dump(t, s), "=2@0"); got != 150 {
		t.Errorf("%d counters at 2, want 150", got)
	}
}

// A write by another process between a fn's read and its commit makes the
// fn run again on the new data, for point reads and for scanned ranges.
func TestConflictRetries(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	a := open(t, eps, prefix)
	defer a.Close()
	b := open(t, eps, prefix)
	defer b.Close()
	update(t, a, setFn("n", "0", 0))
	for _, tc := range []struct {
		name string
		read func(tx kv.Txn) (string, error)
		race kv.TxnFunc
		want string
	}{
		{"get", func(tx kv.Txn) (string, error) {
			v, _, _, err := tx.Get([]byte("n"))
			return string(v), err
		}, setFn("n", "5", 0), "5"},
		{"get absent", func(tx kv.Txn) (string, error) {
			v, _, _, err := tx.Get([]byte("m"))
			return string(v), err
		}, setFn("m", "6", 0), "6"},
		{"scan insert", func(tx kv.Txn) (string, error) {
			c := 0
			err := tx.Scan([]byte("r/"), []byte("r0"), func(k, v []byte, exp int64) (bool, error) { c++; return true, nil })
			return strconv.Itoa(c), err
		}, setFn("r/1", "x", 0), "1"},
		{"scan delete", func(tx kv.Txn) (string, error) {
			c := 0
			err := tx.Scan([]byte("r/"), []byte("r0"), func(k, v []byte, exp int64) (bool, error) { c++; return true, nil })
			return strconv.Itoa(c), err
		}, func(tx kv.Txn) error { return tx.Delete([]byte("r/1")) }, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runs := 0
			errs := update(t, a, func(tx kv.Txn) error {
				runs++
				v, err := tc.read(tx)
				if err != nil {
					return err
				}
				if runs == 1 {
					// Another process writes after this read.
					update(t, b, tc.race)
				}
				return tx.Set([]byte("out/"+tc.name), []byte(v), 0)
			})
			if errs[0] != nil {
				t.Fatal(errs[0])
			}
			if runs != 2 {
				t.Errorf("fn ran %d times, want 2", runs)
			}
			if got := dump(t, a); !strings.Contains(got, "out/"+tc.name+"="+tc.want+"@") {
				t.Errorf("store %q: want out/%s=%s", got, tc.name, tc.want)
			}
		})
	}
}

// Two stores on one prefix stand for two flowrun processes: concurrent
// increments through their kv connectors end exact.
func TestTwoProcessesIncrement(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	const perProc, batch = 600, 20
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	for p := range 2 {
		s := open(t, eps, prefix)
		c, err := kv.New(s, kv.Options{Namespace: "ctr", ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close(context.Background())
			for done := 0; done < perProc; done += batch {
				evs := make([]pipeline.Event, batch)
				for i := range evs {
					key := "hits"
					if i%2 == 1 {
						key = "k" + strconv.Itoa(p)
					}
					evs[i] = kvtest.Event(kvtest.M(`"increment":"`+key+`"`), ``)
				}
				var rec kvtest.Recorder
				if err := c.Process(context.Background(), evs, &rec); err != nil {
					errc <- err
					return
				}
				for _, o := range kvtest.Strings(rec.Events) {
					if !strings.HasPrefix(o, "out ") {
						errc <- fmt.Errorf("process %d: %s", p, o)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	h := kvtest.NewHarness(t, open(t, eps, prefix))
	for key, want := range map[string]string{"hits": strconv.Itoa(perProc), "k0": strconv.Itoa(perProc / 2), "k1": strconv.Itoa(perProc / 2)} {
		got := h.Do("ctr", kvtest.M(`"get":"`+key+`"`), "")
		if len(got) != 1 || string(got[0].Event.Data) != want {
			t.Errorf("%s = %s, want %s", key, kvtest.Strings(got), want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(t.Context(), Options{}); !errors.Is(err, ErrNoEndpoints) {
		t.Errorf("no endpoints: %v, want ErrNoEndpoints", err)
	}
	_, err := Open(t.Context(), Options{Endpoints: []string{"127.0.0.1:1"}, CAFile: "/nonexistent/ca.pem"})
	if err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Errorf("bad CA file: %v", err)
	}
	_, err = Open(t.Context(), Options{Endpoints: []string{"127.0.0.1:1"}, DialTimeout: 300 * time.Millisecond})
	if err == nil {
		t.Error("unreachable endpoint: no error")
	}
}

func TestRecordCodec(t *testing.T) {
	for _, tc := range []struct {
		v   string
		exp int64
	}{{"", 0}, {"x", 0}, {"hello", 1234567890123}} {
		v, exp, err := decodeRecord(encodeRecord([]byte(tc.v), tc.exp))
		if err != nil || string(v) != tc.v || exp != tc.exp {
			t.Errorf("round trip %q@%d: %q@%d %v", tc.v, tc.exp, v, exp, err)
		}
	}
	for _, bad := range []string{"", "\x01abc", "\x07"} {
		if _, _, err := decodeRecord([]byte(bad)); !errors.Is(err, ErrCorruptRecord) {
			t.Errorf("decode %q: %v, want ErrCorruptRecord", bad, err)
		}
	}
}

// Three stores on one prefix stand for three flowrun processes sharing
// work, with idempotency keys and batches large enough to split into
// several etcd transactions: every increment applies once, and each
// running total of a key is answered to exactly one command.
func TestProcessesIncrementWithIdem(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	const procs, perProc, batch, keys = 3, 1200, 128, 10
	var wg sync.WaitGroup
	errc := make(chan error, procs)
	totals := make([][]string, procs) // "key=T" answered to each process
	for p := range procs {
		s := open(t, eps, prefix)
		c, err := kv.New(s, kv.Options{Namespace: "ctr", ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close(context.Background())
			for done := 0; done < perProc; done += batch {
				evs := make([]pipeline.Event, min(batch, perProc-done))
				for i := range evs {
					n := done + i
					evs[i] = kvtest.Event(kvtest.M(fmt.Sprintf(`"increment":"k%d","idem":"p%d-%d"`, n%keys, p, n)), ``)
				}
				var rec kvtest.Recorder
				if err := c.Process(context.Background(), evs, &rec); err != nil {
					errc <- err
					return
				}
				for _, o := range rec.Events {
					if o.Port != "out" {
						errc <- fmt.Errorf("process %d: %s", p, o)
						return
					}
					totals[p] = append(totals[p], gjson.GetBytes(o.Event.Meta, "kv.key").String()+"="+string(o.Event.Data))
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, ts := range totals {
		for _, kt := range ts {
			seen[kt]++
			if seen[kt] == 2 {
				t.Errorf("running total %s answered twice", kt)
			}
		}
	}
	h := kvtest.NewHarness(t, open(t, eps, prefix))
	for k := range keys {
		got := h.Do("ctr", kvtest.M(`"get":"k`+strconv.Itoa(k)+`"`), "")
		if want := strconv.Itoa(procs * perProc / keys); len(got) != 1 || string(got[0].Event.Data) != want {
			t.Errorf("k%d = %s, want %s", k, kvtest.Strings(got), want)
		}
	}
}
