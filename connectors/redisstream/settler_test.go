package redisstream

import (
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestSettle: done queues the ack of its entry and frees its slot, also
// while an earlier entry is still unsettled (a slow entry does not hold
// back the later ones); nack keeps the slot and schedules a retry, unless
// the subscriber is closing: then it frees the slot and drops the entry.
// Every entry handed out is counted settled.
func TestSettle(t *testing.T) {
	const slots = 8
	s := &subscriber{
		o:         Options{RetryDelay: time.Hour},
		slots:     make(chan struct{}, slots),
		freed:     make(chan struct{}, 1),
		ackWake:   make(chan struct{}, 1),
		retryWake: make(chan struct{}, 1),
		stop:      make(chan struct{}),
		inflight:  map[string]bool{},
	}
	var xs []redis.XMessage
	for _, id := range []string{"1-0", "2-0", "3-0", "4-0", "5-0"} {
		s.slots <- struct{}{}
		s.inflight[id] = true
		xs = append(xs, redis.XMessage{ID: id})
	}
	out := make(chan []delivery, 1)
	if !s.send(t.Context(), out, deliveries(xs, nil)) {
		t.Fatal("send: not handed out")
	}
	if ds := <-out; len(ds) != len(xs) || ds[0].n != 1 {
		t.Fatalf("handed out %v", ds)
	}
	state := func() (acks []string, used int, retries []string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range s.retries {
			retries = append(retries, r.id)
		}
		return slices.Sorted(slices.Values(s.acks)), len(s.slots), retries
	}
	steps := []struct {
		name    string
		do      func()
		acks    []string
		used    int
		retries []string
	}{
		{name: "later ones done while the first is not settled",
			do:   func() { s.done("2-0"); s.done("3-0") },
			acks: []string{"2-0", "3-0"}, used: 3},
		{name: "a nack keeps its slot and schedules a retry",
			do:   func() { s.nack("4-0") },
			acks: []string{"2-0", "3-0"}, used: 3, retries: []string{"4-0"}},
		{name: "the first done",
			do:   func() { s.done("1-0") },
			acks: []string{"1-0", "2-0", "3-0"}, used: 2, retries: []string{"4-0"}},
		{name: "a nack while closing frees the slot",
			do: func() {
				s.mu.Lock()
				s.closing = true
				s.mu.Unlock()
				s.nack("5-0")
			},
			acks: []string{"1-0", "2-0", "3-0"}, used: 1, retries: []string{"4-0"}},
	}
	for _, st := range steps {
		st.do()
		if acks, used, retries := state(); !slices.Equal(acks, st.acks) || used != st.used || !slices.Equal(retries, st.retries) {
			t.Fatalf("%s: acks %v, slots used %d, retries %v; want %v, %d, %v", st.name, acks, used, retries, st.acks, st.used, st.retries)
		}
	}
	s.mu.Lock()
	dropped := !s.inflight["5-0"]
	s.mu.Unlock()
	if !dropped {
		t.Error("the entry nacked while closing is still in flight")
	}
	settled := make(chan struct{})
	go func() { s.unsettled.Wait(); close(settled) }()
	select {
	case <-settled:
	case <-time.After(10 * time.Second):
		t.Error("not every entry handed out was counted settled")
	}
}

// TestAcksWithBlockingRead: the acks ride in the pipeline of a blocking
// XREADGROUP only when the client's read timeout, which go-redis applies
// to a pipeline, outlasts the block.
func TestAcksWithBlockingRead(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want bool
	}{
		{url: "redis://127.0.0.1:1", want: true}, // go-redis's default
		{url: "redis://127.0.0.1:1?read_timeout=100ms", want: false},
		{url: "redis://127.0.0.1:1?read_timeout=1s", want: false},
		{url: "redis://127.0.0.1:1?read_timeout=2s", want: true},
		{url: "redis://127.0.0.1:1?read_timeout=-1", want: true},
	} {
		o, err := redis.ParseURL(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		s := newSubscriber(redis.NewClient(o), Options{DialTimeout: time.Second}, 4)
		if s.ackWithBlock != tc.want {
			t.Errorf("%s: acks with a blocking read %v, want %v", tc.url, s.ackWithBlock, tc.want)
		}
		if err := s.close(); err != nil {
			t.Error(err)
		}
	}
}
