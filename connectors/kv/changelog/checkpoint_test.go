package changelog

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
)

// liveContents is contents without the records expired at now.
func liveContents(t *testing.T, b kv.Backend, now time.Time) map[string]entry {
	t.Helper()
	got := contents(t, b)
	for k, e := range got {
		if e.expireAt != 0 && e.expireAt <= now.UnixMilli() {
			delete(got, k)
		}
	}
	return got
}

func streamState(t *testing.T, l *Log) jetstream.StreamState {
	t.Helper()
	info, err := l.info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// overwrite runs groups of puts over a small key space from 4 goroutines
// until stop returns true (checked after each group by goroutine 0).
func overwrite(t *testing.T, s kv.Backend, round int, groups int) {
	t.Helper()
	ctx := testContext(t)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < groups; i++ {
				fns := []kv.TxnFunc{func(tx kv.Txn) error {
					for j := 0; j < 5; j++ {
						key := fmt.Sprintf("key%03d", (g*997+i*5+j)%500)
						val := fmt.Sprintf("%0100d", round*1_000_000+i)
						if err := tx.Set([]byte(key), []byte(val), 0); err != nil {
							return err
						}
					}
					return nil
				}}
				errs := make([]error, 1)
				if err := s.Update(ctx, fns, errs); err != nil || errs[0] != nil {
					t.Errorf("Update: %v %v", err, errs[0])
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestCheckpointsBoundTheLog: an owner writing the same 500 keys over and
// over checkpoints every 64 KiB of log: after 20 checkpoints the stream
// holds no more than after the second (the log below each checkpoint is
// purged, all but the window a resuming store needs), far less than was
// appended. Groups are written while each checkpoint is. A restore from
// the start reads the latest checkpoint and the
// log after it and equals the store, expired keys left out; the store
// itself resumes from its position.
func TestCheckpointsBoundTheLog(t *testing.T) {
	const every = 64 << 10
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	o, err := takeOver(t, l, filepath.Join(t.TempDir(), "a"), 1)
	if err != nil {
		t.Fatal(err)
	}
	// A key already expired, and one that expires much later: the
	// checkpoint leaves the first out.
	errs := make([]error, 3)
	if err := o.store.Update(ctx, []kv.TxnFunc{
		func(tx kv.Txn) error { return tx.Set([]byte("expired"), []byte("x"), 1) },
		func(tx kv.Txn) error { return tx.Set([]byte("later"), []byte("y"), 4_000_000_000_000) },
		func(tx kv.Txn) error {
			for i := 0; i < 500; i++ {
				if err := tx.Set([]byte(fmt.Sprintf("key%03d", i)), []byte("0"), 0); err != nil {
					return err
				}
			}
			return nil
		},
	}, errs); err != nil || errors.Join(errs...) != nil {
		t.Fatal(err, errs)
	}
	var sizes []uint64
	for ck := 1; ck <= 20; ck++ {
		for round := 0; o.w.LogBytes() < every; round++ {
			overwrite(t, o.store, ck*100+round, 10)
		}
		// The store goes on writing while the checkpoint is written.
		done := make(chan struct{})
		go func() {
			defer close(done)
			overwrite(t, o.store, ck*100+99, 3)
		}()
		snap := o.store.Snapshot()
		c, err := o.w.Checkpoint(ctx, snap, time.Now())
		_ = snap.Close()
		<-done
		if err != nil {
			t.Fatalf("checkpoint %d: %v", ck, err)
		}
		if c.Keys != 501 || c.Chunks == 0 {
			t.Fatalf("checkpoint %d = %+v, want the 501 live keys", ck, c)
		}
		st := streamState(t, l)
		sizes = append(sizes, st.Msgs)
		t.Logf("checkpoint %d: %+v; stream: %d messages, %d bytes, first %d, last %d", ck, c, st.Msgs, st.Bytes, st.FirstSeq, st.LastSeq)
	}
	st := streamState(t, l)
	for i := 2; i < len(sizes); i++ {
		if sizes[i] > sizes[1]*3/2 {
			t.Fatalf("after checkpoint %d the stream holds %d messages, after the second %d: not bounded (%v)", i+1, sizes[i], sizes[1], sizes)
		}
	}
	if st.LastSeq < 2*st.Msgs {
		t.Fatalf("%d messages appended, %d kept: the log was not purged", st.LastSeq, st.Msgs)
	}

	overwrite(t, o.store, 9999, 5) // a tail after the last checkpoint
	now := time.Now()
	want := liveContents(t, o.store, now)
	if _, ok := want["later"]; !ok || len(want) != 501 {
		t.Fatalf("the store holds %d live keys", len(want))
	}
	m := memstore.New()
	res, err := l.Restore(ctx, m, 0)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if res.Checkpoint == 0 || res.CheckpointKeys != 501 || res.Writes == 0 {
		t.Fatalf("Restore = %+v, want the latest checkpoint and the log after it", res)
	}
	if got := contents(t, m); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored from the checkpoint:\n got %v\nwant %v", got, want)
	}
	if err := o.store.Close(); err != nil {
		t.Fatal(err)
	}
	// The store resumes from its position (kept by the purge), a fresh
	// one restores from the checkpoint.
	again, err := takeOver(t, l, o.dir, 2)
	if err != nil {
		t.Fatalf("take over the store again: %v", err)
	}
	if again.res.After == 0 || again.res.Writes != 0 {
		t.Fatalf("the store's take-over = %+v, want only the fences after its position", again.res)
	}
	fresh, err := takeOver(t, l, filepath.Join(t.TempDir(), "b"), 3)
	if err != nil {
		t.Fatalf("take over a fresh store: %v", err)
	}
	if fresh.res.Checkpoint == 0 {
		t.Fatalf("the fresh store's take-over = %+v, want it from the checkpoint", fresh.res)
	}
	if got := liveContents(t, fresh.store, now); !reflect.DeepEqual(got, want) {
		t.Fatalf("a fresh store taken over:\n got %v\nwant %v", got, want)
	}
}

// TestTornCheckpointIsIgnored: a checkpoint whose writer stopped after its
// chunks (no manifest) is ignored: restores use the checkpoint before it,
// and nothing was purged for it.
func TestTornCheckpointIsIgnored(t *testing.T) {
	var tear bool
	errTorn := errors.New("killed before the manifest")
	l, _ := openLog(t, Options{beforeManifest: func() error {
		if tear {
			return errTorn
		}
		return nil
	}})
	ctx := testContext(t)
	o, err := takeOver(t, l, filepath.Join(t.TempDir(), "a"), 1)
	if err != nil {
		t.Fatal(err)
	}
	checkpoint := func() (Checkpointed, error) {
		snap := o.store.Snapshot()
		defer snap.Close()
		return o.w.Checkpoint(ctx, snap, time.Now())
	}
	overwrite(t, o.store, 1, 20)
	first, err := checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	overwrite(t, o.store, 2, 20)
	tear = true
	before := streamState(t, l)
	if _, err := checkpoint(); !errors.Is(err, errTorn) {
		t.Fatalf("torn checkpoint = %v", err)
	}
	if st := streamState(t, l); st.FirstSeq != before.FirstSeq || st.LastSeq <= before.LastSeq {
		t.Fatalf("the torn checkpoint purged (%d -> %d) or wrote nothing (%d -> %d)", before.FirstSeq, st.FirstSeq, before.LastSeq, st.LastSeq)
	}
	overwrite(t, o.store, 3, 5)
	m := memstore.New()
	res, err := l.Restore(ctx, m, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint != first.Seq || res.Torn != 0 {
		t.Fatalf("Restore = %+v, want it from the first checkpoint (manifest at %d), no record torn", res, first.Seq)
	}
	if got, want := contents(t, m), contents(t, o.store); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored:\n got %v\nwant %v", got, want)
	}
}

// fakeSnapshot is a Snapshot of given keys at a given position.
type fakeSnapshot struct {
	pos  Position
	keys []string
}

func (f fakeSnapshot) Position() ([]byte, error) { return f.pos.Append(nil), nil }
func (f fakeSnapshot) Scan(_, _ []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error {
	for _, k := range f.keys {
		if more, err := fn([]byte(k), []byte("bogus"), 0); err != nil || !more {
			return err
		}
	}
	return nil
}

// TestFencedOwnerCannotCheckpoint: a writer fenced by a new owner fails
// its checkpoint with ErrFenced, writes no manifest and purges nothing;
// a checkpoint of an old writer that the stream stored behind the new
// owner's fence (it never saw the refusal) is ignored by restores.
func TestFencedOwnerCannotCheckpoint(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	o, err := takeOver(t, l, filepath.Join(t.TempDir(), "a"), 1)
	if err != nil {
		t.Fatal(err)
	}
	overwrite(t, o.store, 1, 20)
	if _, err := l.Fence(ctx, 2); err != nil {
		t.Fatal(err)
	}
	before := streamState(t, l)
	snap := o.store.Snapshot()
	_, err = o.w.Checkpoint(ctx, snap, time.Now())
	_ = snap.Close()
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("the fenced owner's checkpoint = %v, want ErrFenced", err)
	}
	if st := streamState(t, l); st.FirstSeq != before.FirstSeq || st.LastSeq != before.LastSeq {
		t.Fatalf("the fenced checkpoint changed the stream: %+v -> %+v", before, st)
	}
	if _, err := l.stream.GetLastMsgForSubject(ctx, l.opts.Subject+manifestSuffix); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Fatalf("a manifest is in the stream: %v", err)
	}

	// A stale writer that expects the fence's sequence (its refused
	// message left out: it would fail the checkpoint and keep it from
	// purging) stores a whole checkpoint behind it.
	l, _ = openLog(t, Options{})
	r := Record{}
	r.Set([]byte("before"), []byte("1"), 0)
	if _, err := l.NewWriter(0, 1).Append(ctx, &r); err != nil {
		t.Fatal(err)
	}
	fence, err := l.NewWriter(1, 2).Append(ctx, &Record{Fence: true})
	if err != nil {
		t.Fatal(err)
	}
	want := fullRestore(t, l)
	stale := l.NewWriter(fence, 1)
	c, err := stale.Checkpoint(ctx, fakeSnapshot{pos: Position{Seq: 1, Epoch: 1}, keys: []string{"bogus"}}, time.Now())
	if err != nil {
		t.Fatalf("the stale checkpoint was refused (%v): the test proves nothing", err)
	}
	m := memstore.New()
	res, err := l.Restore(ctx, m, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Checkpoint != 0 {
		t.Fatalf("Restore used the stale checkpoint at %d (%+v)", c.Seq, res)
	}
	if got := contents(t, m); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored:\n got %v\nwant %v", got, want)
	}
}

// TestInputIsRestored: the input position noted by a store's
// transactions is in each record; a restore from the start, a take-over
// that resumes from the store's position and one that starts from a
// checkpoint all report the highest.
func TestInputIsRestored(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	o, err := takeOver(t, l, filepath.Join(t.TempDir(), "a"), 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []uint64{5, 9, 7} {
		errs := make([]error, 1)
		if err := o.store.Update(ctx, []kv.TxnFunc{func(tx kv.Txn) error {
			kv.NoteInput(tx, in)
			return tx.Set([]byte(fmt.Sprint("in", in)), []byte("1"), 0)
		}}, errs); err != nil || errs[0] != nil {
			t.Fatal(err, errs[0])
		}
	}
	if res, err := l.Restore(ctx, memstore.New(), 0); err != nil || res.Input != 9 {
		t.Fatalf("Restore = %+v, %v; want input 9", res, err)
	}
	if err := o.store.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := takeOver(t, l, o.dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	if again.res.After == 0 || again.res.Input != 9 {
		t.Fatalf("resumed take-over = %+v, want input 9 from the store's position", again.res)
	}
	snap := again.store.Snapshot()
	_, err = again.w.Checkpoint(ctx, snap, time.Now())
	_ = snap.Close()
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := takeOver(t, l, filepath.Join(t.TempDir(), "b"), 3)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.res.Checkpoint == 0 || fresh.res.Input != 9 {
		t.Fatalf("take-over from the checkpoint = %+v, want input 9", fresh.res)
	}
}

// TestSlotsAreGivenBackInSubmissionOrder: a submission whose wait has not
// been called holds back the slots of every later one, even if their
// waits were called (by another goroutine, as a checkpoint's are): a
// fenced writer can never have more than MaxInFlight messages published
// from its refused one on, which the take-over's fence run relies on.
func TestSlotsAreGivenBackInSubmissionOrder(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	w := l.NewWriter(0, 1)
	r := Record{}
	r.Set([]byte("k"), []byte("v"), 0)
	first := w.Submit(ctx, &r)
	for i := 1; i < MaxInFlight; i++ {
		if _, err := w.Submit(ctx, &r)(); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := w.Submit(short, &r)(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a submission past MaxInFlight from the oldest unsettled one = %v, want it blocked", err)
	}
	if _, err := first(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Submit(ctx, &r)(); err != nil {
		t.Fatalf("once the oldest is settled: %v", err)
	}
}
