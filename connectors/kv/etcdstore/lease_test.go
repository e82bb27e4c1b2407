package etcdstore

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/pipeline"
)

func TestBucketEnd(t *testing.T) {
	for _, tc := range []struct {
		exp, remaining, want int64
	}{
		{exp: 10_001, remaining: 500, want: 11_000},
		{exp: 10_000, remaining: 500, want: 10_000},
		{exp: 10_001, remaining: 32_000, want: 11_000},          // 1 s buckets up to 32 s ahead
		{exp: 10_001, remaining: 33_000, want: 12_000},          // then 2 s
		{exp: 3_600_000, remaining: 3_600_000, want: 3_712_000}, // 1 h ahead: 128 s
	} {
		got := bucketEnd(tc.exp, tc.remaining)
		if got != tc.want {
			t.Errorf("bucketEnd(%d, %d) = %d, want %d", tc.exp, tc.remaining, got, tc.want)
		}
		if got < tc.exp || got-tc.exp > max(1000, tc.remaining/16) {
			t.Errorf("bucketEnd(%d, %d) = %d: outside [exp, exp+max(1s, remaining/16)]", tc.exp, tc.remaining, got)
		}
	}
}

// rawKeys returns the keys under prefix in etcd with their lease ids.
func rawKeys(t *testing.T, s *Store) map[string]clientv3.LeaseID {
	t.Helper()
	resp, err := s.client.Get(t.Context(), s.opts.Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]clientv3.LeaseID{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(s.opts.Prefix):])] = clientv3.LeaseID(kv.Lease)
	}
	return out
}

func process(t *testing.T, c *kv.Connector, metas ...string) {
	t.Helper()
	evs := make([]pipeline.Event, len(metas))
	for i, m := range metas {
		evs[i] = kvtest.Event(m, `1`)
	}
	var rec kvtest.Recorder
	if err := c.Process(t.Context(), evs, &rec); err != nil {
		t.Fatal(err)
	}
	for _, o := range kvtest.Strings(rec.Events) {
		if !strings.HasPrefix(o, "out ") {
			t.Fatalf("command failed: %s", o)
		}
	}
}

