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

// TestSessionPagesAndCAD covers the Session methods of the Go API's
// commands that take a page or an expected value: KeysPage, Scan, CAD and
// IncrementInt, checked against the command of the same name.
func TestSessionPagesAndCAD(t *testing.T) {
	conn, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1, MaxScan: 3, MaxKeyLength: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	run := func(fn func(s *kv.Session) error) error {
		t.Helper()
		errs, err := conn.Run(context.Background(), []func(*kv.Session) error{fn})
		if err != nil {
			t.Fatal(err)
		}
		return errs[0]
	}
	if err := run(func(s *kv.Session) error {
		for _, k := range []string{"a", "b/1", "b/2", "b/3", "c"} {
			if err := s.Set(k, []byte(`"`+k+`"`), 0); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	var pages []string
	_ = run(func(s *kv.Session) error {
		after := ""
		for {
			keys, next, more, err := s.KeysPage("b/", after, 2)
			if err != nil {
				return err
			}
			pages = append(pages, strings.Join(keys, ","))
			if !more {
				return nil
			}
			after = next
		}
	})
	if got := strings.Join(pages, "|"); got != "b/1,b/2|b/3" {
		t.Errorf("keys pages: %s", got)
	}

	var scanned []string
	_ = run(func(s *kv.Session) error {
		es, err := s.Scan("b/2", "c", 0)
		for _, e := range es {
			scanned = append(scanned, e.Key+"="+string(e.Value))
		}
		return err
	})
	if got := strings.Join(scanned, ","); got != `b/2="b/2",b/3="b/3"` {
		t.Errorf("scan: %s", got)
	}

	for _, tt := range []struct {
		name string
		fn   func(s *kv.Session) error
		want error
	}{
		{"keys limit above max_scan", func(s *kv.Session) error { _, _, _, err := s.KeysPage("", "", 4); return err }, kv.ErrTooManyEntries},
		{"keys after too long", func(s *kv.Session) error { _, _, _, err := s.KeysPage("", "123456789", 1); return err }, kv.ErrKeyTooLong},
		{"scan negative limit", func(s *kv.Session) error { _, err := s.Scan("", "", -1); return err }, kv.ErrInvalidCommand},
		{"cad mismatch", func(s *kv.Session) error { _, err := s.CAD("a", []byte(`"x"`)); return err }, kv.ErrCASMismatch},
		{"cad null", func(s *kv.Session) error { _, err := s.CAD("a", []byte(`null`)); return err }, kv.ErrNullValue},
		{"cad", func(s *kv.Session) error {
			v, err := s.CAD("a", []byte(` "a" `))
			if err == nil && string(v) != `"a"` {
				return errors.New("cad returned " + string(v))
			}
			return err
		}, nil},
		{"cad again", func(s *kv.Session) error { _, err := s.CAD("a", []byte(`"a"`)); return err }, kv.ErrCASMismatch},
		{"increment int exact", func(s *kv.Session) error {
			if _, err := s.IncrementInt("n", 1<<62); err != nil {
				return err
			}
			v, err := s.IncrementInt("n", 1<<62-1)
			if err == nil && string(v) != "9223372036854775807" {
				return errors.New("increment returned " + string(v))
			}
			return err
		}, nil},
		{"increment int overflow", func(s *kv.Session) error { _, err := s.IncrementInt("n", 1); return err }, kv.ErrOverflow},
	} {
		if err := run(tt.fn); !errors.Is(err, tt.want) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}

// TestWithNamespace: a derived connector sees only its namespace's keys,
// and closing it leaves the Backend open for its parent.
func TestWithNamespace(t *testing.T) {
	ctx := context.Background()
	conn, err := kv.New(memstore.New(), kv.Options{ReclaimInterval: -1, Namespace: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	b := conn.WithNamespace("b")
	if b.Options().Namespace != "b" || conn.WithNamespace("").Options().Namespace != kv.DefaultNamespace {
		t.Fatalf("namespaces %q, %q", b.Options().Namespace, conn.WithNamespace("").Options().Namespace)
	}
	put := func(c *kv.Connector, v string) {
		t.Helper()
		errs, err := c.Run(ctx, []func(*kv.Session) error{func(s *kv.Session) error { return s.Set("k", []byte(v), 0) }})
		if err != nil || errs[0] != nil {
			t.Fatal(err, errs[0])
		}
	}
	get := func(c *kv.Connector) (v []byte) {
		t.Helper()
		errs, err := c.Run(ctx, []func(*kv.Session) error{func(s *kv.Session) (err error) { v, _, err = s.Get("k", nil); return err }})
		if err != nil || errs[0] != nil {
			t.Fatal(err, errs[0])
		}
		return v
	}
	put(conn, "1")
	put(b, "2")
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if a, bv := get(conn), get(conn.WithNamespace("b")); string(a) != "1" || string(bv) != "2" {
		t.Fatalf("a=%s b=%s, want 1 and 2", a, bv)
	}
}
