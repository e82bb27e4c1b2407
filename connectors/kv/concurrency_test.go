package kv_test

import (
	"context"
	"fmt"
	"math/rand"
	"sync"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// sharedConnectors opens n connectors of one namespace over one Pebble
// store, each through its own Pool handle, as the connectors of several
// pipelines of one process would be.
func sharedConnectors(t *testing.T, n int) []*kv.Connector {
	t.Helper()
	pool := pebblestore.NewPool()
	dir := t.TempDir()
	conns := make([]*kv.Connector, n)
	for i := range conns {
		b, err := pool.Open(dir, pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := kv.New(b, kv.Options{Namespace: "shared", ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	t.Cleanup(func() {
		for _, c := range conns {
			if err := c.Close(context.Background()); err != nil {
				t.Errorf("close: %v", err)
			}
		}
	})
	return conns
}

// do processes evs as one slice and returns what was emitted. It is safe
// to call from several goroutines.
func do(t *testing.T, c *kv.Connector, evs ...pipeline.Event) []kvtest.Emitted {
	var rec kvtest.Recorder
	if err := c.Process(context.Background(), evs, &rec); err != nil {
		t.Errorf("Process: %v", err)
	}
	return rec.Events
}

// TestConcurrentCASLoopsAndIncrements runs cas retry loops and increments
// from several pipelines (one connector each, over one shared store) and
// from several goroutines calling one connector, and checks the exact
// totals: a cas that reports success applied exactly once, no increment is
// lost or doubled.
func TestConcurrentCASLoopsAndIncrements(t *testing.T) {
	const workers, rounds, incsPerRound = 4, 40, 3
	conns := sharedConnectors(t, workers)
	single := conns[0]
	for _, mode := range []string{"connector per pipeline", "one connector shared"} {
		t.Run(mode, func(t *testing.T) {
			casKey, incKey := "cas-"+mode, "inc-"+mode
			var wg sync.WaitGroup
			retries := make([]int, workers)
			for w := 0; w < workers; w++ {
				c := conns[w]
				if mode == "one connector shared" {
					c = single
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for r := 0; r < rounds; r++ {
						// Increments travel in one slice with the read of the
						// cas loop, so groups mix reads and writes.
						evs := []pipeline.Event{kvtest.Event(kvtest.M(fmt.Sprintf(`"get":%q`, casKey)), ``)}
						for range incsPerRound {
							evs = append(evs, kvtest.Event(kvtest.M(fmt.Sprintf(`"increment":%q`, incKey)), ``))
						}
						got := do(t, c, evs...)
						if len(got) != len(evs) {
							t.Errorf("batch gave %d events: %v", len(got), kvtest.Strings(got))
							return
						}
						for _, e := range got[1:] {
							if e.Port != pipeline.PortOut {
								t.Errorf("increment failed: %s", e)
							}
						}
						old := string(got[0].Event.DataJSON())
						for {
							next := int64(0)
							if old != "null" {
								next = gjson.Parse(old).Int()
							}
							cas := kvtest.Event(kvtest.M(fmt.Sprintf(`"cas":%q,"old":%s`, casKey, old)), fmt.Sprint(next+1))
							res := do(t, c, cas)
							if len(res) != 1 {
								t.Errorf("cas gave %v", kvtest.Strings(res))
								return
							}
							if res[0].Port == pipeline.PortOut {
								break
							}
							cur := gjson.GetBytes(res[0].Event.Meta, "kv.current")
							if !cur.Exists() {
								t.Errorf("cas failed without kv.current: %s", res[0])
								return
							}
							old = cur.Raw
							retries[w]++
						}
					}
				}()
			}
			wg.Wait()
			got := do(t, single,
				kvtest.Event(kvtest.M(fmt.Sprintf(`"get":%q`, casKey)), ``),
				kvtest.Event(kvtest.M(fmt.Sprintf(`"get":%q`, incKey)), ``))
			if len(got) != 2 {
				t.Fatalf("final gets: %v", kvtest.Strings(got))
			}
			if want := fmt.Sprint(workers * rounds); string(got[0].Event.Data) != want {
				t.Errorf("%s = %s after %d successful cas, want %s", casKey, got[0].Event.Data, workers*rounds, want)
			}
			if want := fmt.Sprint(workers * rounds * incsPerRound); string(got[1].Event.Data) != want {
				t.Errorf("%s = %s, want %s", incKey, got[1].Event.Data, want)
			}
			total := 0
			for _, r := range retries {
				total += r
			}
			t.Logf("%s: %d cas retries on mismatch", mode, total)
		})
	}
}

// TestScansSeeConsistentSnapshots moves amounts between accounts inside
// batch commands while other goroutines scan, get_all and count the
// accounts: every read must see the invariant total, never a state between
// the two halves of a transfer.
func TestScansSeeConsistentSnapshots(t *testing.T) {
	const accounts, start = 10, 100
	const total = accounts * start
	const writers, transfers, readers = 3, 150, 2
	conns := sharedConnectors(t, writers+readers)
	var setup []pipeline.Event
	for i := range accounts {
		setup = append(setup, kvtest.Event(kvtest.M(fmt.Sprintf(`"put":"acct%02d"`, i)), fmt.Sprint(start)))
	}
	setup = append(setup, kvtest.Event(kvtest.M(`"put":"other"`), `1000000`))
	for _, e := range do(t, conns[0], setup...) {
		if e.Port != pipeline.PortOut {
			t.Fatalf("setup: %s", e)
		}
	}

	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			for range transfers {
				// Several transfers per Process call: they commit as one
				// group but each batch is its own transaction.
				var evs []pipeline.Event
				for range 1 + rng.Intn(4) {
					a, b, x := rng.Intn(accounts), rng.Intn(accounts), 1+rng.Intn(50)
					evs = append(evs, kvtest.Event(kvtest.M(fmt.Sprintf(
						`"batch":[{"increment":"acct%02d","by":%d},{"increment":"acct%02d","by":%d}]`, a, -x, b, x)), ``))
				}
				for _, e := range do(t, conns[w], evs...) {
					if e.Port != pipeline.PortOut {
						t.Errorf("transfer failed: %s", e)
					}
				}
			}
		}()
	}
	var reads sync.WaitGroup
	var mu sync.Mutex
	scans := 0
	for r := range readers {
		reads.Add(1)
		go func() {
			defer reads.Done()
			c := conns[writers+r]
			for {
				select {
				case <-done:
					return
				default:
				}
				got := do(t, c,
					kvtest.Event(kvtest.M(`"scan":"acct","end":"acct~"`), ``),
					kvtest.Event(kvtest.M(`"get_all":"acct"`), ``),
					kvtest.Event(kvtest.M(`"batch":[{"scan":"acct","end":"acct~"},{"count":"acct"}]`), ``))
				sum, rows := int64(0), 0
				var all, batch gjson.Result
				for _, e := range got {
					if e.Port != pipeline.PortOut {
						t.Errorf("read failed: %s", e)
						return
					}
					switch gjson.GetBytes(e.Event.Meta, "kv.op").Str {
					case "scan":
						sum += gjson.ParseBytes(e.Event.Data).Int()
						rows++
					case "get_all":
						all = gjson.ParseBytes(e.Event.Data)
					case "batch":
						batch = gjson.ParseBytes(e.Event.Data)
					}
				}
				if rows != accounts || sum != total {
					t.Errorf("scan saw %d accounts summing to %d, want %d summing to %d", rows, sum, accounts, total)
					return
				}
				sum = 0
				all.ForEach(func(_, v gjson.Result) bool { sum += v.Int(); return true })
				if sum != total {
					t.Errorf("get_all summed to %d, want %d: %s", sum, total, all.Raw)
					return
				}
				sum = 0
				batch.Get("0.#.value").ForEach(func(_, v gjson.Result) bool { sum += v.Int(); return true })
				if sum != total || batch.Get("1").Int() != accounts {
					t.Errorf("scan inside a batch summed to %d, want %d: %s", sum, total, batch.Raw)
					return
				}
				mu.Lock()
				scans++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(done)
	reads.Wait()
	if scans == 0 {
		t.Fatal("no scan completed while the writers ran")
	}
	t.Logf("%d consistent reads of %d accounts during %d transfers", scans, accounts, writers*transfers)
}
