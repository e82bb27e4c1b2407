package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/internal/natstest"
)

// fakeClock is a clock tests move by hand, shared by every table of a test.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

const ttl = 10 * time.Second

// tables opens one table per holder on a bucket of its own (three
// replicas), all reading clock.
func tables(t *testing.T, clock Clock, holders ...string) []*Table {
	t.Helper()
	js := natstest.JetStream(t)
	bucket := natstest.Name("leasetest")
	ctx := testContext(t)
	var out []*Table
	for _, h := range holders {
		tb, err := Open(ctx, js, bucket, h, Options{TTL: ttl, Clock: clock})
		if err != nil {
			t.Fatalf("Open for %s: %v", h, err)
		}
		out = append(out, tb)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, bucket)
	})
	return out
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustAcquire(t *testing.T, tb *Table, name string) *Lease {
	t.Helper()
	l, err := tb.Acquire(testContext(t), name)
	if err != nil {
		t.Fatalf("%s: Acquire(%q): %v", tb.holder, name, err)
	}
	return l
}

func mustBeHeld(t *testing.T, tb *Table, name, by string) {
	t.Helper()
	_, err := tb.Acquire(testContext(t), name)
	if !errors.Is(err, ErrHeld) {
		t.Fatalf("%s: Acquire(%q) = %v, want ErrHeld", tb.holder, name, err)
	}
	if by != "" && !strings.Contains(err.Error(), by) {
		t.Fatalf("%s: Acquire(%q) = %v, want the error to name holder %q", tb.holder, name, err, by)
	}
}

// TestLapsedLeaseIsTakenOver: a lease not renewed is taken over once a
// contender has seen it unchanged for its TTL, not before; the old holder
// then finds it lost, and the new one's epoch is higher.
func TestLapsedLeaseIsTakenOver(t *testing.T) {
	clock := newFakeClock()
	ts := tables(t, clock, "a", "b")
	a, b := ts[0], ts[1]
	ctx := testContext(t)

	la := mustAcquire(t, a, "p.001")
	if !la.Valid() {
		t.Fatal("a fresh lease is not valid")
	}
	mustBeHeld(t, b, "p.001", `"a"`) // b's first sight of this revision
	clock.Advance(ttl - time.Millisecond)
	mustBeHeld(t, b, "p.001", `"a"`)
	if la.Valid() {
		t.Fatalf("the holder's lease is valid %v after its acquisition, past TTL - Margin", ttl-time.Millisecond)
	}
	clock.Advance(time.Millisecond)
	lb := mustAcquire(t, b, "p.001")
	if lb.Epoch() <= la.Epoch() {
		t.Errorf("epoch after the take-over is %d, not above the first holder's %d", lb.Epoch(), la.Epoch())
	}
	if err := la.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("old holder's Renew = %v, want ErrLost", err)
	}
	if err := lb.Renew(ctx); err != nil {
		t.Fatalf("new holder's Renew: %v", err)
	}
	mustBeHeld(t, a, "p.001", `"b"`)
}

// TestRenewalKeepsTheLease: renewing every TTL/3 keeps a contender out for
// as long as it goes on; a contender's wait restarts at every renewal.
func TestRenewalKeepsTheLease(t *testing.T) {
	clock := newFakeClock()
	ts := tables(t, clock, "a", "b")
	a, b := ts[0], ts[1]
	ctx := testContext(t)
	la := mustAcquire(t, a, "p.002")
	epoch := la.Epoch()
	interval := a.opts.RenewInterval()
	for i := 0; i < 6; i++ { // two TTLs
		mustBeHeld(t, b, "p.002", `"a"`)
		clock.Advance(interval)
		if err := la.Renew(ctx); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
	}
	if !la.Valid() || la.Epoch() != epoch {
		t.Fatalf("after renewals: valid %v, epoch %d (was %d)", la.Valid(), la.Epoch(), epoch)
	}
	if got, want := la.Deadline(), clock.Now().Add(ttl-ttl/10); !got.Equal(want) {
		t.Errorf("Deadline = %v, want the last renewal + TTL - Margin = %v", got, want)
	}
}

