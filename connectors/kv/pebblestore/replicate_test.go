package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
)

// fakeReplicator records the groups it is given; each group's wait blocks
// until the test releases it (when hold is set) and returns fail.
type fakeReplicator struct {
	mu      sync.Mutex
	groups  [][]string
	hold    chan struct{} // nil: waits return at once
	waiting chan int      // told the group number of each wait called
	fail    error
}

func (f *fakeReplicator) Replicate(ws []kv.Write) func() error {
	var g []string
	for _, w := range ws {
		switch w.Op {
		case kv.WriteSet:
			g = append(g, fmt.Sprintf("set %s=%s@%d", w.Key, w.Value, w.ExpireAt))
		case kv.WriteDelete:
			g = append(g, fmt.Sprintf("delete %s", w.Key))
		case kv.WriteDeleteRange:
			g = append(g, fmt.Sprintf("delete_range %s-%s", w.Key, w.End))
		}
	}
	f.mu.Lock()
	f.groups = append(f.groups, g)
	n := len(f.groups)
	f.mu.Unlock()
	return func() error {
		if f.waiting != nil {
			f.waiting <- n
		}
		if f.hold != nil {
			<-f.hold
		}
		return f.fail
	}
}

func (f *fakeReplicator) recorded() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.groups...)
}

// TestReplicatorGetsEachGroupsWrites: the Replicator receives the writes
// of the successful transactions of every group, in order, with the
// values and expiries as the transactions gave them, and nothing of a
// failed transaction or a group of reads.
func TestReplicatorGetsEachGroupsWrites(t *testing.T) {
	for _, noSync := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoSync=%v", noSync), func(t *testing.T) {
			rep := &fakeReplicator{}
			s, err := Open(t.TempDir(), Options{Replicator: rep, NoSync: noSync})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			errs := update(t, s,
				set("a", "1", 0),
				set("b", "2", 1_900_000_000_000),
				func(tx kv.Txn) error { // fails: rolled back, not replicated
					_ = tx.Set([]byte("x"), []byte("no"), 0)
					return errBoom
				},
				func(tx kv.Txn) error { return tx.Delete([]byte("a")) },
			)
			if !errors.Is(errs[2], errBoom) {
				t.Fatalf("errs = %v", errs)
			}
			var g got
			update(t, s, get("b", &g)) // reads only: no group to replicate
			update(t, s, func(tx kv.Txn) error { return tx.DeleteRange([]byte("a"), []byte("c")) })
			want := [][]string{
				{"set a=1@0", "set b=2@1900000000000", "delete a"},
				{"delete_range a-c"},
			}
			if got := rep.recorded(); !reflect.DeepEqual(got, want) {
				t.Fatalf("replicated %q, want %q", got, want)
			}
		})
	}
}

// TestResultsWaitForReplication: Update returns only after the group's
// replication wait has returned, and in commit order.
func TestResultsWaitForReplication(t *testing.T) {
	rep := &fakeReplicator{hold: make(chan struct{}), waiting: make(chan int, 4)}
	s, err := Open(t.TempDir(), Options{Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() {
		errs := make([]error, 1)
		done <- s.Update(context.Background(), []kv.TxnFunc{set("k", "v", 0)}, errs)
	}()
	select {
	case n := <-rep.waiting:
		if n != 1 {
			t.Fatalf("first wait is for group %d", n)
		}
	case err := <-done:
		t.Fatalf("Update returned (%v) without waiting for its group's replication", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Update returned (%v) while its group's replication was still waiting", err)
	default:
	}
	close(rep.hold)
	if err := <-done; err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// TestReplicationFailureFailsTheStore: a failed replication fails the
// group's Update and every later one, like a failed WAL sync.
func TestReplicationFailureFailsTheStore(t *testing.T) {
	fenced := errors.New("fenced")
	rep := &fakeReplicator{fail: fenced}
	s, err := Open(t.TempDir(), Options{Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	errs := make([]error, 1)
	err = s.Update(context.Background(), []kv.TxnFunc{set("k", "v", 0)}, errs)
	if !errors.Is(err, fenced) {
		t.Fatalf("Update = %v, want the replication error", err)
	}
	var g got
	err = s.Update(context.Background(), []kv.TxnFunc{get("k", &g)}, errs)
	if !errors.Is(err, ErrFailed) || !errors.Is(err, fenced) {
		t.Fatalf("a later Update = %v, want ErrFailed naming the replication error", err)
	}
}
