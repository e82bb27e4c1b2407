package kafka

import (
	"encoding/json"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPartitionMark: the mark (the offset a commit would store) is one past
// the highest offset below which every record handed over is done,
// whatever order records finish in; gaps in the offsets (compaction,
// transaction markers) do not hold it back.
func TestPartitionMark(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handed  []int64
		done    []int64
		want    int64
		pending int
	}{
		{"nothing done", []int64{0, 1, 2}, nil, -1, 3},
		{"in order", []int64{0, 1, 2}, []int64{0, 1}, 2, 1},
		{"head undone holds the rest", []int64{0, 1, 2}, []int64{1, 2}, -1, 3},
		{"head done last releases all", []int64{0, 1, 2}, []int64{2, 1, 0}, 3, 0},
		{"middle undone", []int64{5, 6, 7, 8}, []int64{5, 7, 8}, 6, 3},
		{"gaps in offsets", []int64{3, 7, 12}, []int64{12, 3, 7}, 13, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPartition(0)
			for _, o := range tc.handed {
				p.add(o)
			}
			for _, o := range tc.done {
				p.finish(o)
			}
			if p.mark != tc.want || p.waiting() != tc.pending {
				t.Errorf("mark %d with %d pending, want %d with %d", p.mark, p.waiting(), tc.want, tc.pending)
			}
			if len(p.pending) > tc.pending && len(p.pending) > 1024 {
				t.Errorf("%d offsets kept for %d pending: a leak", len(p.pending), tc.pending)
			}
		})
	}
}

// TestRecordMetaAsJSONMarshal: the MetaKey object is the bytes
// encoding/json gives, whatever the topic and key hold.
func TestRecordMetaAsJSONMarshal(t *testing.T) {
	type meta struct {
		Topic     string  `json:"topic"`
		Partition int32   `json:"partition"`
		Offset    int64   `json:"offset"`
		Key       *string `json:"key,omitempty"`
	}
	for _, key := range [][]byte{nil, {}, []byte("k-1"), []byte(`a"b\c`), []byte("<&>"), []byte("a<b"), []byte("é\u2028"), {0xff, 'x'}, []byte("\x01\n")} {
		for _, topic := range []string{"in", "t.é<>"} {
			r := &kgo.Record{Topic: topic, Partition: 3, Offset: 1 << 40, Key: key}
			mt := meta{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
			if r.Key != nil {
				k := string(r.Key)
				mt.Key = &k
			}
			want, _ := json.Marshal(mt)
			if got := recordMeta(r); got != string(want) {
				t.Errorf("key %q topic %q: %s, want %s", key, topic, got, want)
			}
		}
	}
}
