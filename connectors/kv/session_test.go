package kv_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
)

func TestSessionErrors(t *testing.T) {
	conn, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1, MaxValueBytes: 16, MaxKeyLength: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	tests := []struct {
		name string
		fn   func(s *kv.Session) error
		want error
	}{
		{"empty key", func(s *kv.Session) error { return s.Set("", []byte("1"), 0) }, kv.ErrInvalidKey},
		{"long key", func(s *kv.Session) error { _, err := s.Exists("123456789"); return err }, kv.ErrKeyTooLong},
		{"null value", func(s *kv.Session) error { return s.Set("k", []byte("null"), 0) }, kv.ErrNullValue},
		{"bad json", func(s *kv.Session) error { return s.Set("k", []byte("{"), 0) }, kv.ErrInvalidJSON},
		{"too large", func(s *kv.Session) error { return s.Set("k", []byte(`"0123456789abcdefghij"`), 0) }, kv.ErrValueTooLarge},
		{"negative ttl", func(s *kv.Session) error { return s.Set("k", []byte("1"), -time.Second) }, kv.ErrInvalidCommand},
		{"not a number", func(s *kv.Session) error {
			if err := s.Set("s", []byte(`"x"`), 0); err != nil {
				return err
			}
			_, err := s.Increment("s", 1)
			return err
		}, kv.ErrNotNumber},
		{"cas mismatch", func(s *kv.Session) error { return s.CAS("absent", []byte("1"), []byte("2")) }, kv.ErrCASMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs, err := conn.Run(context.Background(), []func(*kv.Session) error{tt.fn})
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(errs[0], tt.want) {
				t.Errorf("got %v, want %v", errs[0], tt.want)
			}
		})
	}
}

func TestSessionRollbackAndResults(t *testing.T) {
	conn, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	boom := errors.New("boom")
	var got []string
	errs, err := conn.Run(context.Background(), []func(*kv.Session) error{
		func(s *kv.Session) error { // rolled back
			if err := s.Set("a", []byte(`{"x": 1}`), 0); err != nil {
				return err
			}
			return boom
		},
		func(s *kv.Session) error {
			if _, found, _ := s.Get("a", nil); found {
				got = append(got, "a survived")
			}
			v, err := s.Increment("n", 2)
			if err != nil {
				return err
			}
			f, err := s.Increment("n", 0.5)
			if err != nil {
				return err
			}
			if err := s.Set("p/1", []byte("1"), 0); err != nil {
				return err
			}
			keys, _ := s.Keys("")
			all, _ := s.GetAll("p/")
			n, _ := s.Count("")
			cleared, _ := s.Clear("p/")
			got = append(got, string(v), string(f), strings.Join(keys, ","), string(all))
			if n != 2 || cleared != 1 {
				got = append(got, "bad counts")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(errs[0], boom) || errs[1] != nil {
		t.Fatalf("errs = %v", errs)
	}
	want := `2|2.5|n,p/1|{"p/1":1}`
	if strings.Join(got, "|") != want {
		t.Errorf("got %q, want %q", strings.Join(got, "|"), want)
	}
}
