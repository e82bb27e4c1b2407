package kvtest

import (
	"strconv"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
)

// RunPersistent checks that a backend stored in a directory keeps every
// value, expiry and namespace across close and reopen. open must open (or
// reopen) the backend stored in dir; RunPersistent closes what it opens.
func RunPersistent(t *testing.T, open func(t *testing.T, dir string) kv.Backend) {
	dir := t.TempDir()
	clock := NewClock()
	type put struct{ ns, key, meta, data, stored string }
	puts := []put{
		{"a", "snot", M(`"put":"snot"`), `"badger"`, `"badger"`},
		{"a", "obj", M(`"put":"obj"`), `{"b":[1,2.50],"a":null}`, `{"a":null,"b":[1,2.50]}`},
		{"a", "日本", M(`"put":"日本"`), `1e3`, `1e3`},
		{"a", "ttl", M(`"put":"ttl","ttl":60`), `true`, `true`},
		{"b", "snot", M(`"put":"snot"`), `"other"`, `"other"`},
		{"b", "n", M(`"increment":"n","by":41`), ``, `41`},
	}
	session := func(fn func(h *Harness)) {
		b := open(t, dir)
		h := &Harness{T: t, Backend: b, Clock: clock, conns: map[string]Conn{}}
		fn(h)
		for _, c := range h.conns {
			if err := c.Close(t.Context()); err != nil {
				t.Fatalf("closing connector: %v", err)
			}
		}
		if err := b.Close(); err != nil {
			t.Fatalf("closing backend: %v", err)
		}
	}
	session(func(h *Harness) {
		for _, p := range puts {
			if got := h.Do(p.ns, p.meta, p.data); len(got) != 1 || got[0].Port != "out" {
				t.Fatalf("%s %s: %s", p.meta, p.data, join(Strings(got)))
			}
		}
		// Enough writes to spill beyond a memtable's first flush.
		evs := make([]string, 0, 2000)
		for i := range 2000 {
			evs = append(evs, strconv.Itoa(i))
		}
		for _, i := range evs {
			h.Do("c", M(`"put":"k`+i+`"`), i)
		}
	})
	session(func(h *Harness) {
		for _, p := range puts {
			key := strconv.Quote(p.key)
			got := h.Do(p.ns, M(`"get":`+key), "")
			if len(got) != 1 || string(got[0].Event.Data) != p.stored {
				t.Errorf("after reopen, ns %q get %s: %s, want %s", p.ns, key, join(Strings(got)), p.stored)
			}
		}
		if got := h.Do("c", M(`"count":"k"`), ""); len(got) != 1 || string(got[0].Event.Data) != "2000" {
			t.Errorf("after reopen, count: %s", join(Strings(got)))
		}
		if got := h.Do("c", M(`"get":"k1999"`), ""); len(got) != 1 || string(got[0].Event.Data) != "1999" {
			t.Errorf("after reopen, get k1999: %s", join(Strings(got)))
		}
		h.Clock.Advance(time.Minute)
		if got := h.Do("a", M(`"exists":"ttl"`), ""); len(got) != 1 || string(got[0].Event.Data) != "false" {
			t.Errorf("after reopen, the expiry was lost: %s", join(Strings(got)))
		}
		if n, err := h.Conn("a").Reclaim(t.Context()); err != nil || n != 1 {
			t.Errorf("after reopen, Reclaim = %d, %v; want 1", n, err)
		}
	})
}
