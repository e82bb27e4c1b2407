package kv_test

import (
	"context"
	"errors"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/pipeline"
)

// TestErrDeferredDefersTheRest checks kv.ErrDeferred: once a function
// running in the writer returns it, every later function of the Run is
// deferred, nothing of it applied, even one whose optimistic run was
// valid and would have been kept; the earlier ones are applied. The first
// fn is invalidated by a write between the optimistic phase and the
// writer, so it runs in the writer and defers; the second's optimistic
// run is valid.
func TestErrDeferredDefersTheRest(t *testing.T) {
	c := pebbleConn(t)
	put := func(key string) func(*kv.Session) error {
		return func(s *kv.Session) error { return s.Set(key, []byte("1"), 0) }
	}
	fns := []func(*kv.Session) error{
		put("before"),
		func(s *kv.Session) error {
			if _, _, err := s.Get("k", nil); err != nil {
				return err
			}
			if s.InWriter() {
				return kv.ErrDeferred
			}
			return s.Set("deferred", []byte("1"), 0)
		},
		put("after"),
	}
	errs, _, err := c.RunObserved(context.Background(), fns, func() {
		var rec collect
		if err := c.Process(context.Background(), []pipeline.Event{{Meta: []byte(`{"kv":{"put":"k"}}`), Data: []byte("2")}}, &rec); err != nil || rec.out != 1 {
			t.Fatalf("concurrent put: %v, %d out", err, rec.out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || !errors.Is(errs[1], kv.ErrDeferred) || !errors.Is(errs[2], kv.ErrDeferred) {
		t.Fatalf("errs %v, want nil, ErrDeferred, ErrDeferred", errs)
	}
	for key, want := range map[string]string{"before": "1", "deferred": "absent", "after": "absent"} {
		if got := sessGet(t, c, key); got != want {
			t.Errorf("%s = %s, want %s", key, got, want)
		}
	}
}
