package etcdstore

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Handles on one endpoints+prefix share one Store; another prefix gets its
// own; options that disagree are refused; the store closes with its last
// handle.
func TestPool(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	t.Cleanup(func() { wipe(t, eps, prefix) })
	p := NewPool()
	a, err := p.Open(t.Context(), Options{Endpoints: eps, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	rev := append([]string{}, eps...)
	for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
		rev[i], rev[j] = rev[j], rev[i]
	}
	b, err := p.Open(t.Context(), Options{Endpoints: rev, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.Open(t.Context(), Options{Endpoints: eps, Prefix: prefix + "other/"})
	if err != nil {
		t.Fatal(err)
	}
	if a.(*handle).store != b.(*handle).store || a.(*handle).store == other.(*handle).store {
		t.Error("handles on one endpoints+prefix must share one store, and only those")
	}
	if _, err := p.Open(t.Context(), Options{Endpoints: eps, Prefix: prefix, RequestTimeout: time.Second}); err == nil ||
		!strings.Contains(err.Error(), "already open") {
		t.Errorf("open with another request timeout: %v, want refused", err)
	}
	if a.(*handle).MaxTxnWrites() != 128 {
		t.Errorf("MaxTxnWrites = %d, want 128", a.(*handle).MaxTxnWrites())
	}
	s := a.(*handle).store
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
	if s.closed {
		t.Error("store closed while a handle is open")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !s.closed {
		t.Error("store still open after its last handle closed")
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
}
