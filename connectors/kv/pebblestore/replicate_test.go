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
	refuse  error    // returned by Replicate itself: the group is not applied
	inputs  []uint64 // the input of each group
}

func (f *fakeReplicator) Replicate(ws []kv.Write, input uint64) ([]byte, func() error, error) {
	if f.refuse != nil {
		return nil, nil, f.refuse
	}
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
	f.inputs = append(f.inputs, input)
	n := len(f.groups)
	f.mu.Unlock()
	return []byte(fmt.Sprintf("group %d", n)), func() error {
		if f.waiting != nil {
			f.waiting <- n
		}
		if f.hold != nil {
			<-f.hold
		}
		return f.fail
	}, nil
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

// TestPositionIsWrittenWithEachGroup: the position a Replicator returns is
// stored in its group's Pebble batch: it survives a reopen, is never
// replicated nor seen by Scan, a position set by a transaction
// (SetPosition, as a restore does) is kept unless the Replicator gives
// one, and a failed transaction's is dropped. A group the Replicator
// refuses is not applied: the store keeps the previous position and none
// of the group's writes.
func TestPositionIsWrittenWithEachGroup(t *testing.T) {
	dir := t.TempDir()
	rep := &fakeReplicator{}
	s, err := Open(dir, Options{Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	position := func(s *Store) string {
		t.Helper()
		p, err := s.Position()
		if err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	if p := position(s); p != "" {
		t.Fatalf("a new store's position = %q, want none", p)
	}
	update(t, s, set("a", "1", 0))
	update(t, s, set("b", "2", 0), set("c", "3", 0))
	if p := position(s); p != "group 2" {
		t.Fatalf("position = %q, want %q", p, "group 2")
	}
	setPos := func(pos string) kv.TxnFunc {
		return func(tx kv.Txn) error { return tx.(PositionSetter).SetPosition([]byte(pos)) }
	}
	// A group of position only, as the restore of a fence record: the
	// Replicator has no writes to copy but is still asked (it returns
	// the position of its copy, which wins).
	update(t, s, setPos("restored 7"))
	if got := rep.recorded(); len(got) != 3 || len(got[2]) != 0 {
		t.Fatalf("replicated %q: the position was replicated", got)
	}
	if p := position(s); p != "group 3" {
		t.Fatalf("position = %q, want the Replicator's %q", p, "group 3")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Without a Replicator (a restore), the transaction's position stays;
	// a failed transaction's is dropped.
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p := position(s); p != "group 3" {
		t.Fatalf("position after reopening = %q, want %q", p, "group 3")
	}
	errs := update(t, s, setPos("restored 8"), func(tx kv.Txn) error {
		_ = tx.(PositionSetter).SetPosition([]byte("failed"))
		return errBoom
	})
	if !errors.Is(errs[1], errBoom) {
		t.Fatalf("errs = %v", errs)
	}
	if p := position(s); p != "restored 8" {
		t.Fatalf("position = %q, want %q", p, "restored 8")
	}
	var keys []string
	update(t, s, func(tx kv.Txn) error {
		return tx.Scan(nil, nil, func(k, _ []byte, _ int64) (bool, error) {
			keys = append(keys, string(k))
			return true, nil
		})
	})
	if want := []string{"a", "b", "c"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("Scan saw %q, want %q", keys, want)
	}
}

// TestRefusedReplicationLeavesTheGroupUnapplied: when Replicate returns
// an error, the group fails and the store keeps neither its writes nor a
// new position, so the position still names everything the store holds.
func TestRefusedReplicationLeavesTheGroupUnapplied(t *testing.T) {
	dir := t.TempDir()
	rep := &fakeReplicator{}
	s, err := Open(dir, Options{Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	update(t, s, set("a", "1", 0))
	rep.refuse = errors.New("writer failed")
	errs := make([]error, 1)
	if err := s.Update(context.Background(), []kv.TxnFunc{set("b", "2", 0)}, errs); !errors.Is(err, rep.refuse) {
		t.Fatalf("Update = %v, want the refusal", err)
	}
	_ = s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if p, _ := s.Position(); string(p) != "group 1" {
		t.Fatalf("position = %q, want %q", p, "group 1")
	}
	var g got
	update(t, s, get("b", &g))
	if g.found {
		t.Fatalf("the refused group's write is in the store: %+v", g)
	}
}

// TestGroupCarriesTheHighestInputNoted: the Replicator is given the
// highest input position noted by the group's successful transactions.
func TestGroupCarriesTheHighestInputNoted(t *testing.T) {
	rep := &fakeReplicator{}
	s, err := Open(t.TempDir(), Options{Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	withInput := func(pos uint64, fail bool) kv.TxnFunc {
		return func(tx kv.Txn) error {
			kv.NoteInput(tx, pos)
			if err := tx.Set([]byte(fmt.Sprint("k", pos)), []byte("v"), 0); err != nil {
				return err
			}
			if fail {
				return errBoom
			}
			return nil
		}
	}
	update(t, s, withInput(5, false), withInput(9, true), withInput(7, false))
	update(t, s, set("x", "1", 0))
	if got, want := rep.inputs, []uint64{7, 0}; !reflect.DeepEqual(got, want) {
		t.Fatalf("inputs = %v, want %v", got, want)
	}
}
