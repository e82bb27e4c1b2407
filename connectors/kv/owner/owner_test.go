package owner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
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
// changelog.ErrFenced and is in no restore. b counts on to 150. When a
// takes the partition back, its local store, which holds the fenced
// increment (of another key), is wiped and restored from the start.
func TestFailoverFencesAPausedOwner(t *testing.T) {
	log, tables := setup(t, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var paused atomic.Bool
	aServing, bServing := make(chan struct{}), make(chan struct{})
	aDone := make(chan error, 1)
	aDir := filepath.Join(t.TempDir(), "p")
	go func() {
		aDone <- Run(ctx, Options{
			Dir: aDir, Log: log, Leases: tables[0], Lease: "p.000",
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
			_, err := increment(context.Background(), b, "fenced")
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

	err = Run(ctx, Options{Dir: aDir, Log: log, Leases: tables[0], Lease: "p.000", Poll: 50 * time.Millisecond},
		func(sctx context.Context, b kv.Backend, res Restored) error {
			if n, f := read(t, b, "counter"), read(t, b, "fenced"); n != 150 || f != 0 || res.After != 0 {
				t.Errorf("a back on its store: counter %d, fenced %d, restored after %d; want 150, 0, from a full restore", n, f, res.After)
			}
			return nil
		})
	if err != nil {
		t.Fatalf("a again: %v", err)
	}
}

// TestRestartReplaysOnlyTheTail: an owner that stops and takes the
// partition again on the same directory, or after another owner wrote
// more, replays only the changelog records after its store's position.
func TestRestartReplaysOnlyTheTail(t *testing.T) {
	log, tables := setup(t, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	aDir, bDir := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	type turn struct {
		dir       string
		table     *lease.Table
		full      bool // a full restore is expected
		wantWrite int  // the writes the restore must apply
	}
	for i, tr := range []turn{
		{aDir, tables[0], true, 0},
		{aDir, tables[0], false, 0},  // restart: nothing new
		{bDir, tables[1], true, 20},  // another owner: everything
		{aDir, tables[0], false, 10}, // back: b's 10 increments only
	} {
		err := Run(ctx, Options{Dir: tr.dir, Log: log, Leases: tr.table, Lease: "p.003", Poll: 20 * time.Millisecond},
			func(sctx context.Context, b kv.Backend, res Restored) error {
				if full := res.After == 0; full != tr.full || res.Writes != tr.wantWrite {
					t.Errorf("turn %d: restored after %d with %d writes, want full=%v with %d writes (%+v)",
						i, res.After, res.Writes, tr.full, tr.wantWrite, res)
				}
				if n := read(t, b, "counter"); n != 10*i {
					t.Errorf("turn %d starts with counter %d, want %d", i, n, 10*i)
				}
				for j := 0; j < 10; j++ {
					if _, err := increment(sctx, b, "counter"); err != nil {
						return err
					}
				}
				return nil
			})
		if err != nil {
			t.Fatalf("turn %d: %v", i, err)
		}
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

// TestLeaseRenewedAtOnceAfterASlowTakeOver: the take-over renews
// nothing, so an owner whose take-over took most of the lease's deadline
// renews as soon as it serves, not a renew interval later: with a TTL of
// 12 s (deadline 10.8 s, renew interval 4 s) and a take-over of more
// than 7.5 s, a first renewal 4 s after it would find the lease lost.
// The owner keeps serving past the deadline of its acquisition and past
// the time such a first renewal would come (acquisition + 7.5 s + the
// fence and restore + 4 s).
func TestLeaseRenewedAtOnceAfterASlowTakeOver(t *testing.T) {
	log, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := natstest.JetStream(t)
	stream := natstest.Name("ownerslow")
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), stream) })
	table, err := lease.Open(ctx, js, stream, "a", lease.Options{TTL: 12 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var acquiredAt, servedAt time.Time
	err = Run(ctx, Options{
		Dir: filepath.Join(t.TempDir(), "p"), Log: log, Leases: table, Lease: "p.004",
		Acquired: func(uint64) {
			acquiredAt = time.Now()
			time.Sleep(7500 * time.Millisecond) // a slow fence and restore
		},
	}, func(sctx context.Context, b kv.Backend, _ Restored) error {
		servedAt = time.Now()
		// Serve until past the acquisition's deadline (10.8 s) and a
		// first renewal a renew interval after the take-over (11.5 s
		// and more).
		select {
		case <-sctx.Done():
			return fmt.Errorf("serving stopped %v after the acquisition: %w", time.Since(acquiredAt).Round(time.Millisecond), context.Cause(sctx))
		case <-time.After(time.Until(acquiredAt.Add(16 * time.Second))):
			return nil
		}
	})
	if servedAt.IsZero() && errors.Is(err, lease.ErrLost) {
		t.Skipf("the fence and restore alone outlasted the lease's deadline on this machine: %v", err)
	}
	if err != nil {
		t.Fatalf("Run: %v, want the owner still serving 16 s after acquiring its lease", err)
	}
}

// TestOwnerCheckpoints: an owner with a small CheckpointEvery writes
// checkpoints as it goes and purges the log; a new owner on a fresh
// directory restores from the latest checkpoint and the log after it.
func TestOwnerCheckpoints(t *testing.T) {
	log, tables := setup(t, "a", "b")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		written []changelog.Checkpointed
	)
	err := Run(ctx, Options{
		Dir: filepath.Join(t.TempDir(), "a"), Log: log, Leases: tables[0], Lease: "p.004", Poll: 20 * time.Millisecond,
		CheckpointEvery: 8 << 10,
		OnCheckpoint: func(c changelog.Checkpointed, err error) {
			if err != nil {
				t.Errorf("checkpoint: %v", err)
				return
			}
			mu.Lock()
			written = append(written, c)
			mu.Unlock()
		},
	}, func(sctx context.Context, b kv.Backend, _ Restored) error {
		// Until the log was purged at least twice.
		for i := 0; ; i++ {
			if _, err := increment(sctx, b, "k"+strconv.Itoa(i%50)); err != nil {
				return err
			}
			if i%100 == 99 {
				time.Sleep(2 * checkpointPoll) // let the checkpointer run
				n := 0
				mu.Lock()
				for _, c := range written {
					if c.PurgedBelow != 0 {
						n++
					}
				}
				mu.Unlock()
				if n >= 2 && i >= 1000 {
					return nil
				}
				if i >= 20000 {
					return fmt.Errorf("%d checkpoints purged the log after %d increments, want 2", n, i+1)
				}
			}
		}
	})
	if err != nil {
		t.Fatalf("a: %v", err)
	}
	m := memstore.New()
	want, err := log.Restore(ctx, m, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want.Checkpoint == 0 {
		t.Fatalf("restore = %+v, want it from a checkpoint", want)
	}
	err = Run(ctx, Options{Dir: filepath.Join(t.TempDir(), "b"), Log: log, Leases: tables[1], Lease: "p.004", Poll: 20 * time.Millisecond},
		func(sctx context.Context, b kv.Backend, res Restored) error {
			if res.Checkpoint == 0 {
				t.Errorf("b restored %+v, want it from a checkpoint", res)
			}
			total := 0
			for i := 0; i < 50; i++ {
				total += read(t, b, "k"+strconv.Itoa(i))
				if got, want := read(t, b, "k"+strconv.Itoa(i)), read(t, m, "k"+strconv.Itoa(i)); got != want {
					t.Errorf("k%d = %d, the changelog has %d", i, got, want)
				}
			}
			if total%100 != 0 || total < 1000 {
				t.Errorf("b restored %d increments, want the multiple of 100 a wrote", total)
			}
			return nil
		})
	if err != nil {
		t.Fatalf("b: %v", err)
	}
}

// TestAbandonedOwnerResumes: an owner that stops without releasing its
// lease (as if killed) takes the partition back once the lease lapses and
// replays only the fences: its store's position is still in the stream.
func TestAbandonedOwnerResumes(t *testing.T) {
	log, tables := setup(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "a")
	for turn, abandon := range []bool{true, false} {
		start := time.Now()
		err := Run(ctx, Options{Dir: dir, Log: log, Leases: tables[0], Lease: "p.005", Poll: 50 * time.Millisecond, abandon: abandon},
			func(sctx context.Context, b kv.Backend, res Restored) error {
				if turn == 1 && (res.After == 0 || res.Writes != 0) {
					t.Errorf("after the abandon: %+v, want only the fences replayed", res)
				}
				if n := read(t, b, "counter"); n != 20*turn {
					t.Errorf("turn %d starts with counter %d, want %d", turn, n, 20*turn)
				}
				for i := 0; i < 20; i++ {
					if _, err := increment(sctx, b, "counter"); err != nil {
						return err
					}
				}
				return nil
			})
		if err != nil {
			t.Fatalf("turn %d: %v", turn, err)
		}
		if turn == 1 && time.Since(start) < time.Second {
			t.Errorf("took the partition back after %v: the abandoned lease was released", time.Since(start))
		}
	}
}