// TestHolderPastItsDeadlineDoesNotRenew: a holder that let its deadline
// pass has lost the lease even if nobody took it, and does not renew it.
func TestHolderPastItsDeadlineDoesNotRenew(t *testing.T) {
	clock := newFakeClock()
	a := tables(t, clock, "a")[0]
	ctx := testContext(t)
	la := mustAcquire(t, a, "p.003")
	clock.Advance(ttl - ttl/10)
	if err := la.Renew(ctx); !errors.Is(err, ErrLost) {
		t.Fatalf("Renew past the deadline = %v, want ErrLost", err)
	}
	e, err := a.stream.GetLastMsgForSubject(ctx, a.prefix+"p.003")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if e.Sequence != la.Epoch() {
		t.Fatalf("the lease was written after its deadline: revision %d, acquired at %d", e.Sequence, la.Epoch())
	}
}

// TestReleasedLeaseIsFreeAtOnce: after Release, another holder acquires
// the lease without waiting for the TTL.
func TestReleasedLeaseIsFreeAtOnce(t *testing.T) {
	clock := newFakeClock()
	ts := tables(t, clock, "a", "b")
	a, b := ts[0], ts[1]
	ctx := testContext(t)
	la := mustAcquire(t, a, "p.004")
	mustBeHeld(t, b, "p.004", `"a"`)
	if err := la.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := la.Renew(ctx); !errors.Is(err, ErrReleased) {
		t.Fatalf("Renew after Release = %v, want ErrReleased", err)
	}
	lb := mustAcquire(t, b, "p.004")
	if lb.Epoch() <= la.Epoch() {
		t.Errorf("epoch after release and acquisition is %d, not above %d", lb.Epoch(), la.Epoch())
	}
	// A late Release of the old lease does not delete the new holder's.
	if err := la.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	mustBeHeld(t, a, "p.004", `"b"`)
}

// TestOneContenderWinsALapsedLease: contenders that all saw a lease lapse
// and take it over at once: exactly one succeeds.
func TestOneContenderWinsALapsedLease(t *testing.T) {
	clock := newFakeClock()
	holders := []string{"a", "b", "c", "d", "e"}
	ts := tables(t, clock, holders...)
	mustAcquire(t, ts[0], "p.005")
	for _, tb := range ts[1:] {
		mustBeHeld(t, tb, "p.005", `"a"`)
	}
	clock.Advance(ttl)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  []string
		errs []error
	)
	for _, tb := range ts[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := tb.Acquire(context.Background(), "p.005")
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won = append(won, tb.holder)
			} else if !errors.Is(err, ErrHeld) {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if len(errs) != 0 || len(won) != 1 {
		t.Fatalf("winners %v, unexpected errors %v; want exactly one winner", won, errs)
	}
}

