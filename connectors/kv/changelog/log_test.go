package changelog

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/natstest"
)

// openLog creates a changelog stream of its own (three replicas) on the
// test cluster, deleted when the test ends.
func openLog(t testing.TB, opts Options) (*Log, jetstream.JetStream) {
	t.Helper()
	js := natstest.JetStream(t)
	name := natstest.Name("cltest")
	opts.Stream = name
	opts.Subject = "flowrun.test." + name
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := Open(ctx, js, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, name)
	})
	return l, js
}

// openLogB is openLog with the default options, for benchmarks.
func openLogB(b *testing.B) (*Log, jetstream.JetStream) { return openLog(b, Options{}) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func openPebble(t testing.TB) *pebblestore.Store {
	t.Helper()
	s, err := pebblestore.Open(t.TempDir(), pebblestore.Options{})
	if err != nil {
		t.Fatalf("pebblestore.Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

type entry struct {
	value    string
	expireAt int64
}

// contents returns every record of b with a key in ["a", "z").
func contents(t *testing.T, b kv.Backend) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	errs := make([]error, 1)
	err := b.Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error {
		return tx.Scan([]byte("a"), []byte("z"), func(k, v []byte, exp int64) (bool, error) {
			got[string(k)] = entry{string(v), exp}
			return true, nil
		})
	}}, errs)
	if err == nil {
		err = errs[0]
	}
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	return got
}

// model applies records to a memstore: what a restore must reproduce.
func model(t *testing.T, recs []Record) map[string]entry {
	t.Helper()
	m := memstore.New()
	for i := range recs {
		errs := make([]error, 1)
		if err := m.Update(context.Background(), []kv.TxnFunc{func(tx kv.Txn) error { return apply(tx, &recs[i]) }}, errs); err != nil || errs[0] != nil {
			t.Fatalf("model: %v %v", err, errs[0])
		}
	}
	return contents(t, m)
}

func TestAppendAndRestore(t *testing.T) {
	l, _ := openLog(t, Options{ChunkBytes: 100})
	ctx := testContext(t)
	big := strings.Repeat("x", 1000) // ten messages of ChunkBytes 100
	var recs []Record
	add := func(input uint64, f func(r *Record)) {
		r := Record{Input: input}
		f(&r)
		recs = append(recs, r)
	}
	add(1, func(r *Record) {
		r.Set([]byte("k1"), []byte(`"one"`), 0)
		r.Set([]byte("k2"), []byte("2"), 1_900_000_000_000) // a TTL
		r.Set([]byte("k3"), []byte("3"), 0)
	})
	add(2, func(r *Record) {
		r.Delete([]byte("k1")) // a tombstone
		r.Set([]byte("k2"), []byte("22"), 0)
	})
	add(3, func(r *Record) { r.Set([]byte("big"), []byte(big), 0) })
	add(4, func(r *Record) {
		for i := 0; i < 20; i++ {
			r.Set([]byte(fmt.Sprintf("r%02d", i)), []byte("0"), 0)
		}
	})
	add(5, func(r *Record) { r.DeleteRange([]byte("r05"), []byte("r15")) })
	add(0, func(r *Record) {}) // a group with no input and no writes

	w, res, err := l.TakeOver(ctx, openPebble(t), 0, 1)
	if err != nil {
		t.Fatalf("TakeOver of an empty log: %v", err)
	}
	if res.Applied != MaxInFlight || res.Records != MaxInFlight || res.Epoch != 1 {
		t.Fatalf("TakeOver of an empty log = %+v, want %d fence records of epoch 1", res, MaxInFlight)
	}
	var last uint64
	for i := range recs {
		seq, err := w.Append(ctx, &recs[i])
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		if seq <= last {
			t.Fatalf("Append %d at sequence %d, after %d", i, seq, last)
		}
		last = seq
	}
	if last != w.Last() {
		t.Fatalf("Writer.Last = %d, the last append is at %d", w.Last(), last)
	}

	want := model(t, recs)
	if len(want) != 13 || want["k2"].value != "22" || want["big"].value != big {
		t.Fatalf("model looks wrong: %v", want)
	}
	for _, after := range []uint64{0, 1} {
		store := openPebble(t)
		res, err := l.Restore(ctx, store, after)
		if err != nil {
			t.Fatalf("Restore after %d: %v", after, err)
		}
		if got := contents(t, store); !reflect.DeepEqual(got, want) {
			t.Errorf("restored after %d:\n got %v\nwant %v", after, got, want)
		}
		wantRecords := len(recs) + MaxInFlight - int(after) // and the fence records
		if res.Applied != last || res.Last != last || res.Records != wantRecords || res.Input != 5 || res.Torn != 0 {
			t.Errorf("Restore after %d = %+v, want Applied = Last = %d, %d records, Input 5", after, res, last, wantRecords)
		}
	}
	// A restore from the end has nothing to do; from beyond it is a gap.
	if res, err := l.Restore(ctx, openPebble(t), last); err != nil || res.Records != 0 {
		t.Errorf("Restore from the end = %+v, %v", res, err)
	}
	if _, err := l.Restore(ctx, openPebble(t), last+1); !errors.Is(err, ErrGap) {
		t.Errorf("Restore after the end = %v, want ErrGap", err)
	}
}

// TestStaleWriterIsFenced: once a second writer has taken the partition
// over, the first one's appends are refused with ErrFenced, and a restore
// holds the first writer's accepted records and the second's, never the
// refused one.
func TestStaleWriterIsFenced(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	first, _, err := l.TakeOver(ctx, openPebble(t), 0, 1)
	if err != nil {
		t.Fatalf("first TakeOver: %v", err)
	}
	accepted := Record{Input: 1}
	accepted.Set([]byte("a1"), []byte("1"), 0)
	if _, err := first.Append(ctx, &accepted); err != nil {
		t.Fatalf("first writer's append: %v", err)
	}

	secondStore := openPebble(t)
	second, res, err := l.TakeOver(ctx, secondStore, 0, 2)
	if err != nil {
		t.Fatalf("second TakeOver: %v", err)
	}
	if got := contents(t, secondStore); got["a1"].value != "1" {
		t.Fatalf("the second writer's restore lacks the first writer's record: %v", got)
	}
	if res.Input != 1 {
		t.Errorf("second TakeOver restored Input %d, want 1", res.Input)
	}

	refused := Record{Input: 2}
	refused.Set([]byte("a2"), []byte("stale"), 0)
	if _, err := first.Append(ctx, &refused); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale writer's append = %v, want ErrFenced", err)
	}
	// Every later append of the stale writer fails too, still a fence.
	if _, err := first.Append(ctx, &refused); !errors.Is(err, ErrWriterFailed) || !errors.Is(err, ErrFenced) {
		t.Fatalf("stale writer's next append = %v, want ErrWriterFailed wrapping ErrFenced", err)
	}

	fresh := Record{Input: 2}
	fresh.Set([]byte("a2"), []byte("2"), 0)
	if _, err := second.Append(ctx, &fresh); err != nil {
		t.Fatalf("second writer's append: %v", err)
	}
	store := openPebble(t)
	if _, err := l.Restore(ctx, store, 0); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	want := map[string]entry{"a1": {"1", 0}, "a2": {"2", 0}}
	if got := contents(t, store); !reflect.DeepEqual(got, want) {
		t.Errorf("restored %v, want %v", got, want)
	}
}

