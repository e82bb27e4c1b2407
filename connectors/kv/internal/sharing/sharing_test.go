package sharing

import (
	"errors"
	"testing"
)

type store struct{ closed int }

func (s *store) Close() error { s.closed++; return nil }

// TestPool checks that one key gives one store, closed with its last
// user, that check can refuse a second user, and that a Ref releases once.
func TestPool(t *testing.T) {
	var p Pool[*store]
	opened := 0
	open := func() (*store, error) { opened++; return &store{}, nil }
	a, ra, err := p.Acquire("k", nil, open)
	if err != nil {
		t.Fatal(err)
	}
	b, rb, err := p.Acquire("k", func(*store) error { return nil }, open)
	if err != nil || a != b || opened != 1 {
		t.Fatalf("second Acquire: %v, same store %t, opened %d", err, a == b, opened)
	}
	refused := errors.New("refused")
	if _, _, err := p.Acquire("k", func(*store) error { return refused }, open); !errors.Is(err, refused) {
		t.Errorf("Acquire with a refusing check: %v", err)
	}
	if err := ra.Release(); err != nil || a.closed != 0 {
		t.Fatalf("first Release: %v, closed %d", err, a.closed)
	}
	if err := ra.Release(); !errors.Is(err, ErrReleased) {
		t.Errorf("second Release of one Ref: %v, want ErrReleased", err)
	}
	if err := rb.Release(); err != nil || a.closed != 1 {
		t.Fatalf("last Release: %v, closed %d", err, a.closed)
	}
	c, rc, _ := p.Acquire("k", nil, open)
	if c == a || opened != 2 {
		t.Errorf("Acquire after the last Release reused the closed store")
	}
	_ = rc.Release()
	failed := errors.New("open failed")
	if _, _, err := p.Acquire("x", nil, func() (*store, error) { return nil, failed }); !errors.Is(err, failed) {
		t.Errorf("failing open: %v", err)
	}
}
