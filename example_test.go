package flowrun_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strconv"
	"time"

	"github.com/flowrun/flowrun"
)

// openExample opens a store in a fresh temporary directory; the returned
// function closes it and removes the directory.
func openExample(opts flowrun.StoreOptions) (*flowrun.Store, func()) {
	dir, err := os.MkdirTemp("", "flowrun-example")
	if err != nil {
		log.Fatal(err)
	}
	st, err := flowrun.OpenStore(context.Background(), dir, opts)
	if err != nil {
		log.Fatal(err)
	}
	return st, func() {
		if err := st.Close(); err != nil {
			log.Fatal(err)
		}
		os.RemoveAll(dir)
	}
}

func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "flowrun-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	st, err := flowrun.OpenStore(ctx, dir, flowrun.StoreOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()

	players := st.Namespace("game-7")
	// Put returns once the write is on disk: it survives a crash.
	if err := players.Put(ctx, "player:ada", []byte(`{"hp": 10, "room": "hall"}`), flowrun.PutOptions{}); err != nil {
		log.Fatal(err)
	}
	v, found, err := players.Get(ctx, "player:ada")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(found, string(v))
	// Output: true {"hp":10,"room":"hall"}
}

func ExampleNamespace_GetOr() {
	st, done := openExample(flowrun.StoreOptions{})
	defer done()
	ctx := context.Background()
	settings := st.Namespace("settings")

	v, err := settings.GetOr(ctx, "theme", []byte(`"light"`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(v))
	// Output: "light"
}

func ExampleNamespace_Increment() {
	st, done := openExample(flowrun.StoreOptions{})
	defer done()
	ctx := context.Background()
	stats := st.Namespace("stats")

	for range 3 {
		if _, err := stats.Increment(ctx, "logins", 1); err != nil {
			log.Fatal(err)
		}
	}
	n, err := stats.Increment(ctx, "logins", 10)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(n)

	// A value that is not a number is refused, and left as it was.
	_ = stats.Put(ctx, "name", []byte(`"ada"`), flowrun.PutOptions{})
	_, err = stats.Increment(ctx, "name", 1)
	fmt.Println(errors.Is(err, flowrun.ErrNotNumber))
	// Output:
	// 13
	// true
}

// A compare-and-set loop: read, compute, write only if nobody wrote in
// between, else read again. (Update does the same in one transaction.)
func ExampleNamespace_CompareAndSet() {
	st, done := openExample(flowrun.StoreOptions{})
	defer done()
	ctx := context.Background()
	ns := st.Namespace("wf-42")

	double := func(key string) (int, error) {
		for {
			old, found, err := ns.Get(ctx, key)
			if err != nil {
				return 0, err
			}
			n := 1
			if found {
				if n, err = strconv.Atoi(string(old)); err != nil {
					return 0, err
				}
				n *= 2
			} else {
				old = nil // the key must still be absent
			}
			err = ns.CompareAndSet(ctx, key, old, []byte(strconv.Itoa(n)))
			if errors.Is(err, flowrun.ErrCASMismatch) {
				continue // someone else wrote: try again
			}
			return n, err
		}
	}
	for range 4 {
		n, err := double("size")
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(n, " ")
	}
	fmt.Println()
	// Output: 1 2 4 8
}

// Each namespace has its own keys: the state of one workflow is invisible
// to every other, and clearing one leaves the others.
func ExampleStore_Namespace() {
	st, done := openExample(flowrun.StoreOptions{})
	defer done()
	ctx := context.Background()
	a, b := st.Namespace("wf-1"), st.Namespace("wf-2")

	_ = a.Put(ctx, "step", []byte(`"pay"`), flowrun.PutOptions{})
	_ = b.Put(ctx, "step", []byte(`"ship"`), flowrun.PutOptions{})
	if _, err := a.Clear(ctx, ""); err != nil {
		log.Fatal(err)
	}
	_, foundA, _ := a.Get(ctx, "step")
	vb, _, _ := b.Get(ctx, "step")
	fmt.Println(foundA, string(vb))
	// Output: false "ship"
}

// Keys pages through a namespace: pass the returned next as after until it
// is "".
func ExampleNamespace_Keys() {
	st, done := openExample(flowrun.StoreOptions{})
	defer done()
	ctx := context.Background()
	ns := st.Namespace("inbox")
	for i := range 5 {
		_ = ns.Put(ctx, fmt.Sprintf("msg:%d", i), []byte(`{}`), flowrun.PutOptions{})
	}

	after := ""
	for {
		keys, next, err := ns.Keys(ctx, "msg:", after, 2)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(keys)
		if next == "" {
			break
		}
		after = next
	}
	// Output:
	// [msg:0 msg:1]
	// [msg:2 msg:3]
	// [msg:4]
}

// Update applies several commands atomically: a transfer that would
// overdraw is refused as a whole.
func ExampleNamespace_Update() {
	st, done := openExample(flowrun.StoreOptions{})
	defer done()
	ctx := context.Background()
	bank := st.Namespace("bank")
	_ = bank.Put(ctx, "alice", []byte("30"), flowrun.PutOptions{})

	errInsufficient := errors.New("insufficient funds")
	transfer := func(from, to string, amount int64) error {
		return bank.Update(ctx, func(tx *flowrun.Tx) error {
			left, err := tx.Increment(from, -amount)
			if err != nil {
				return err
			}
			if left < 0 {
				return errInsufficient // nothing of this Update is applied
			}
			_, err = tx.Increment(to, amount)
			return err
		})
	}
	fmt.Println(transfer("alice", "bob", 20))
	fmt.Println(transfer("alice", "bob", 20))
	all, _ := bank.GetAll(ctx, "")
	fmt.Println(string(all["alice"]), string(all["bob"]))
	// Output:
	// <nil>
	// insufficient funds
	// 10 20
}

// A key put with a TTL reads as absent once the TTL has passed. The clock
// is StoreOptions.Now: a test sets its own to make expiry deterministic.
func ExamplePutOptions() {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	st, done := openExample(flowrun.StoreOptions{Now: func() time.Time { return now }, NoReclaim: true})
	defer done()
	ctx := context.Background()
	sessions := st.Namespace("sessions")

	_ = sessions.Put(ctx, "token:abc", []byte(`"ada"`), flowrun.PutOptions{TTL: 30 * time.Minute})
	now = now.Add(29 * time.Minute)
	ok, _ := sessions.Exists(ctx, "token:abc")
	fmt.Println(ok)
	now = now.Add(time.Minute)
	ok, _ = sessions.Exists(ctx, "token:abc")
	fmt.Println(ok)
	// Output:
	// true
	// false
}