// TestTakeOverCatchesUpWithAWriterThatKeepsAppending: a record the old
// writer appends between the new owner's restore and its fence makes the
// fence fail; TakeOver restores that record too, then fences.
func TestTakeOverCatchesUpWithAWriterThatKeepsAppending(t *testing.T) {
	ctx := testContext(t)
	var old *Writer
	appended := 0
	l, _ := openLog(t, Options{})
	var err error
	if old, _, err = l.TakeOver(ctx, memstore.New(), 0, 1); err != nil {
		t.Fatalf("first TakeOver: %v", err)
	}
	l.opts.afterRestore = func() {
		if appended > 0 {
			return
		}
		appended++
		r := Record{Input: 7}
		r.Set([]byte("late"), []byte("1"), 0)
		if _, err := old.Append(ctx, &r); err != nil {
			t.Errorf("old writer's append during the take-over: %v", err)
		}
	}
	store := openPebble(t)
	if _, _, err := l.TakeOver(ctx, store, 0, 2); err != nil {
		t.Fatalf("TakeOver racing the old writer: %v", err)
	}
	if appended != 1 {
		t.Fatalf("the old writer appended %d times during the take-over, want 1", appended)
	}
	if got := contents(t, store); got["late"].value != "1" {
		t.Fatalf("the take-over lost the record appended during it: %v", got)
	}
	r := Record{}
	r.Set([]byte("later"), []byte("1"), 0)
	if _, err := old.Append(ctx, &r); !errors.Is(err, ErrFenced) {
		t.Fatalf("old writer after the take-over = %v, want ErrFenced", err)
	}
}

