package flowrun_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/connectors/kv"
)

// TestExpiryAPI drives the expiry methods of a Namespace with a manual
// clock: IncrementWith opening a window at its first hit, TTL, Touch and
// Put with KeepTTL.
func TestExpiryAPI(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var now atomic.Int64
	now.Store(start.UnixNano())
	advance := func(d time.Duration) { now.Add(int64(d)) }
	st := openStore(t, flowrun.StoreOptions{Now: func() time.Time { return time.Unix(0, now.Load()) }, NoReclaim: true})
	ns := st.Namespace("t")

	incr := func(want int64, opts flowrun.IncrementOptions) {
		t.Helper()
		if v, err := ns.IncrementWith(ctx, "w", 1, opts); v != want || err != nil {
			t.Fatalf("IncrementWith = %d, %v; want %d", v, err, want)
		}
	}
	ttl := func(key string, want flowrun.Expiry) {
		t.Helper()
		got, err := ns.TTL(ctx, key)
		if err != nil || got.Found != want.Found || !got.ExpireAt.Equal(want.ExpireAt) || got.Remaining != want.Remaining {
			t.Fatalf("TTL(%q) = %+v, %v; want %+v", key, got, err, want)
		}
	}
	window := flowrun.IncrementOptions{TTL: 10 * time.Second}
	incr(1, window)
	ttl("w", flowrun.Expiry{Found: true, ExpireAt: start.Add(10 * time.Second), Remaining: 10 * time.Second})
	advance(4 * time.Second)
	incr(2, window) // keeps the window's expiry
	ttl("w", flowrun.Expiry{Found: true, ExpireAt: start.Add(10 * time.Second), Remaining: 6 * time.Second})
	advance(6 * time.Second)
	incr(1, window) // a new window
	ttl("w", flowrun.Expiry{Found: true, ExpireAt: start.Add(20 * time.Second), Remaining: 10 * time.Second})
	advance(time.Second)
	incr(2, flowrun.IncrementOptions{TTL: 10 * time.Second, Refresh: true})
	ttl("w", flowrun.Expiry{Found: true, ExpireAt: start.Add(21 * time.Second), Remaining: 10 * time.Second})
	if _, err := ns.IncrementWith(ctx, "w", 1, flowrun.IncrementOptions{Refresh: true}); !errors.Is(err, kv.ErrInvalidCommand) {
		t.Fatalf("Refresh without TTL: %v", err)
	}

	ttl("absent", flowrun.Expiry{})
	if found, err := ns.Touch(ctx, "absent", time.Second); found || err != nil {
		t.Fatalf("Touch(absent) = %t, %v", found, err)
	}
	if err := ns.Put(ctx, "p", []byte(`1`), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ttl("p", flowrun.Expiry{Found: true})
	if found, err := ns.Touch(ctx, "p", 3*time.Second); !found || err != nil {
		t.Fatalf("Touch(p) = %t, %v", found, err)
	}
	ttl("p", flowrun.Expiry{Found: true, ExpireAt: start.Add(14 * time.Second), Remaining: 3 * time.Second})
	if err := ns.Put(ctx, "p", []byte(`2`), flowrun.PutOptions{KeepTTL: true}); err != nil {
		t.Fatal(err)
	}
	ttl("p", flowrun.Expiry{Found: true, ExpireAt: start.Add(14 * time.Second), Remaining: 3 * time.Second})
	if err := ns.Put(ctx, "p", []byte(`3`), flowrun.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ttl("p", flowrun.Expiry{Found: true}) // a plain put clears the expiry
	if err := ns.Put(ctx, "p", []byte(`3`), flowrun.PutOptions{KeepTTL: true, TTL: time.Second}); !errors.Is(err, kv.ErrInvalidCommand) {
		t.Fatalf("KeepTTL with TTL: %v", err)
	}
	if _, err := ns.Touch(ctx, "p", 0); !errors.Is(err, kv.ErrInvalidCommand) {
		t.Fatalf("Touch with ttl 0: %v", err)
	}
	advance(time.Hour)
	if v, _, err := ns.Get(ctx, "p"); string(v) != "3" || err != nil {
		t.Fatalf("Get(p) = %s, %v", v, err)
	}
}

// TestStoreOnExpired: the reclaiming of a Store reports each expired key
// with its namespace and last value before deleting it, and keeps it when
// the report fails.
func TestStoreOnExpired(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var now atomic.Int64
	now.Store(start.UnixNano())
	var got []string
	fail := true
	st := openStore(t, flowrun.StoreOptions{
		Now: func() time.Time { return time.Unix(0, now.Load()) }, NoReclaim: true,
		OnExpired: func(_ context.Context, keys []flowrun.ExpiredKey) error {
			for _, k := range keys {
				got = append(got, k.Namespace+"/"+k.Key+"="+string(k.Value))
			}
			if fail {
				return errors.New("not now")
			}
			return nil
		},
	})
	ns := st.Namespace("limits")
	if _, err := ns.IncrementWith(ctx, "hits", 1, flowrun.IncrementOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(time.Minute))
	if n, err := ns.Reclaim(ctx); n != 0 || err == nil {
		t.Fatalf("failing report: %d, %v", n, err)
	}
	fail = false
	if n, err := ns.Reclaim(ctx); n != 1 || err != nil {
		t.Fatalf("reclaim: %d, %v", n, err)
	}
	if want := "limits/hits=1 limits/hits=1"; strings.Join(got, " ") != want {
		t.Fatalf("reported %q, want %s", got, want)
	}
}
