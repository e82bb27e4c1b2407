package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtest"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// request is one request a store sent through its KV API.
type request struct {
	kind         string // "get", "txn"
	reads        int    // range operations
	writes       int    // put and delete operations
	cmps         int    // compares
	serializable bool   // every range operation was serializable
}

// countingKV records every request a store sends, standing between the
// store and its client.
type countingKV struct {
	clientv3.KV
	mu   sync.Mutex
	reqs []request
	// hold, when set, makes a commit wait while hold(commit, reads
	// completed so far) is true, holdFor at most; a commit that waited in
	// vain is counted in unmet.
	hold    func(r request, readsDone int) bool
	holdFor time.Duration
	reads   int // read transactions completed
	unmet   int
}

// count makes s send its requests through a new countingKV.
func count(s *Store) *countingKV {
	c := &countingKV{KV: s.kv}
	s.kv = c
	return c
}

func (c *countingKV) add(r request) {
	c.mu.Lock()
	c.reqs = append(c.reqs, r)
	c.mu.Unlock()
}

// take returns the requests sent since the last take.
func (c *countingKV) take() []request {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.reqs
	c.reqs = nil
	return r
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := clientv3.OpGet(key, opts...)
	c.add(request{kind: "get", reads: 1, serializable: op.IsSerializable()})
	return c.KV.Get(ctx, key, opts...)
}

func (c *countingKV) Txn(ctx context.Context) clientv3.Txn {
	return &countingTxn{Txn: c.KV.Txn(ctx), c: c, r: request{kind: "txn", serializable: true}}
}

type countingTxn struct {
	clientv3.Txn
	c *countingKV
	r request
}

