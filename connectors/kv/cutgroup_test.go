package kv_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
	"github.com/flowrun/flowrun/pipeline"
)

// groupingStore is a kv.Backend whose writer, like pebblestore's, takes
// every submission queued into one group and releases them all once the
// group has run. It is adversarial about timing: the first group holds
// until a submission tagged "light" is queued (a slice's first part that
// runs long while another connector's command arrives) when hold is set,
// and after each
// group the writer waits up to linger for a second submission before it
// takes the queue, so that whatever a finished group makes its submitter
// queue next lands beside what was already waiting.
type groupingStore struct {
	inner  kv.Backend
	linger time.Duration

	mu          sync.Mutex
	cond        *sync.Cond
	queue       []*groupReq
	groups      [][]*groupReq // every group run, in order
	hold        bool          // the next group holds until light is closed
	light       chan struct{} // closed once a "light" submission is queued
	lightQueued bool
	closed      bool
}

type groupReq struct {
	tag  string
	fns  []kv.TxnFunc
	errs []error
	done chan error
}

func newGroupingStore(t *testing.T, linger time.Duration) *groupingStore {
	s := &groupingStore{inner: memstore.New(), linger: linger, light: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	go s.write()
	t.Cleanup(func() {
		s.mu.Lock()
		s.closed = true
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	return s
}

// handle is the store as one connector sees it: its submissions carry tag.
func (s *groupingStore) handle(tag string) kv.Backend { return &taggedStore{s: s, tag: tag} }

func (s *groupingStore) write() {
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closed {
			s.cond.Wait()
		}
		{
			deadline := time.Now().Add(s.linger)
			for len(s.queue) < 2 && !s.closed && time.Now().Before(deadline) {
				s.mu.Unlock()
				time.Sleep(time.Millisecond)
				s.mu.Lock()
			}
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		group := s.queue
		s.queue = nil
		s.groups = append(s.groups, group)
		hold, light := s.hold, s.light
		s.hold = false
		s.mu.Unlock()
		if hold {
			<-light
		}
		var fns []kv.TxnFunc
		for _, r := range group {
			fns = append(fns, r.fns...)
		}
		errs := make([]error, len(fns))
		err := s.inner.Update(context.Background(), fns, errs)
		at := 0
		for _, r := range group {
			at += copy(r.errs, errs[at:])
			r.done <- err
		}
	}
}

type taggedStore struct {
	s   *groupingStore
	tag string
}

func (b *taggedStore) Submit(_ context.Context, fns []kv.TxnFunc, errs []error) func() error {
	r := &groupReq{tag: b.tag, fns: fns, errs: errs, done: make(chan error, 1)}
	b.s.mu.Lock()
	b.s.queue = append(b.s.queue, r)
	if b.tag == "light" && !b.s.lightQueued {
		b.s.lightQueued = true
		close(b.s.light)
	}
	b.s.cond.Broadcast()
	b.s.mu.Unlock()
	return func() error { return <-r.done }
}

func (b *taggedStore) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return b.Submit(ctx, fns, errs)()
}

func (b *taggedStore) Close() error { return nil }

// TestCutPartWaitsForCommandsQueuedBeforeIt: a slice cut into parts runs
// its next part only after the commands another connector queued while
// its first part ran have committed; they never share a group with it,
// however the writer's timing falls. Sharing one, they would wait for the
// part's first command, which may run for a script's whole timeout.
func TestCutPartWaitsForCommandsQueuedBeforeIt(t *testing.T) {
	s := newGroupingStore(t, 50*time.Millisecond)
	ctx := context.Background()
	open := func(tag string) *kv.Connector {
		// A budget of 40 keys cuts a submission after 10.
		c, err := kv.New(s.handle(tag), kv.Options{Namespace: tag, ReclaimInterval: -1, MaxKeysVisited: 40})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	heavy, light := open("heavy"), open("light")
	var errs []string
	collect := emitFunc(func(port string, ev pipeline.Event) {
		if port != pipeline.PortOut {
			errs = append(errs, string(ev.Meta))
		}
	})
	var fill []pipeline.Event
	for i := range 30 {
		fill = append(fill, pipeline.Event{Meta: fmt.Appendf(nil, `{"kv":{"put":"k%02d"}}`, i), Data: []byte("1")})
	}
	if err := heavy.Process(ctx, fill, collect); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.groups, s.hold, s.light, s.lightQueued = nil, true, make(chan struct{}), false
	s.mu.Unlock()
	// A put, then counts of 30 keys each: every part runs one count.
	events := []pipeline.Event{{Meta: []byte(`{"kv":{"put":"w"}}`), Data: []byte("1")}}
	for range 3 {
		events = append(events, pipeline.Event{Meta: []byte(`{"kv":{"count":"k"}}`)})
	}
	heavyDone := make(chan struct{})
	go func() {
		defer close(heavyDone)
		if err := heavy.Process(ctx, events, collect); err != nil {
			t.Error(err)
		}
	}()
	for {
		s.mu.Lock()
		n := len(s.groups)
		s.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := light.Process(ctx, []pipeline.Event{{Meta: []byte(`{"kv":{"put":"x"}}`), Data: []byte("1")}}, collect); err != nil {
		t.Fatal(err)
	}
	<-heavyDone
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, g := range s.groups {
		var tags []string
		hasLight, heavyWork := false, false
		for _, r := range g {
			tags = append(tags, fmt.Sprintf("%s(%d)", r.tag, len(r.fns)))
			hasLight = hasLight || r.tag == "light"
			// A heavy submission of one command after the first
			// group is the connector passing the queue; any other
			// runs the slice's commands.
			heavyWork = heavyWork || r.tag == "heavy" && (i == 0 || len(r.fns) > 1)
		}
		t.Logf("group %d: %v", i, tags)
		if i > 0 && hasLight && heavyWork {
			t.Errorf("group %d ran the light put beside a part of the heavy slice: %v", i, tags)
		}
	}
	if len(s.groups) < 3 {
		t.Errorf("%d groups: the heavy slice was not cut", len(s.groups))
	}
}
