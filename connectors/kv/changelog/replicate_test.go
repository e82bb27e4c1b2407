package changelog

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// TestStoreReplicatesThroughTheChangelog: a Pebble store whose Replicator
// is a changelog Writer, written by concurrent Updates (so groups are
// pipelined), is reproduced exactly by a restore into a fresh store; once
// another owner takes the partition over, the old store's next write
// fails with ErrFenced and is not in the changelog.
func TestStoreReplicatesThroughTheChangelog(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	w, _, err := l.TakeOver(ctx, openPebble(t), 0, 1)
	if err != nil {
		t.Fatalf("TakeOver: %v", err)
	}
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{Replicator: w})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	const writers, rounds = 4, 50
	var wg sync.WaitGroup
	for g := 0; g < writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				key := []byte(fmt.Sprintf("k%d/%03d", g, i))
				fns := []kv.TxnFunc{
					func(tx kv.Txn) error { return tx.Set(key, []byte(fmt.Sprint(i)), int64(i)) },
					func(tx kv.Txn) error { return errors.New("refused") }, // nothing replicated
					func(tx kv.Txn) error {
						// a read-modify-write of a counter shared by all writers
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
						return tx.DeleteRange([]byte(fmt.Sprintf("k%d/%03d", g, i-5)), []byte(fmt.Sprintf("k%d/%03d", g, i-2)))
					})
				}
				if i%7 == 6 {
					fns = append(fns, func(tx kv.Txn) error { return tx.Delete([]byte(fmt.Sprintf("k%d/%03d", g, i-1))) })
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
	want := contents(t, s)
	if want["counter"].value != fmt.Sprint(writers*rounds) {
		t.Fatalf("counter = %v, want %d", want["counter"], writers*rounds)
	}

	restored := openPebble(t)
	if _, err := l.Restore(ctx, restored, 0); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := contents(t, restored); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored store differs from the original:\n got %v\nwant %v", got, want)
	}

	// Another owner takes over; the old store's next group is fenced.
	if _, _, err := l.TakeOver(ctx, openPebble(t), 0, 2); err != nil {
		t.Fatalf("second TakeOver: %v", err)
	}
	errs := make([]error, 1)
	err = s.Update(ctx, []kv.TxnFunc{func(tx kv.Txn) error { return tx.Set([]byte("stale"), []byte("1"), 0) }}, errs)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("the old owner's Update = %v, want ErrFenced", err)
	}
	again := openPebble(t)
	if _, err := l.Restore(ctx, again, 0); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := contents(t, again); !reflect.DeepEqual(got, want) {
		t.Fatalf("the fenced write reached the changelog:\n got %v\nwant %v", got, want)
	}
}