func (t *countingTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.r.cmps += len(cs)
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t *countingTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		if op.IsGet() {
			t.r.reads++
			t.r.serializable = t.r.serializable && op.IsSerializable()
		} else {
			t.r.writes++
		}
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *countingTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.r.reads == 0 {
		t.r.serializable = false
	}
	t.c.add(t.r)
	c := t.c
	if c.hold != nil && t.r.writes > 0 {
		held := func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.hold(t.r, c.reads)
		}
		deadline := time.Now().Add(c.holdFor)
		for held() {
			if time.Now().After(deadline) {
				c.mu.Lock()
				c.unmet++
				c.mu.Unlock()
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	resp, err := t.Txn.Commit()
	if t.r.writes == 0 && t.r.reads > 0 {
		c.mu.Lock()
		c.reads++
		c.mu.Unlock()
	}
	return resp, err
}

// getFns returns n fns each reading one key of keys, and their hints.
func getFns(keys []string, n int, got []string) ([]kv.TxnFunc, [][][]byte) {
	fns := make([]kv.TxnFunc, n)
	hints := make([][][]byte, n)
	for i := range fns {
		k := []byte(keys[i%len(keys)])
		hints[i] = [][]byte{k}
		fns[i] = func(tx kv.Txn) error {
			v, _, _, err := tx.Get(k)
			got[i] = string(v)
			return err
		}
	}
	return fns, hints
}

// incFns returns n fns each incrementing one key of keys, and their hints.
func incFns(keys []string, n int) ([]kv.TxnFunc, [][][]byte) {
	fns := make([]kv.TxnFunc, n)
	hints := make([][][]byte, n)
	for i := range fns {
		k := []byte(keys[i%len(keys)])
		hints[i] = [][]byte{k}
		fns[i] = func(tx kv.Txn) error {
			v, _, _, err := tx.Get(k)
			if err != nil {
				return err
			}
			c, _ := strconv.Atoi(string(v))
			return tx.Set(k, []byte(strconv.Itoa(c+1)), 0)
		}
	}
	return fns, hints
}

func keyNames(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%04d", i)
	}
	return keys
}

// summary lists the requests, sorted: a read-ahead and the commit it
// overlaps may be recorded in either order.
func summary(reqs []request) string {
	var out []string
	for _, r := range reqs {
		out = append(out, fmt.Sprintf("%s r%d w%d c%d", r.kind, r.reads, r.writes, r.cmps))
	}
	slices.Sort(out)
	if len(out) > 12 {
		out = append(out[:12], fmt.Sprintf("... (%d in all)", len(out)))
	}
	return strings.Join(out, ", ")
}

func read(n int) request   { return request{kind: "txn", reads: n} }
func commit(n int) request { return request{kind: "txn", writes: n, cmps: n} }

// Hinted point reads of a group cost one request: a read-only batch
// (View) of up to MaxTxnOps distinct keys is one range transaction, and a
// batch of read-modify-writes is one read transaction and one commit per
// group, never a request per key.
func TestReadBatchRoundTrips(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	keys := keyNames(300)
	fns := make([]kv.TxnFunc, len(keys))
	for i, k := range keys {
		fns[i] = setFn(k, strconv.Itoa(i), 0)
	}
	update(t, s, fns...)
	c := count(s)
	for _, tc := range []struct {
		name      string
		keys, fns int
		write     bool
		want      []request
	}{
		{"view 100 keys", 100, 100, false, []request{read(100)}},
		{"view 128 keys read twice", 128, 256, false, []request{read(128)}},
		{"view 300 keys", 300, 300, false, []request{read(128), read(128), read(44)}},
		{"update 300 increments", 300, 300, true, []request{
			read(128), commit(128), read(128), commit(128), read(44), commit(44),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := make([]error, tc.fns)
			got := make([]string, tc.fns)
			var err error
			if tc.write {
				fns, hints := incFns(keys[:tc.keys], tc.fns)
				err = s.UpdateHinted(t.Context(), fns, hints, errs)
			} else {
				fns, hints := getFns(keys[:tc.keys], tc.fns, got)
				err = s.ViewHinted(t.Context(), fns, hints, errs)
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, err := range errs {
				if err != nil {
					t.Fatalf("fn %d: %v", i, err)
				}
				if !tc.write && got[i] != strconv.Itoa(i%tc.keys) {
					t.Fatalf("fn %d read %q, want %d", i, got[i], i%tc.keys)
				}
			}
			reqs := c.take()
			if got, want := summary(reqs), summary(tc.want); got != want {
				t.Errorf("requests: %s\nwant:     %s", got, want)
			}
		})
	}
}

// A read-only slice of get events through the kv connector reaches etcd
// as hinted range transactions, not one request per event.
func TestConnectorReadSlice(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	c, err := kv.New(s, kv.Options{Namespace: "n", ReclaimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	const n = 200
	metas := make([]string, n)
	for i := range metas {
		metas[i] = kvtest.M(`"put":"k` + strconv.Itoa(i) + `"`)
	}
	process(t, c, metas...)
	cnt := count(s)
	evs := make([]pipeline.Event, n)
	for i := range evs {
		evs[i] = kvtest.Event(kvtest.M(`"get":"k`+strconv.Itoa(i)+`"`), "")
	}
	var rec kvtest.Recorder
	if err := c.Process(t.Context(), evs, &rec); err != nil {
		t.Fatal(err)
	}
	for _, o := range kvtest.Strings(rec.Events) {
		if !strings.HasPrefix(o, "out ") {
			t.Fatalf("get failed: %s", o)
		}
	}
	reqs := cnt.take()
	reads := 0
	for _, r := range reqs {
		if r.writes > 0 {
			t.Errorf("a read-only slice wrote: %s", summary(reqs))
		}
		reads += r.reads
	}
	if len(reqs) > 4 || reads != n {
		t.Errorf("%d get events cost %d requests (%s), want at most 4 reading every key", n, len(reqs), summary(reqs))
	}
}

// Options.Reads: linearizable first reads go through the leader,
// serializable ones are served by any member; a serializable answer older
// than the store's own last commit is asked again linearizably, so the
// store still reads its own writes.
func TestReadConsistency(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	for _, tc := range []struct {
		reads      ReadConsistency
		behind     bool // pretend the store committed past every member's revision
		wantSer    []bool
		wantSerGet []bool
	}{
		{Linearizable, false, []bool{false}, []bool{false}},
		{Serializable, false, []bool{true}, []bool{true}},
		{Serializable, true, []bool{true, false}, []bool{true, false}},
	} {
		t.Run(fmt.Sprintf("%s behind=%v", tc.reads, tc.behind), func(t *testing.T) {
			s := openOpts(t, Options{Endpoints: eps, Prefix: prefix, Reads: tc.reads})
			defer s.Close()
			update(t, s, setFn("x", "1", 0))
			if tc.behind {
				s.noteCommit(math.MaxInt64)
			} else {
				// The member asked may not have applied the write yet,
				// which the "behind" case covers: here the first answer
				// must be taken.
				s.lastRev.Store(0)
			}
			c := count(s)
			got := make([]string, 1)
			fns, hints := getFns([]string{"x"}, 1, got)
			errs := make([]error, 1)
			if err := s.ViewHinted(t.Context(), fns, hints, errs); err != nil || errs[0] != nil {
				t.Fatalf("view: %v %v", err, errs[0])
			}
			// A serializable answer taken as is may come from a member
			// that has not applied the write yet.
			if (tc.reads == Linearizable || tc.behind) && got[0] != "1" {
				t.Errorf("read %q, want 1", got[0])
			}
			var ser []bool
			for _, r := range c.take() {
				ser = append(ser, r.serializable)
			}
			if fmt.Sprint(ser) != fmt.Sprint(tc.wantSer) {
				t.Errorf("prefetch requests serializable %v, want %v", ser, tc.wantSer)
			}
			// Unhinted: the first Get of the group is the first read.
			fns, _ = getFns([]string{"x"}, 1, got)
			if err := s.View(t.Context(), fns, errs); err != nil || errs[0] != nil {
				t.Fatalf("view: %v %v", err, errs[0])
			}
			ser = nil
			for _, r := range c.take() {
				ser = append(ser, r.serializable)
			}
			if fmt.Sprint(ser) != fmt.Sprint(tc.wantSerGet) {
				t.Errorf("get requests serializable %v, want %v", ser, tc.wantSerGet)
			}
		})
	}
	if _, err := Open(t.Context(), Options{Endpoints: eps, Reads: "eventual"}); !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), `Reads "eventual"`) {
		t.Errorf("Open with Reads eventual: %v, want an error naming it", err)
	}
}

// A write in View fails with kv.ErrReadOnly and writes nothing.
func TestViewRefusesWrites(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	for name, fn := range map[string]kv.TxnFunc{
		"set":          setFn("a", "1", 0),
		"delete":       func(tx kv.Txn) error { return tx.Delete([]byte("a")) },
		"delete range": func(tx kv.Txn) error { return tx.DeleteRange([]byte("a"), []byte("b")) },
	} {
		errs := make([]error, 1)
		if err := s.View(t.Context(), []kv.TxnFunc{fn}, errs); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(errs[0], kv.ErrReadOnly) {
			t.Errorf("%s in View: %v, want ErrReadOnly", name, errs[0])
		}
	}
	if got := dump(t, s); got != "" {
		t.Errorf("store after refused writes: %q", got)
	}
}

// Slices mixing reads and writes of a few keys, cut into several groups,
// give exactly the results and final state of the in-memory reference
// backend: every command sees the writes of the commands before it, in
// its own group or an earlier one.
func TestMixedSlicesMatchReference(t *testing.T) {
	eps := endpoints(t)
	// 160 keys: the first group of a slice ends at 128 distinct keys
	// (one prefetch), and the next ones read keys it wrote.
	const slices, perSlice, keys = 3, 600, 160
	rng := rand.New(rand.NewPCG(1, 2))
	var metas [][]string
	for range slices {
		var ms []string
		for range perSlice {
			k := `"k` + strconv.Itoa(rng.IntN(keys)) + `"`
			switch rng.IntN(6) {
			case 0:
				ms = append(ms, kvtest.M(`"put":`+k))
			case 1:
				ms = append(ms, kvtest.M(`"get":`+k))
			case 2:
				ms = append(ms, kvtest.M(`"increment":`+k))
			case 3:
				ms = append(ms, kvtest.M(`"delete":`+k))
			case 4:
				ms = append(ms, kvtest.M(`"cas":`+k+`,"old":`+strconv.Itoa(rng.IntN(4))))
			case 5:
				ms = append(ms, kvtest.M(`"exists":`+k))
			}
		}
		metas = append(metas, ms)
	}
	run := func(b kv.Backend) []string {
		h := kvtest.NewHarness(t, b)
		var out []string
		for i, ms := range metas {
			evs := make([]pipeline.Event, len(ms))
			for j, m := range ms {
				evs[j] = kvtest.Event(m, strconv.Itoa((i*perSlice+j)%5))
			}
			out = append(out, kvtest.Strings(h.DoSlice("n", evs...))...)
		}
		for k := range keys {
			out = append(out, kvtest.Strings(h.Do("n", kvtest.M(`"get":"k`+strconv.Itoa(k)+`"`), ""))...)
		}
		return out
	}
	want := run(memstore.New())
	got := run(open(t, eps, randomPrefix(t)))
	if len(got) != len(want) {
		t.Fatalf("%d outputs, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("output %d:\n got %s\nwant %s", i, got[i], want[i])
		}
	}
}

// Two stores on one prefix stand for two flowrun processes racing cas on
// one counter through their kv connectors, each reading the counter and
// swapping in the next value: every cas that succeeded counts exactly
// once in the final value, and none succeeds on a stale read.
func TestTwoProcessesCAS(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	const attempts = 60
	h := kvtest.NewHarness(t, open(t, eps, prefix))
	h.Do("ctr", kvtest.M(`"put":"c"`), "0")
	var wg sync.WaitGroup
	wins := make([]int, 2)
	errc := make(chan error, 2)
	for p := range 2 {
		s := open(t, eps, prefix)
		c, err := kv.New(s, kv.Options{Namespace: "ctr", ReclaimInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close(context.Background())
			// do returns the port and data of the command's one output.
			do := func(meta, data string) (string, string) {
				var rec kvtest.Recorder
				if err := c.Process(context.Background(), []pipeline.Event{kvtest.Event(meta, data)}, &rec); err != nil {
					return "process", err.Error()
				}
				if len(rec.Events) != 1 {
					return "outputs", strings.Join(kvtest.Strings(rec.Events), "\n")
				}
				return rec.Events[0].Port, string(rec.Events[0].Event.Data) + " " + string(rec.Events[0].Event.Meta)
			}
			for range attempts {
				port, got := do(kvtest.M(`"get":"c"`), "")
				v, _, _ := strings.Cut(got, " ")
				n, err := strconv.Atoi(v)
				if port != "out" || err != nil {
					errc <- fmt.Errorf("process %d get: %s %s", p, port, got)
					return
				}
				port, res := do(kvtest.M(`"cas":"c","old":`+strconv.Itoa(n)), strconv.Itoa(n+1))
				switch {
				case port == "out":
					wins[p]++
				case !strings.Contains(res, "compare mismatch"):
					errc <- fmt.Errorf("process %d cas: %s %s", p, port, res)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	got := h.Do("ctr", kvtest.M(`"get":"c"`), "")
	want := strconv.Itoa(wins[0] + wins[1])
	if len(got) != 1 || string(got[0].Event.Data) != want {
		t.Errorf("counter %v after %d + %d successful cas, want %s", got, wins[0], wins[1], want)
	}
}

// While a group commits, the prefetch of the next one is already sent,
// and the commit keeps its place in the order: a read-ahead answered
// before the commit it raced with takes that commit's own writes, so the
// next group sees them without rerunning. The first commit here is held
// until the second read completes: the read-ahead, whose answer thus
// always predates the commit.
func TestReadAheadOverCommit(t *testing.T) {
	eps := endpoints(t)
	s := open(t, eps, randomPrefix(t))
	defer s.Close()
	keys := keyNames(200)
	// Group 1 increments k0000..k0127; group 2 (from the first fn whose key
	// group 1's prefetch lacks) increments k0128..k0199 and, interleaved,
	// k0000..k0049 again, which group 1 wrote.
	var order []string
	order = append(order, keys[:128]...)
	for i := 128; i < 200; i++ {
		order = append(order, keys[i])
		if j := i - 128; j < 50 {
			order = append(order, keys[j])
		}
	}
	c := count(s)
	c.holdFor = 5 * time.Second // a bound for a hang, never reached when reads run ahead
	// The first commit waits for the second read: the next group's.
	c.hold = func(r request, readsDone int) bool { return r.writes == 128 && readsDone < 2 }
	fns := make([]kv.TxnFunc, len(order))
	hints := make([][][]byte, len(order))
	for i, k := range order {
		f, h := incFns([]string{k}, 1)
		fns[i], hints[i] = f[0], h[0]
	}
	// In group 2, an unhinted scan of keys only group 1 wrote: it reads at
	// group 1's commit, so it sees them and needs no rerun.
	scan := func(tx kv.Txn) error {
		n := 0
		err := tx.Scan([]byte("k0120"), []byte("k0128"), func(k, v []byte, exp int64) (bool, error) {
			n++
			return true, nil
		})
		if err != nil {
			return err
		}
		return tx.Set([]byte("seen"), []byte(strconv.Itoa(n)), 0)
	}
	fns = slices.Insert(fns, 140, scan)
	hints = slices.Insert(hints, 140, nil)
	errs := make([]error, len(fns))
	if err := s.UpdateHinted(t.Context(), fns, hints, errs); err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("fn %d: %v", i, err)
		}
	}
	if c.unmet != 0 {
		t.Errorf("%d commits were not overlapped by the next group's read", c.unmet)
	}
	// No group ran twice: two reads, two commits (and the scan's read,
	// asked again through the leader when the member it reached has not
	// applied group 1's commit yet).
	want := []request{read(128), commit(128), read(122), {kind: "txn", writes: 123, cmps: 123}}
	txns := slices.DeleteFunc(c.take(), func(r request) bool { return r.kind == "get" })
	if got := summary(txns); got != summary(want) {
		t.Errorf("requests: %s\nwant:     %s", got, summary(want))
	}
	got := dump(t, s)
	if !strings.Contains(got, "seen=8@") {
		t.Errorf("the scan saw %s, want 8 keys", got[strings.Index(got, "seen="):])
	}
	for i, k := range keys {
		want := "1"
		if i < 50 {
			want = "2"
		}
		if !strings.Contains(got, k+"="+want+"@") {
			t.Fatalf("%s: want %s in %s", k, want, got)
		}
	}
}

// A group that only reads, started from a read-ahead that a commit
// overtook, holds records of two revisions and has no compare to check
// them with: it is rerun on a fresh read, so it never sees half of
// another process's transaction. Here the other process writes x and y
// together after the read-ahead read x and before the group reads y.
func TestReadAheadReadOnlyGroupNotTorn(t *testing.T) {
	eps := endpoints(t)
	prefix := randomPrefix(t)
	s := open(t, eps, prefix)
	defer s.Close()
	other := open(t, eps, prefix)
	defer other.Close()
	update(t, s, setFn("x", "old", 0), setFn("y", "old", 0))
	c := count(s)
	c.holdFor = 5 * time.Second
	wrote := false
	c.hold = func(r request, readsDone int) bool {
		if readsDone < 2 {
			return true
		}
		if !wrote {
			wrote = true
			update(t, other, setFn("x", "new", 0), setFn("y", "new", 0))
		}
		return false
	}
	keys := keyNames(128)
	fns, hints := incFns(keys, len(keys))
	var x, y string
	fns = append(fns, func(tx kv.Txn) error {
		xv, _, _, err := tx.Get([]byte("x"))
		if err != nil {
			return err
		}
		yv, _, _, err := tx.Get([]byte("y"))
		x, y = string(xv), string(yv)
		return err
	})
	hints = append(hints, [][]byte{[]byte("x")})
	errs := make([]error, len(fns))
	if err := s.UpdateHinted(t.Context(), fns, hints, errs); err != nil {
		t.Fatal(err)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("fn %d: %v", i, err)
		}
	}
	if !wrote || c.unmet != 0 {
		t.Fatalf("the other process did not write between the read-ahead and the commit")
	}
	if x != y {
		t.Errorf("read x=%s y=%s: half of another process's transaction", x, y)
	}
}
