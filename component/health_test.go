package component

import (
	"errors"
	"strings"
	"testing"
)

func TestHealth(t *testing.T) {
	r := NewResources()
	h := HealthOf(r)
	if HealthOf(r) != h {
		t.Fatal("HealthOf gave two values for one set of resources")
	}
	if err := h.Err(); err != nil {
		t.Fatalf("empty health: %v", err)
	}
	h.Set("b", errors.New("connection refused"))
	h.Set("a", errors.New("disconnected"))
	err := h.Err()
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("Err = %v, want ErrNotReady", err)
	}
	msg := err.Error()
	if ia, ib := strings.Index(msg, "a: disconnected"), strings.Index(msg, "b: connection refused"); ia < 0 || ib < ia {
		t.Errorf("Err = %q: want each component with its reason, sorted", msg)
	}
	h.Set("a", nil)
	if err := h.Err(); err == nil || strings.Contains(err.Error(), "a:") {
		t.Errorf("after a is ready: %v", err)
	}
	h.Set("b", nil)
	if err := h.Err(); err != nil {
		t.Errorf("all ready: %v", err)
	}
}
