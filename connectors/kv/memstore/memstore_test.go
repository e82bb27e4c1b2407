package memstore_test

import (
	"context"
	"errors"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
)

func TestConformance(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.Backend { return memstore.New() })
}

func TestRollbackAndClose(t *testing.T) {
	s := memstore.New()
	boom := errors.New("boom")
	fns := []kv.TxnFunc{
		func(tx kv.Txn) error { return tx.Set([]byte("a"), []byte("1"), 0) },
		func(tx kv.Txn) error {
			_ = tx.Set([]byte("a"), []byte("2"), 5)
			_ = tx.Set([]byte("b"), []byte("2"), 0)
			_ = tx.DeleteRange([]byte("a"), []byte("z"))
			return boom
		},
		func(tx kv.Txn) error { panic("bad") },
		func(tx kv.Txn) error {
			v, exp, ok, err := tx.Get([]byte("a"))
			if string(v) != "1" || exp != 0 || !ok || err != nil {
				t.Errorf("after rollback a = %q %d %v %v", v, exp, ok, err)
			}
			var keys []string
			_ = tx.Scan(nil, nil, func(k, _ []byte, _ int64) (bool, error) {
				keys = append(keys, string(k))
				return true, nil
			})
			if len(keys) != 1 || keys[0] != "a" {
				t.Errorf("after rollback keys = %q", keys)
			}
			return nil
		},
	}
	errs := make([]error, len(fns))
	if err := s.Update(context.Background(), fns, errs); err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || !errors.Is(errs[1], boom) || errs[2] == nil || errs[3] != nil {
		t.Fatalf("errs = %v", errs)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), fns[:1], errs[:1]); !errors.Is(err, memstore.ErrClosed) {
		t.Fatalf("Update after Close = %v, want ErrClosed", err)
	}
	if err := s.Close(); !errors.Is(err, memstore.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
}
