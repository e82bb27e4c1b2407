package changelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// forwarder is a Replicator that forwards to a Writer once one is set, as
// a partition owner does: the restore before it is not replicated.
type forwarder struct{ w atomic.Pointer[Writer] }

func (f *forwarder) Replicate(ws []kv.Write, input uint64) ([]byte, func() error, error) {
	w := f.w.Load()
	if w == nil {
		return nil, nil, nil
	}
	return w.Replicate(ws, input)
}

// quiet keeps Pebble from flushing or compacting during a test, so that a
// copy of the store's directory taken while it is open is the image a
// crash would leave: the synced WAL and the files it refers to.
func quiet(o *pebble.Options) {
	o.DisableAutomaticCompactions = true
	o.MemTableSize = 64 << 20
}

// owned is a partition store served through a writer, as owner.Run
// serves it.
type owned struct {
	dir   string
	store *pebblestore.Store
	w     *Writer
	res   Restored
}

// takeOver opens the store in dir, fences with epoch and catches the
// store up from its position, then replicates its groups through the new
// writer.
func takeOver(t *testing.T, l *Log, dir string, epoch uint64) (*owned, error) {
	t.Helper()
	ctx := testContext(t)
	fwd := &forwarder{}
	s, err := pebblestore.Open(dir, pebblestore.Options{Replicator: fwd, Pebble: quiet})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.Position()
	if err != nil {
		t.Fatal(err)
	}
	from, err := ParsePosition(raw)
	if err != nil {
		t.Fatal(err)
	}
	w, err := l.Fence(ctx, epoch)
	if err != nil {
		t.Fatal(err)
	}
	res, err := w.CatchUp(ctx, s, from)
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	fwd.w.Store(w)
	o := &owned{dir: dir, store: s, w: w, res: res}
	t.Cleanup(func() { _ = s.Close() })
	return o, nil
}

