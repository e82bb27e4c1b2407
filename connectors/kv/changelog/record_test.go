package changelog

import (
	"errors"
	"reflect"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		rec  Record
	}{
		{"empty", Record{}},
		{"fence", Record{Fence: true, Epoch: 7}},
		{"writes", Record{Input: 1 << 40, Epoch: 3, Writes: []Write{
			{Op: OpSet, Key: []byte("k1"), Value: []byte(`{"a":1}`)},
			{Op: OpSet, Key: []byte("k2"), Value: []byte("2"), ExpireAt: 1_800_000_000_123},
			{Op: OpSet, Key: []byte("k3"), Value: []byte{}, ExpireAt: -5},
			{Op: OpDelete, Key: []byte("k1")},
			{Op: OpDeleteRange, Key: []byte("a"), End: []byte("b")},
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := AppendRecord([]byte("prefix"), &tt.rec)
			got, err := DecodeRecord(b[len("prefix"):])
			if err != nil {
				t.Fatalf("DecodeRecord: %v", err)
			}
			want := tt.rec
			for i := range want.Writes {
				if want.Writes[i].Op == OpSet && want.Writes[i].Value == nil {
					want.Writes[i].Value = []byte{}
				}
			}
			if !reflect.DeepEqual(normalize(got), normalize(want)) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// normalize makes empty and nil byte slices compare equal.
func normalize(r Record) Record {
	if len(r.Writes) == 0 {
		r.Writes = nil
	}
	for i, w := range r.Writes {
		for _, p := range []*[]byte{&w.Key, &w.End, &w.Value} {
			if len(*p) == 0 {
				*p = nil
			}
		}
		r.Writes[i] = w
	}
	return r
}

func TestDecodeRecordRefusesCorruptInput(t *testing.T) {
	good := AppendRecord(nil, &Record{Input: 9, Writes: []Write{{Op: OpSet, Key: []byte("key"), Value: []byte("value")}}})
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"other version", append([]byte{2}, good[1:]...)},
		{"truncated", good[:len(good)-2]},
		{"trailing bytes", append(append([]byte{}, good...), 0)},
		{"unknown op", func() []byte { b := append([]byte{}, good...); b[5] = 9; return b }()},
		{"huge write count", []byte{recordVersion, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeRecord(tt.b); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeRecord = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestPartRoundTrip(t *testing.T) {
	b := appendPart(nil, 3, 5, []byte("chunk"))
	i, n, chunk, err := parsePart(b)
	if err != nil || i != 3 || n != 5 || string(chunk) != "chunk" {
		t.Fatalf("parsePart = %d, %d, %q, %v", i, n, chunk, err)
	}
	for _, bad := range [][]byte{nil, {2, 0, 1}, appendPart(nil, 5, 5, nil), appendPart(nil, 0, 0, nil)} {
		if _, _, _, err := parsePart(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("parsePart(%v) = %v, want ErrCorrupt", bad, err)
		}
	}
}