// TestTornRecordIsSkipped: a writer that stopped between the messages of
// a record leaves it torn; the next owner fences it off, and no restore
// applies any of its writes, while the records around it are applied.
func TestTornRecordIsSkipped(t *testing.T) {
	l, js := openLog(t, Options{ChunkBytes: 64})
	ctx := testContext(t)
	w, _, err := l.TakeOver(ctx, memstore.New(), 0, 1)
	if err != nil {
		t.Fatalf("TakeOver: %v", err)
	}
	before := Record{Input: 1}
	before.Set([]byte("before"), []byte("1"), 0)
	if _, err := w.Append(ctx, &before); err != nil {
		t.Fatalf("Append: %v", err)
	}
	// The writer dies after the first of a record's messages.
	torn := Record{Input: 2}
	torn.Set([]byte("torn"), []byte(strings.Repeat("t", 200)), 0)
	data := AppendRecord(nil, &torn)
	m := nats.NewMsg(l.opts.Subject)
	m.Data = appendPart(nil, 0, (len(data)+63)/64, data[:64])
	if _, err := js.PublishMsg(ctx, m, jetstream.WithExpectLastSequence(w.Last())); err != nil {
		t.Fatalf("publish the torn part: %v", err)
	}

	// While the record may still be completed, a restore leaves it out
	// and stops before it.
	res, err := l.Restore(ctx, memstore.New(), 0)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if res.Applied != w.Last() || res.Last != w.Last()+1 {
		t.Fatalf("Restore with a record in progress = %+v, want Applied %d and Last %d", res, w.Last(), w.Last()+1)
	}

	next, _, err := l.TakeOver(ctx, memstore.New(), 0, 2)
	if err != nil {
		t.Fatalf("TakeOver after the torn record: %v", err)
	}
	after := Record{Input: 3}
	after.Set([]byte("after"), []byte("1"), 0)
	if _, err := next.Append(ctx, &after); err != nil {
		t.Fatalf("Append after the torn record: %v", err)
	}
	store := openPebble(t)
	res, err = l.Restore(ctx, store, 0)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	want := map[string]entry{"before": {"1", 0}, "after": {"1", 0}}
	if got := contents(t, store); !reflect.DeepEqual(got, want) {
		t.Errorf("restored %v, want %v", got, want)
	}
	if res.Torn != 1 || res.Input != 3 {
		t.Errorf("Restore = %+v, want 1 torn record and Input 3", res)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no stream", Options{Subject: "s"}, "Options.Stream"},
		{"no subject", Options{Stream: "s"}, "Options.Subject"},
		{"two replicas", Options{Stream: "s", Subject: "s", Replicas: 2}, "Options.Replicas"},
		{"tiny chunks", Options{Stream: "s", Subject: "s", ChunkBytes: 10}, "Options.ChunkBytes"},
		{"negative timeout", Options{Stream: "s", Subject: "s", AckTimeout: -1}, "Options.AckTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.EnsureDefaults()
			err := tt.opts.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tt.want)
			}
		})
	}
	ok := Options{Stream: "s", Subject: "s"}
	ok.EnsureDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