// TestRealClockTakeOver: with the real clock and a short TTL, a contender
// polling the lease gets it after the holder stops renewing (bounded, not
// timed: the machine may be loaded).
func TestRealClockTakeOver(t *testing.T) {
	js := natstest.JetStream(t)
	bucket := natstest.Name("leasetest")
	ctx := testContext(t)
	t.Cleanup(func() { _ = js.DeleteStream(context.Background(), bucket) })
	opts := Options{TTL: 300 * time.Millisecond}
	a, err := Open(ctx, js, bucket, "a", opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, js, bucket, "b", opts)
	if err != nil {
		t.Fatal(err)
	}
	la, err := a.Acquire(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	for {
		lb, err := b.Acquire(ctx, "p")
		if err == nil {
			if la.Valid() {
				t.Fatal("the old holder's lease is still valid after the take-over")
			}
			if lb.Epoch() <= la.Epoch() {
				t.Fatalf("epoch %d not above %d", lb.Epoch(), la.Epoch())
			}
			return
		}
		if !errors.Is(err, ErrHeld) {
			t.Fatalf("Acquire: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatal("the lease was not taken over within a minute")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"margin above TTL", Options{TTL: time.Second, Margin: 2 * time.Second}, "Options.Margin"},
		{"negative margin", Options{Margin: -1}, "Options.Margin"},
		{"tiny TTL", Options{TTL: time.Microsecond}, "Options.TTL"},
		{"four replicas", Options{Replicas: 4}, "Options.Replicas"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.EnsureDefaults()
			if err := tt.opts.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error naming %s", err, tt.want)
			}
		})
	}
	var ok Options
	ok.EnsureDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}

// TestSurveyReportsHoldersAndLapse: Survey lists the leases of a prefix
// with their holders, free once released, and lapsed once unchanged for
// the TTL by the surveying table's clock (after which Acquire takes them).
// Settle keeps the first value written.
func TestSurveyReportsHoldersAndLapse(t *testing.T) {
	clock := newFakeClock()
	tbs := tables(t, clock, "a", "b")
	a, b := tbs[0], tbs[1]
	ctx := testContext(t)
	mustAcquire(t, a, "p.000")
	l1 := mustAcquire(t, b, "p.001")
	mustAcquire(t, a, "m.a")
	if err := l1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := b.Survey(ctx, "p.")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "p.000" || got[0].Holder != "a" || got[0].Free() ||
		got[1].Name != "p.001" || got[1].Holder != "" || !got[1].Free() {
		t.Fatalf("Survey(p.) = %+v", got)
	}
	clock.Advance(ttl)
	got, err = b.Survey(ctx, "p.")
	if err != nil {
		t.Fatal(err)
	}
	if !got[0].Lapsed {
		t.Fatalf("p.000 unchanged for the TTL is not lapsed: %+v", got[0])
	}
	mustAcquire(t, b, "p.000")
	if ms, err := b.Survey(ctx, "m."); err != nil || len(ms) != 1 || ms[0].Holder != "a" {
		t.Fatalf("Survey(m.) = %+v, %v", ms, err)
	}
	if _, err := b.Survey(ctx, "p"); err == nil {
		t.Fatal("a prefix without a dot was accepted")
	}
	if v, err := a.Settle(ctx, "config", []byte("one")); err != nil || string(v) != "one" {
		t.Fatalf("first Settle = %q, %v", v, err)
	}
	if v, err := b.Settle(ctx, "config", []byte("two")); err != nil || string(v) != "one" {
		t.Fatalf("second Settle = %q, %v; want the first value", v, err)
	}
}

// TestConcurrentRenewalsWriteOnceEach: the renewals of many leases of one
// table, made at once as a process's owners make them, take one publish
// each and no read of the stream once the table's own writes are the
// stream's last; made at once against the stream's last sequence, they
// used to fail on each other's writes and read again, about n²/2
// attempts of three round trips.
func TestConcurrentRenewalsWriteOnceEach(t *testing.T) {
	clock := newFakeClock()
	ts := tables(t, clock, "a", "b")
	a, b := ts[0], ts[1]
	ctx := testContext(t)
	const n = 16
	leases := make([]*Lease, n)
	for i := range leases {
		leases[i] = mustAcquire(t, a, fmt.Sprintf("c.%03d", i))
	}
	renewAll := func() {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, l := range leases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = l.Renew(ctx)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("renewal of lease %d: %v", i, err)
			}
		}
	}
	for round := 0; round < 3; round++ {
		clock.Advance(a.opts.RenewInterval())
		reads, writes := a.reads.Load(), a.writes.Load()
		renewAll()
		if r, w := a.reads.Load()-reads, a.writes.Load()-writes; r != 0 || w != n {
			t.Fatalf("round %d: %d renewals read the stream's state %d times and published %d times, want 0 and %d", round, n, r, w, n)
		}
	}
	// Another table's write breaks the run: the next renewal reads the
	// stream again, once, and the run goes on from there.
	mustAcquire(t, b, "other")
	clock.Advance(a.opts.RenewInterval())
	reads := a.reads.Load()
	renewAll()
	if r := a.reads.Load() - reads; r != 1 {
		t.Fatalf("after another table's write: %d reads of the stream's state, want 1", r)
	}
	for _, l := range leases {
		if !l.Valid() {
			t.Fatalf("lease %s not valid after the renewals", l.Name())
		}
	}
}

// TestWriteWaitingForItsTurnGivesUp: a renewal waiting behind another
// write of its table gives up when its context ends, leaving the lease
// valid until its deadline, instead of waiting on past it.
func TestWriteWaitingForItsTurnGivesUp(t *testing.T) {
	clock := newFakeClock()
	a := tables(t, clock, "a")[0]
	l := mustAcquire(t, a, "turn")
	a.casTurn <- struct{}{} // another write holds the turn
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := l.Renew(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Renew waiting for its turn = %v, want the context's deadline", err)
	}
	if !l.Valid() {
		t.Fatal("a renewal that gave up lost the lease")
	}
	<-a.casTurn
	if err := l.Renew(testContext(t)); err != nil {
		t.Fatalf("Renew once the turn is free: %v", err)
	}
}
