package owner

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/changelog"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/internal/lease"
	"github.com/flowrun/flowrun/internal/natstest"
)

// increment adds one to key in b and returns the new value.
func increment(ctx context.Context, b kv.Backend, key string) (int, error) {
	var n int
	errs := make([]error, 1)
	err := b.Update(ctx, []kv.TxnFunc{func(tx kv.Txn) error {
		v, _, _, err := tx.Get([]byte(key))
		if err != nil {
			return err
		}
		n, _ = strconv.Atoi(string(v))
		n++
		return tx.Set([]byte(key), []byte(strconv.Itoa(n)), 0)
	}}, errs)
	if err == nil {
		err = errs[0]
	}
	return n, err
}

func read(t *testing.T, b kv.Backend, key string) int {
	t.Helper()
	var n int
	errs := make([]error, 1)
	if err := b.Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error {
		v, _, _, err := tx.Get([]byte(key))
		n, _ = strconv.Atoi(string(v))
		return err
	}}, errs); err != nil || errs[0] != nil {
		t.Fatalf("read %s: %v %v", key, err, errs[0])
	}
	return n
}

// setup opens a changelog and a lease stream of their own, and one lease
// table per holder (lease TTL 3s).
func setup(t *testing.T, holders ...string) (*changelog.Log, []*lease.Table) {
	t.Helper()
	js := natstest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := natstest.Name("ownertest")
	log, err := changelog.Open(ctx, js, changelog.Options{Stream: name, Subject: "flowrun.test." + name})
	if err != nil {
		t.Fatal(err)
	}
	var tables []*lease.Table
	for _, h := range holders {
		tb, err := lease.Open(ctx, js, name+"_leases", h, lease.Options{TTL: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		tables = append(tables, tb)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, name)
		_ = js.DeleteStream(ctx, name+"_leases")
	})
	return log, tables
}

// TestFailoverFencesAPausedOwner: owner a counts to 100 and then stops
// renewing its lease (as if SIGSTOPped); owner b, waiting for the lease,
// takes over once it lapses, restores the 100 increments from the
// changelog and fences a: a's next increment fails with
// changelog.ErrFenced and is in no restore. b counts on to 150.
func TestFailoverFencesAPausedOwner(t *testing.T) {
	log, tables := setup(t, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var paused atomic.Bool
	aServing, bServing := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		aDone <- Run(ctx, Options{
			Dir: filepath.Join(t.TempDir(), "p"), Log: log, Leases: tables[0], Lease: "p.000",
			RenewEvery: 100 * time.Millisecond, renewalsPaused: paused.Load,
		}, func(sctx context.Context, b kv.Backend, _ Restored) error {
			close(aServing)
			for i := 0; i < 100; i++ {
				if _, err := increment(sctx, b, "counter"); err != nil {
					return err
				}
			}
			paused.Store(true) // the process stops: no more renewals
			select {
			case <-bServing:
			case <-ctx.Done():
				return ctx.Err()
			}
			// It resumes and writes before noticing anything.
			_, err := increment(context.Background(), b, "counter")
			return err
		})
	}()
	select {
	case <-aServing:
	case err := <-aDone:
		t.Fatalf("a: %v", err)
	}

	err := Run(ctx, Options{
		Dir: filepath.Join(t.TempDir(), "p"), Log: log, Leases: tables[1], Lease: "p.000",
		Poll: 50 * time.Millisecond, RenewEvery: 100 * time.Millisecond,
	}, func(sctx context.Context, b kv.Backend, res Restored) error {
		if n := read(t, b, "counter"); n != 100 {
			t.Errorf("b restored counter = %d, want 100 (restore %+v)", n, res)
		}
		close(bServing)
		if err := <-aDone; !errors.Is(err, changelog.ErrFenced) {
			t.Errorf("the paused owner's write after the take-over = %v, want ErrFenced", err)
		}
		for i := 0; i < 50; i++ {
			if _, err := increment(sctx, b, "counter"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("b: %v", err)
	}
	m := memstore.New()
	if _, err := log.Restore(ctx, m, 0); err != nil {
		t.Fatal(err)
	}
	if n := read(t, m, "counter"); n != 150 {
		t.Fatalf("the changelog holds counter = %d, want 150", n)
	}
}

// TestHandOverOnStop: an owner that stops releases its lease; the next
// one takes over at once (well within the TTL) and sees every write.
func TestHandOverOnStop(t *testing.T) {
	log, tables := setup(t, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "p")
	for i, tb := range tables {
		var restored Restored
		err := Run(ctx, Options{Dir: dir, Log: log, Leases: tb, Lease: "p.001", Poll: 20 * time.Millisecond},
			func(sctx context.Context, b kv.Backend, res Restored) error {
				restored = res
				if n := read(t, b, "counter"); n != 10*i {
					t.Errorf("owner %d starts with counter %d, want %d", i, n, 10*i)
				}
				for j := 0; j < 10; j++ {
					if _, err := increment(sctx, b, "counter"); err != nil {
						return err
					}
				}
				return nil
			})
		if err != nil {
			t.Fatalf("owner %d: %v", i, err)
		}
		if i == 1 && restored.Records == 0 {
			t.Errorf("the second owner restored nothing: %+v", restored)
		}
	}
}

// TestRefusesToWipeAForeignDirectory: a non-empty directory that Run did
// not make is left alone.
func TestRefusesToWipeAForeignDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := wipe(dir); !errors.Is(err, ErrNotPartitionDir) {
		t.Fatalf("wipe = %v, want ErrNotPartitionDir", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
		t.Fatalf("the file is gone: %v", err)
	}
}

// TestServingStopsWhenTheLeaseIsLost: an owner whose lease was taken over
// while it was not renewing learns it at its next renewal: its serve
// context is cancelled and Run returns lease.ErrLost.
func TestServingStopsWhenTheLeaseIsLost(t *testing.T) {
	log, tables := setup(t, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var paused atomic.Bool
	aServing := make(chan struct{})
	aDone := make(chan error, 1)
	go func() {
		aDone <- Run(ctx, Options{
			Dir: filepath.Join(t.TempDir(), "p"), Log: log, Leases: tables[0], Lease: "p.002",
			RenewEvery: 100 * time.Millisecond, renewalsPaused: paused.Load,
		}, func(sctx context.Context, b kv.Backend, _ Restored) error {
			paused.Store(true)
			close(aServing)
			<-sctx.Done()
			return sctx.Err()
		})
	}()
	<-aServing
	err := Run(ctx, Options{
		Dir: filepath.Join(t.TempDir(), "p"), Log: log, Leases: tables[1], Lease: "p.002", Poll: 50 * time.Millisecond,
	}, func(sctx context.Context, b kv.Backend, _ Restored) error {
		paused.Store(false) // a renews again, and finds the lease gone
		select {
		case err := <-aDone:
			if !errors.Is(err, lease.ErrLost) {
				t.Errorf("the old owner's Run = %v, want lease.ErrLost", err)
			}
		case <-ctx.Done():
			t.Error("the old owner went on serving after losing its lease")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("b: %v", err)
	}
}