// TestOnlyAcknowledgedAppendsSurviveATakeOver: a writer pipelines appends
// without pause while a second one takes the partition over and appends
// in turn. A restore afterwards holds exactly the records whose appends
// were acknowledged, from both writers: none acknowledged is lost, none
// refused is there, and once the first writer is refused it stays
// refused.
func TestOnlyAcknowledgedAppendsSurviveATakeOver(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	first, _, err := l.TakeOver(ctx, memstore.New(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	var mu sync.Mutex
	stop := make(chan struct{})
	firstDone := make(chan int)
	go func() {
		refused := 0
		var waits []func() (uint64, error)
		var keys []string
		settle := func() {
			if _, err := waits[0](); err == nil {
				if refused > 0 {
					t.Errorf("append of %s acknowledged after an earlier one was refused", keys[0])
				}
				mu.Lock()
				acked[keys[0]] = true
				mu.Unlock()
			} else if errors.Is(err, ErrFenced) {
				refused++
			} else {
				t.Errorf("first writer: %v", err)
			}
			waits, keys = waits[1:], keys[1:]
		}
		for i := 0; ; i++ {
			select {
			case <-stop:
				for len(waits) > 0 {
					settle()
				}
				firstDone <- refused
				return
			default:
			}
			r := Record{}
			key := fmt.Sprintf("a/%05d", i)
			r.Set([]byte(key), []byte("1"), 0)
			waits, keys = append(waits, first.Submit(ctx, &r)), append(keys, key)
			if len(waits) == 8 {
				settle()
			}
		}
	}()

	time.Sleep(200 * time.Millisecond) // let the first writer get going
	second, _, err := l.TakeOver(ctx, memstore.New(), 0, 2)
	if err != nil {
		t.Fatalf("second TakeOver: %v", err)
	}
	for j := 0; j < 20; j++ {
		r := Record{}
		key := fmt.Sprintf("b/%05d", j)
		r.Set([]byte(key), []byte("1"), 0)
		if _, err := second.Append(ctx, &r); err != nil {
			t.Fatalf("second writer: %v", err)
		}
		acked[key] = true
	}
	close(stop)
	if refused := <-firstDone; refused == 0 {
		t.Fatal("the first writer was never refused after the take-over")
	}

	m := memstore.New()
	if _, err := l.Restore(ctx, m, 0); err != nil {
		t.Fatal(err)
	}
	got := contents(t, m)
	mu.Lock()
	defer mu.Unlock()
	for k := range acked {
		if _, ok := got[k]; !ok {
			t.Errorf("acknowledged append of %s is not in the changelog", k)
		}
	}
	for k := range got {
		if !acked[k] {
			t.Errorf("%s is in the changelog, but its append was refused", k)
		}
	}
	t.Logf("%d appends acknowledged, %d keys restored", len(acked), len(got))
}

// TestRecordsOfAnOlderEpochBehindAFenceAreSkipped: a record of an older
// writer that lined up behind a newer writer's fence (its writer reported
// it failed) is not restored.
func TestRecordsOfAnOlderEpochBehindAFenceAreSkipped(t *testing.T) {
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
	// The old writer's pipelined append that expected the fence's
	// sequence (as its predecessor's).
	behind := Record{}
	behind.Set([]byte("behind"), []byte("1"), 0)
	if _, err := l.NewWriter(fence, 1).Append(ctx, &behind); err != nil {
		t.Fatal(err)
	}
	m := memstore.New()
	res, err := l.Restore(ctx, m, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := contents(t, m); !reflect.DeepEqual(got, map[string]entry{"before": {"1", 0}}) {
		t.Errorf("restored %v, want only the record before the fence", got)
	}
	if res.Stale != 1 || res.Epoch != 2 || res.Applied != res.Last {
		t.Errorf("Restore = %+v, want 1 stale record, epoch 2, everything read", res)
	}
}

// TestAppendBehindAFenceIsNotAcknowledged: of a fenced writer's
// pipelined appends, the one the fence refused fails with ErrFenced, and
// the next one, which the stream stored behind the fence (it expected the
// fence's sequence as its predecessor's), fails too instead of being
// reported acknowledged.
func TestAppendBehindAFenceIsNotAcknowledged(t *testing.T) {
	l, _ := openLog(t, Options{})
	ctx := testContext(t)
	w := l.NewWriter(0, 1)
	if _, err := l.NewWriter(0, 2).Append(ctx, &Record{Fence: true}); err != nil {
		t.Fatal(err)
	}
	r1, r2 := Record{}, Record{}
	r1.Set([]byte("r1"), []byte("1"), 0)
	r2.Set([]byte("r2"), []byte("1"), 0)
	wait1, wait2 := w.Submit(ctx, &r1), w.Submit(ctx, &r2)
	if _, err := wait1(); !errors.Is(err, ErrFenced) {
		t.Fatalf("first append = %v, want ErrFenced", err)
	}
	if _, err := wait2(); !errors.Is(err, ErrWriterFailed) || !errors.Is(err, ErrFenced) {
		t.Fatalf("second append = %v, want ErrWriterFailed wrapping ErrFenced", err)
	}
	if last, _ := l.Last(ctx); last != 2 {
		t.Fatalf("stream ends at %d, want 2 (the fence and the append stored behind it)", last)
	}
}

// TestFenceGivesUpAtOneDeadline: when no append is acknowledged (here the
// stream no longer captures the subject and a plain subscriber swallows
// what is published there), Fence fails after about one AckTimeout, not
// one AckTimeout for each of its MaxInFlight appends waited for in turn
// (256 x 10 s by default).
func TestFenceGivesUpAtOneDeadline(t *testing.T) {
	const ackTimeout = 300 * time.Millisecond
	l, js := openLog(t, Options{AckTimeout: ackTimeout})
	ctx := testContext(t)
	cfg := l.stream.CachedInfo().Config
	cfg.Subjects = []string{l.opts.Subject + ".elsewhere"}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natstest.ClusterURLs(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.Subscribe(l.opts.Subject, func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = l.Fence(ctx, 1)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fence = %v, want a missing acknowledgement (context.DeadlineExceeded)", err)
	}
	// Generous for a loaded machine; waiting in turn takes 256 x 300 ms.
	if took > 20*time.Second {
		t.Fatalf("Fence gave up after %v, want about %v", took, ackTimeout)
	}
	t.Logf("Fence gave up after %v", took)
}

// TestLateWaitTakesTheAcknowledgement: an append acknowledged in time
// is acknowledged, however late its wait is called (its deadline counts
// from the publish, so it has passed by then too).
func TestLateWaitTakesTheAcknowledgement(t *testing.T) {
	const ackTimeout = 200 * time.Millisecond
	l, _ := openLog(t, Options{AckTimeout: ackTimeout})
	ctx := testContext(t)
	w := l.NewWriter(0, 1)
	waits := make([]func() (uint64, error), 20)
	for i := range waits {
		var r Record
		r.Set(fmt.Appendf(nil, "k%d", i), []byte("v"), 0)
		waits[i] = w.Submit(ctx, &r)
	}
	time.Sleep(2 * ackTimeout)
	for i, wait := range waits {
		if seq, err := wait(); err != nil || seq != uint64(i+1) {
			t.Fatalf("append %d waited for late = %d, %v; want sequence %d", i, seq, err, i+1)
		}
	}
}

// TestAppendsRecoverFromLostAcknowledgements: appends whose
// acknowledgements never come (the stream's subject moved away, a
// subscriber swallowing the publishes, as when a stream's leader dies with
// them) fail at AckTimeout and fail their writer; once the stream answers
// again, a new writer appends, although the publishing context still held
// the lost ones (as many as its limit of pending publishes).
func TestAppendsRecoverFromLostAcknowledgements(t *testing.T) {
	const ackTimeout, pending = 200 * time.Millisecond, 4
	nc, err := nats.Connect(natstest.ClusterURLs(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(pending))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	name := natstest.Name("cllost")
	l, err := Open(ctx, js, Options{Stream: name, Subject: "flowrun.test." + name, AckTimeout: ackTimeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), name) })
	cfg := l.stream.CachedInfo().Config
	moved := cfg
	moved.Subjects = []string{l.opts.Subject + ".elsewhere"}
	if _, err := js.UpdateStream(ctx, moved); err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(l.opts.Subject, func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	record := func(i int) *Record {
		var r Record
		r.Set(fmt.Appendf(nil, "k%d", i), []byte("v"), 0)
		return &r
	}
	lost := l.NewWriter(0, 1)
	var waits []func() (uint64, error)
	for i := range pending {
		waits = append(waits, lost.Submit(ctx, record(i)))
	}
	for i, wait := range waits {
		if _, err := wait(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("append %d without an acknowledgement: %v, want context.DeadlineExceeded", i, err)
		}
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	w := l.NewWriter(0, 2)
	if seq, err := w.Append(ctx, record(0)); err != nil || seq != 1 {
		t.Fatalf("append once the stream answers again = %d, %v; want sequence 1", seq, err)
	}
}