// Records written with a TTL, and their expiry index entries, are attached
// to shared leases and deleted by etcd without any reclaim pass; a write
// without expiry detaches its key.
func TestLeaseExpiry(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	c, err := kv.New(s, kv.Options{Namespace: "ttl", ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var metas []string
	for i := range 50 {
		metas = append(metas, kvtest.M(`"put":"short`+strconv.Itoa(i)+`","ttl":1`))
	}
	metas = append(metas,
		kvtest.M(`"put":"keep","ttl":1`),
		kvtest.M(`"put":"long","ttl":3600`),
	)
	process(t, c, metas...)
	process(t, c, kvtest.M(`"put":"keep"`)) // no expiry any more
	keys := rawKeys(t, s)
	// 50 short records, their 50 index entries, keep's stale index entry,
	// long and its index entry, and keep.
	if len(keys) != 104 {
		t.Fatalf("%d keys stored, want 104", len(keys))
	}
	leases := map[clientv3.LeaseID]bool{}
	for k, id := range keys {
		switch {
		case strings.Contains(k, "keep") && k[0] == 'd':
			if id != clientv3.NoLease {
				t.Errorf("%q still has lease %x after a write without expiry", k, id)
			}
		case id == clientv3.NoLease:
			t.Errorf("%q has no lease", k)
		default:
			leases[id] = true
		}
	}
	// The short records share one or two buckets (the second boundary may
	// fall inside the batch); the long one has its own.
	if len(leases) < 2 || len(leases) > 3 || s.leases.grants != len(leases) {
		t.Errorf("%d distinct leases, %d granted; want 2 or 3 of each", len(leases), s.leases.grants)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		keys = rawKeys(t, s)
		if len(keys) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 15s etcd still holds %d keys, want 3 (keep, long and its index entry)", len(keys))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for k := range keys {
		if !strings.Contains(k, "keep") && !strings.Contains(k, "long") {
			t.Errorf("%q survived its lease", k)
		}
	}
	if n, err := c.Reclaim(t.Context()); err != nil || n != 0 {
		t.Errorf("Reclaim after etcd's expiry = %d, %v; want 0", n, err)
	}
}

// A cached lease revoked behind the store's back makes the commit fail
// once; the group is rerun with a fresh lease.
func TestLeaseRevoked(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	exp := time.Now().Add(time.Minute).UnixMilli()
	update(t, s, setFn("a", "1", exp))
	for _, l := range s.leases.byEnd {
		if _, err := s.client.Revoke(t.Context(), l.id); err != nil {
			t.Fatal(err)
		}
	}
	if errs := update(t, s, setFn("b", "2", exp)); errs[0] != nil {
		t.Fatal(errs[0])
	}
	keys := rawKeys(t, s)
	if _, ok := keys["a"]; ok {
		t.Error("a survived the revocation of its lease")
	}
	if id, ok := keys["b"]; !ok || id == clientv3.NoLease {
		t.Errorf("b: stored %v, lease %x; want stored with a lease", ok, id)
	}
	if s.leases.grants != 2 {
		t.Errorf("%d leases granted, want 2", s.leases.grants)
	}
}

// Records already expired when written, by the store's clock, get no
// lease: the reclaim pass removes them.
func TestNoLeaseForPastExpiry(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	update(t, s, setFn("old", "1", time.Now().Add(-time.Second).UnixMilli()))
	if id := rawKeys(t, s)["old"]; id != clientv3.NoLease || s.leases.grants != 0 {
		t.Errorf("lease %x, %d granted; want none", id, s.leases.grants)
	}
}

// The reclaim pass fits etcd's default 128 operations per transaction.
func TestReclaimChunk(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	s.commitHook = func(cmps, ops int) {
		if cmps > 128 || ops > 128 {
			t.Errorf("transaction of %d compares and %d writes", cmps, ops)
		}
	}
	h := kvtest.NewHarness(t, s)
	evs := make([]pipeline.Event, 300)
	for i := range evs {
		evs[i] = kvtest.Event(kvtest.M(`"put":"k`+strconv.Itoa(i)+`","ttl":1`), `1`)
	}
	h.DoSlice("r", evs...)
	h.Clock.Advance(time.Second)
	if n, err := h.Conn("r").Reclaim(t.Context()); err != nil || n != len(evs) {
		t.Errorf("Reclaim = %d, %v; want %d", n, err, len(evs))
	}
}

// A batch command is one transaction: on etcd's default 128 operations it
// may write 128 keys, or 64 records with a TTL (each has an expiry index
// entry); past that it is refused with ErrTxnTooLarge and writes nothing.
func TestBatchCommandLimit(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	c, err := kv.New(s, kv.Options{Namespace: "b", ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	batch := func(n int, ttl string) string {
		var elems []string
		for i := range n {
			elems = append(elems, `{"put":"k`+strconv.Itoa(i)+`","value":1`+ttl+`}`)
		}
		return `{"kv":{"batch":[` + strings.Join(elems, ",") + `]}}`
	}
	for _, tc := range []struct {
		meta string
		ok   bool
	}{
		{batch(128, ""), true},
		{batch(129, ""), false},
		{batch(64, `,"ttl":60`), true},
		{batch(65, `,"ttl":60`), false},
	} {
		var rec kvtest.Recorder
		if err := c.Process(t.Context(), []pipeline.Event{kvtest.Event(tc.meta, ``)}, &rec); err != nil {
			t.Fatal(err)
		}
		got := kvtest.Strings(rec.Events)
		if len(got) != 1 || strings.HasPrefix(got[0], "out ") != tc.ok {
			t.Errorf("batch of %d: %.200s; want ok %v", strings.Count(tc.meta, "put"), got, tc.ok)
			continue
		}
		if !tc.ok && !strings.Contains(got[0], "exceeds etcd's limits") {
			t.Errorf("refusal does not name etcd's limit: %.300s", got[0])
		}
	}
}
