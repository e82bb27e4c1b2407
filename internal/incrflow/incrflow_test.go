package incrflow

import (
	"errors"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

// answersFor answers messages 0..n-1 of keys keys with the right values.
func answersFor(n, keys int) []Answer {
	count := map[int]int64{}
	out := make([]Answer, n)
	for i := range n {
		count[i%keys]++
		out[i] = Answer{Corr: i, Key: StoreKey(i, keys), Value: count[i%keys], Seq: uint64(i + 1)}
	}
	return out
}

func TestCheck(t *testing.T) {
	const n, keys = 10, 3 // keys 0 and 2 get 4 and 3 messages: uneven counts
	tests := []struct {
		name     string
		answers  func() []Answer
		wantErr  error
		wantIn   string
		repeated int
	}{
		{name: "exact", answers: func() []Answer { return answersFor(n, keys) }},
		{name: "repeated with the same value", answers: func() []Answer {
			a := answersFor(n, keys)
			return append(a, a[4], a[7])
		}, repeated: 2},
		{name: "repeated with another value", answers: func() []Answer {
			a := answersFor(n, keys)
			b := a[4]
			b.Value++
			return append(a, b)
		}, wantErr: ErrCheck, wantIn: "applied twice"},
		{name: "one missing", answers: func() []Answer { return answersFor(n, keys)[:n-1] }, wantErr: ErrIncomplete, wantIn: "9 of 10"},
		{name: "an increment applied twice", answers: func() []Answer {
			a := answersFor(n, keys)
			a[3].Value = 1 // key 0 answered 1, 1, 3, 4
			return a
		}, wantErr: ErrCheck, wantIn: "key c/k00000"},
		{name: "wrong key", answers: func() []Answer {
			a := answersFor(n, keys)
			a[2].Key = "c/k00001"
			return a
		}, wantErr: ErrCheck, wantIn: `want "c/k00002"`},
		{name: "unknown message", answers: func() []Answer {
			return append(answersFor(n, keys), Answer{Corr: n})
		}, wantErr: ErrCheck, wantIn: "outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Check(tt.answers(), n, keys)
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Check: %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.wantIn) {
					t.Fatalf("error %q does not say %q", err, tt.wantIn)
				}
				if tt.wantErr == ErrCheck && errors.Is(err, ErrIncomplete) {
					t.Fatalf("error %q is a wrong answer, not an incomplete set", err)
				}
				return
			}
			if s.Answered != n || s.Repeated != tt.repeated || s.First.Corr != 0 || s.Last.Corr != n-1 {
				t.Fatalf("summary %+v: want %d answered, %d repeated, first 0, last %d", s, n, tt.repeated, n-1)
			}
		})
	}
}

// TestFlowFilesLoad loads the flow file of each store: the partitioned,
// pebble and etcd variants are flows flowrun accepts.
func TestFlowFilesLoad(t *testing.T) {
	base := Flow{Name: "f", URLs: "nats://127.0.0.1:1,nats://127.0.0.1:2", In: "x.in", Out: "x.out", Endpoints: "http://127.0.0.1:3", Prefix: "p/"}
	for _, store := range []string{Partitioned, Pebble, Etcd} {
		for _, noIdem := range []bool{false, true} {
			f := base
			f.Store, f.NoIdem = store, noIdem
			src, err := f.YAML()
			if err != nil {
				t.Fatal(err)
			}
			_, diags, err := flows.LoadBytes("flow.yaml", []byte(src), builtin.NewRegistry())
			if err != nil {
				t.Fatalf("%s (no idem %v): %v\n%s", store, noIdem, err, src)
			}
			for _, d := range diags {
				if d.Severity == flows.Error {
					t.Fatalf("%s: %v\n%s", store, d, src)
				}
			}
			if got := strings.Contains(src, "idem_from: message_id"); got == noIdem {
				t.Fatalf("%s: idem_from present %v with NoIdem %v", store, got, noIdem)
			}
			if strings.Contains(src, "partitions_of") != (store == Partitioned) {
				t.Fatalf("%s: partitions_of only for the partitioned store:\n%s", store, src)
			}
			if store != Partitioned && !strings.Contains(src, `subject: "x.in",`) {
				t.Fatalf("%s: an unpartitioned flow reads its one input subject:\n%s", store, src)
			}
		}
	}
	if _, err := (Flow{Store: "redis"}).YAML(); err == nil {
		t.Fatal("an unknown store gave a flow")
	}
	if _, err := (Flow{Store: Etcd}).YAML(); err == nil {
		t.Fatal("an etcd flow without endpoints gave a flow")
	}
}