// workload writes rounds groups from 4 concurrent goroutines: sets with
// and without expiry, failed transactions, a shared counter, deletions
// and range deletions.
func workload(t *testing.T, s kv.Backend, tag string, rounds int) {
	t.Helper()
	ctx := testContext(t)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				key := []byte(fmt.Sprintf("k%s%d/%03d", tag, g, i))
				fns := []kv.TxnFunc{
					func(tx kv.Txn) error { return tx.Set(key, []byte(fmt.Sprint(i)), int64(i%3)) },
					func(tx kv.Txn) error { return errors.New("refused") },
					func(tx kv.Txn) error {
						v, _, _, err := tx.Get([]byte("counter"))
						if err != nil {
							return err
						}
						n := 0
						fmt.Sscan(string(v), &n)
						return tx.Set([]byte("counter"), []byte(fmt.Sprint(n+1)), 0)
					},
				}
				if i%10 == 9 {
					fns = append(fns, func(tx kv.Txn) error {
						return tx.DeleteRange([]byte(fmt.Sprintf("k%s%d/%03d", tag, g, i-5)), []byte(fmt.Sprintf("k%s%d/%03d", tag, g, i-2)))
					})
				}
				if i%7 == 6 {
					fns = append(fns, func(tx kv.Txn) error { return tx.Delete([]byte(fmt.Sprintf("k%s%d/%03d", tag, g, i-1))) })
				}
				errs := make([]error, len(fns))
				if err := s.Update(ctx, fns, errs); err != nil {
					t.Errorf("Update: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// copyDir copies the files of src into a new directory: a crash image of
// a quiet store (see quiet).
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// fullRestore restores the whole changelog into a fresh store.
func fullRestore(t *testing.T, l *Log) map[string]entry {
	t.Helper()
	m := memstore.New()
	if _, err := l.Restore(testContext(t), m, 0); err != nil {
		t.Fatalf("full restore: %v", err)
	}
	return contents(t, m)
}

// TestCatchUpReplaysOnlyTheTail: an owner's store, stopped cleanly or
// abandoned (a crash image of it, its writer never stopped), is taken over
// again after another owner wrote more: the take-over replays only the
// records after the store's position (the other owner's groups and the
// fences), and the store is then identical to a full restore; it goes on
// replicating, and a second take-over of the same directory resumes too.
func TestCatchUpReplaysOnlyTheTail(t *testing.T) {
	for _, abandon := range []bool{false, true} {
		t.Run(fmt.Sprintf("abandon=%v", abandon), func(t *testing.T) {
			l, _ := openLog(t, Options{})
			a, err := takeOver(t, l, filepath.Join(t.TempDir(), "a"), 1)
			if err != nil {
				t.Fatal(err)
			}
			workload(t, a.store, "a", 30)
			dir := a.dir
			if abandon {
				dir = copyDir(t, a.dir) // a stays open, its writer unfenced
			} else if err := a.store.Close(); err != nil {
				t.Fatal(err)
			}
			raw, _ := func() ([]byte, error) {
				s, err := pebblestore.Open(dir, pebblestore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				return s.Position()
			}()
			pos, err := ParsePosition(raw)
			if err != nil || pos.Seq == 0 || pos.Epoch != 1 {
				t.Fatalf("the store's position = %+v, %v: want one of epoch 1", pos, err)
			}

			b, err := takeOver(t, l, filepath.Join(t.TempDir(), "b"), 2)
			if err != nil {
				t.Fatal(err)
			}
			if b.res.After != 0 {
				t.Fatalf("a fresh store resumed from %d", b.res.After)
			}
			workload(t, b.store, "b", 10)
			if err := b.store.Close(); err != nil {
				t.Fatal(err)
			}
			tail := Restored{}
			{
				m := memstore.New()
				var err error
				if tail, err = l.Restore(testContext(t), m, pos.Seq); err != nil {
					t.Fatal(err)
				}
			}

			c, err := takeOver(t, l, dir, 3)
			if err != nil {
				t.Fatalf("take over a's store: %v", err)
			}
			if c.res.After != pos.Seq {
				t.Fatalf("the take-over restored after %d, want after the store's position %d (%+v)", c.res.After, pos.Seq, c.res)
			}
			if c.res.Writes != tail.Writes || c.res.Records != tail.Records+MaxInFlight {
				t.Fatalf("the take-over applied %d records, %d writes; the tail is %d records, %d writes, plus %d fences",
					c.res.Records, c.res.Writes, tail.Records, tail.Writes, MaxInFlight)
			}
			want := fullRestore(t, l)
			if got := contents(t, c.store); !reflect.DeepEqual(got, want) {
				t.Fatalf("the resumed store differs from a full restore:\n got %v\nwant %v", got, want)
			}
			if want["counter"].value != fmt.Sprint(4*40) {
				t.Fatalf("counter = %v, want %d", want["counter"], 4*40)
			}
			workload(t, c.store, "c", 5)
			if err := c.store.Close(); err != nil {
				t.Fatal(err)
			}
			d, err := takeOver(t, l, dir, 4)
			if err != nil {
				t.Fatal(err)
			}
			if d.res.After == 0 || d.res.Writes != 0 || d.res.Records != MaxInFlight {
				t.Fatalf("the second take-over of the store = %+v, want only the fences replayed", d.res)
			}
			if got, want := contents(t, d.store), fullRestore(t, l); !reflect.DeepEqual(got, want) {
				t.Fatalf("the resumed store differs from a full restore:\n got %v\nwant %v", got, want)
			}
		})
	}
}

// TestCatchUpRefusesAStoreTheChangelogDoesNotContinue: a store holding a
// group whose append was fenced, a position behind a newer fence (a stale
// append the stream stored), beyond the stream's end, or whose record was
// purged, is refused (ErrDiverged, ErrGap) with nothing written to it;
// wiped and caught up from the start it equals a full restore.
func TestCatchUpRefusesAStoreTheChangelogDoesNotContinue(t *testing.T) {
	t.Run("fenced group", func(t *testing.T) {
		l, _ := openLog(t, Options{})
		a, err := takeOver(t, l, filepath.Join(t.TempDir(), "a"), 1)
		if err != nil {
			t.Fatal(err)
		}
		workload(t, a.store, "a", 10)
		// Another owner fences a; a's next group is applied locally, then
		// refused by the stream.
		if _, err := l.Fence(testContext(t), 2); err != nil {
			t.Fatal(err)
		}
		errs := make([]error, 1)
		err = a.store.Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error {
			return tx.Set([]byte("fenced"), []byte("1"), 0)
		}}, errs)
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("a's write after the fence = %v, want ErrFenced", err)
		}
		_ = a.store.Close()
		s, err := pebblestore.Open(a.dir, pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		before := contents(t, s)
		if _, ok := before["fenced"]; !ok {
			t.Fatal("the fenced group is not in a's store: the test proves nothing")
		}
		_ = s.Close()
		if _, err := takeOver(t, l, a.dir, 3); !errors.Is(err, ErrDiverged) {
			t.Fatalf("take over a's store = %v, want ErrDiverged", err)
		}
		s, err = pebblestore.Open(a.dir, pebblestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got := contents(t, s); !reflect.DeepEqual(got, before) {
			t.Fatal("the refused take-over changed the store")
		}
		_ = s.Close()
		if err := os.RemoveAll(a.dir); err != nil {
			t.Fatal(err)
		}
		c, err := takeOver(t, l, a.dir, 4)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := contents(t, c.store), fullRestore(t, l); !reflect.DeepEqual(got, want) || c.res.After != 0 {
			t.Fatalf("after a wipe: %+v\n got %v\nwant %v", c.res, got, want)
		}
	})

	// The other cases give CatchUp a position directly.
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	old := l.NewWriter(0, 1)
	r := Record{}
	r.Set([]byte("before"), []byte("1"), 0)
	if _, err := old.Append(ctx, &r); err != nil {
		t.Fatal(err)
	}
	fence, err := l.NewWriter(old.Last(), 2).Append(ctx, &Record{Fence: true})
	if err != nil {
		t.Fatal(err)
	}
	behind := Record{}
	behind.Set([]byte("behind"), []byte("1"), 0)
	stale := l.NewWriter(fence, 1)
	stalePos, wait, err := stale.submit(ctx, &behind)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err) // stored: this writer saw no refusal
	}
	good, wait, err := l.NewWriter(stale.Last(), 2).submit(ctx, &r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wait(); err != nil {
		t.Fatal(err)
	}
	// The stale record is restored by nobody, so a store positioned on it
	// holds a write no restore has.
	for _, c := range []struct {
		name string
		from Position
		want error
	}{
		{"behind a newer fence", stalePos, ErrDiverged},
		{"another record at the sequence", Position{Seq: good.Seq, Epoch: 2, Sum: good.Sum + 1}, ErrDiverged},
		{"beyond the end", Position{Seq: good.Seq + 300, Epoch: 2, Sum: good.Sum}, ErrDiverged},
		{"the same record", good, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, err := l.Fence(ctx, 3)
			if err != nil {
				t.Fatal(err)
			}
			m := memstore.New()
			res, err := w.CatchUp(ctx, m, c.from)
			if !errors.Is(err, c.want) && (c.want != nil || err != nil) {
				t.Fatalf("CatchUp = %v, want %v", err, c.want)
			}
			if c.want != nil && len(contents(t, m)) != 0 {
				t.Fatalf("a refused CatchUp wrote to the store: %v", contents(t, m))
			}
			if c.want == nil && (res.After != good.Seq || res.Writes != 0) {
				t.Fatalf("CatchUp = %+v, want only the fences after %d", res, good.Seq)
			}
		})
	}
	t.Run("purged", func(t *testing.T) {
		last, err := l.Last(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.stream.Purge(ctx, jetstream.WithPurgeSequence(last)); err != nil {
			t.Fatal(err)
		}
		w, err := l.Fence(ctx, 4)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.CatchUp(ctx, memstore.New(), good); !errors.Is(err, ErrGap) {
			t.Fatalf("CatchUp from a purged record = %v, want ErrGap", err)
		}
	})
}
