package kv_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
)

// fixedClock returns a clock at the given Unix millisecond.
func fixedClock(ms *int64) func() time.Time {
	return func() time.Time { return time.UnixMilli(*ms) }
}

// dumpString dumps b as JSON lines.
func dumpString(t *testing.T, b kv.Backend, now int64) string {
	t.Helper()
	var buf bytes.Buffer
	err := kv.Dump(context.Background(), b, kv.DumpOptions{Now: fixedClock(&now), Chunk: 2}, func(r kv.Record) error {
		buf.Write(r.AppendJSON(nil))
		buf.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	return buf.String()
}

// loadString loads JSON lines into b.
func loadString(t *testing.T, b kv.Backend, lines string) int {
	t.Helper()
	sc := strings.Split(strings.TrimSuffix(lines, "\n"), "\n")
	i := 0
	n, err := kv.Load(context.Background(), b, kv.LoadOptions{Group: 3}, func() (kv.Record, error) {
		if i == len(sc) || sc[i] == "" {
			return kv.Record{}, io.EOF
		}
		i++
		return kv.ParseRecord([]byte(sc[i-1]))
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return n
}

func TestDumpLoadRoundTrip(t *testing.T) {
	now := int64(1_000_000)
	src := memstore.New()
	// Three namespaces over one backend, as flows sharing a store dir.
	for _, ns := range []string{"players", "a", "bans"} {
		c, err := kv.New(nopClose{src}, kv.Options{Namespace: ns, Now: fixedClock(&now), ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		process(t, c,
			kvtest.Event(kvtest.M(`"put":"k1"`), `{"b":2,"a":[1,"x\n"]}`),
			kvtest.Event(kvtest.M(`"put":"k2","ttl":60`), `"soon"`),
			kvtest.Event(kvtest.M(`"put":"gone","ttl":1`), `0`),
			kvtest.Event(kvtest.M(`"put":"日本"`), `1.50`),
		)
	}
	now += 1000 // "gone" has expired in every namespace
	first := dumpString(t, src, now)
	if strings.Contains(first, `"gone"`) {
		t.Fatalf("dump holds an expired key:\n%s", first)
	}
	if got := strings.Count(first, "\n"); got != 9 {
		t.Fatalf("dump has %d lines, want 9:\n%s", got, first)
	}
	wantLine := `{"namespace":"bans","key":"k2","value":"soon","expire_at":1060000}`
	if !strings.Contains(first, wantLine+"\n") {
		t.Fatalf("dump lacks %s:\n%s", wantLine, first)
	}
	if !strings.HasPrefix(first, `{"namespace":"a","key":"k1","value":{"a":[1,"x\n"],"b":2},"expire_at":null}`) {
		t.Fatalf("dump does not start with namespace a, canonical value:\n%s", first)
	}

	dst := memstore.New()
	if n := loadString(t, dst, first); n != 9 {
		t.Fatalf("loaded %d records, want 9", n)
	}
	if second := dumpString(t, dst, now); second != first {
		t.Fatalf("dump after load differs:\nfirst:\n%s\nsecond:\n%s", first, second)
	}

	// The loaded store behaves as the original: values, and expiry with
	// its index, so the janitor reclaims loaded keys.
	c, err := kv.New(nopClose{dst}, kv.Options{Namespace: "players", Now: fixedClock(&now), ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	got := process(t, c, kvtest.Event(kvtest.M(`"get":"k2"`), ``))
	if len(got) != 1 || string(got[0].Event.Data) != `"soon"` {
		t.Fatalf("get after load: %v", kvtest.Strings(got))
	}
	now += 60_000
	if n, err := c.Reclaim(context.Background()); err != nil || n != 1 {
		t.Fatalf("Reclaim after load: %d, %v; want 1 key", n, err)
	}

	// Loading over existing keys replaces them and their expiry entries.
	loadString(t, dst, `{"namespace":"players","key":"k1","value":3,"expire_at":99999999}`+"\n")
	loadString(t, dst, `{"namespace":"players","key":"k1","value":4}`+"\n")
	now = 100_000_000
	if n, err := c.Reclaim(context.Background()); err != nil || n != 0 {
		t.Fatalf("Reclaim after overwrite without expiry: %d, %v; want 0 keys", n, err)
	}
	got = process(t, c, kvtest.Event(kvtest.M(`"get":"k1"`), ``))
	if len(got) != 1 || string(got[0].Event.Data) != `4` {
		t.Fatalf("get after overwrite: %v", kvtest.Strings(got))
	}
}

// nopClose lets several connectors share one backend in a test.
type nopClose struct{ kv.Backend }

func (nopClose) Close() error { return nil }

func TestParseRecordErrors(t *testing.T) {
	tests := []struct{ line, want string }{
		{`{"namespace":"n","key":"k","value":1}`, ""},
		{`{"namespace":"n","key":"k","value":{"b":1, "a":2},"expire_at":5}`, ""},
		{`not json`, "not valid JSON"},
		{`[1]`, "not a JSON object"},
		{`{"namespace":"n","key":"k","value":1,"ttl":3}`, `unknown field "ttl"`},
		{`{"key":"k","value":1}`, `"namespace" must be a string`},
		{`{"namespace":"n","key":"","value":1}`, `"key" must be a non-empty`},
		{`{"namespace":"n","key":5,"value":1}`, `"key" must be a non-empty`},
		{`{"namespace":"n","key":"k"}`, `"value" is missing or null`},
		{`{"namespace":"n","key":"k","value":null}`, `"value" is missing or null`},
		{`{"namespace":"n","key":"k","value":1,"expire_at":-1}`, `"expire_at" must be a non-negative integer`},
		{`{"namespace":"n","key":"k","value":1,"expire_at":1.5}`, `"expire_at" must be a non-negative integer`},
		{`{"namespace":"n","key":"k","value":1,"expire_at":"x"}`, `"expire_at" must be a number or null`},
		{`{"namespace":"n","key":"k","value":` + strings.Repeat("[", 2000) + `}`, "invalid JSON"},
		{`{"namespace":"n","key":"k","value":{"a":1,"a":2}}`, `duplicate object key "a" at value.a`},
		{`{"namespace":"n","key":"k","key":"j","value":1}`, `duplicate object key "key"`},
		{`{"namespace":"n","key":"\ud800","value":1}`, `"key" must be a non-empty UTF-8 string`},
		{`{"namespace":"\udfff","key":"k","value":1}`, `"namespace" must be a UTF-8 string`},
		{`{"namespace":"n","key":"k","value":{"\ud800":1}}`, `lone surrogate escape in an object key`},
	}
	for _, tt := range tests {
		t.Run(tt.line[:min(len(tt.line), 40)], func(t *testing.T) {
			r, err := kv.ParseRecord([]byte(tt.line))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if back := string(r.AppendJSON(nil)); !strings.HasPrefix(back, `{"namespace":"n","key":"k","value":`) {
					t.Fatalf("re-encoded as %s", back)
				}
				return
			}
			if !errors.Is(err, kv.ErrInvalidRecord) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want ErrInvalidRecord containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadStopsAtBadInput(t *testing.T) {
	b := memstore.New()
	boom := errors.New("line 3: broken")
	i := 0
	n, err := kv.Load(context.Background(), b, kv.LoadOptions{Group: 10}, func() (kv.Record, error) {
		i++
		if i == 3 {
			return kv.Record{}, boom
		}
		return kv.Record{Namespace: "n", Key: "k" + string(rune('0'+i)), Value: []byte("1")}, nil
	})
	if !errors.Is(err, boom) || n != 2 {
		t.Fatalf("Load = %d, %v; want 2 records then the reader's error", n, err)
	}
	_, err = kv.Load(context.Background(), b, kv.LoadOptions{}, func() (kv.Record, error) {
		return kv.Record{Namespace: "n", Value: []byte("1")}, nil
	})
	if !errors.Is(err, kv.ErrInvalidRecord) {
		t.Fatalf("empty key: %v", err)
	}
}

func TestDumpRefusesForeignKeys(t *testing.T) {
	b := memstore.New()
	errs := make([]error, 1)
	raw := func(tx kv.Txn) error { return tx.Set([]byte("d\x05ab"), []byte("1"), 0) }
	if err := b.Update(context.Background(), []kv.TxnFunc{raw}, errs); err != nil || errs[0] != nil {
		t.Fatal(err, errs[0])
	}
	err := kv.Dump(context.Background(), b, kv.DumpOptions{}, func(kv.Record) error { return nil })
	if !errors.Is(err, kv.ErrInvalidRecord) || !strings.Contains(err.Error(), `d\x05ab`) {
		t.Fatalf("Dump over a malformed key: %v", err)
	}
	stop := errors.New("stop")
	loadString(t, b, `{"namespace":"n","key":"k","value":1}`)
	b2 := memstore.New()
	loadString(t, b2, `{"namespace":"n","key":"k","value":1}`+"\n"+`{"namespace":"n","key":"l","value":1}`)
	calls := 0
	err = kv.Dump(context.Background(), b2, kv.DumpOptions{}, func(kv.Record) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Dump did not stop at fn's error: %v after %d calls", err, calls)
	}
}
