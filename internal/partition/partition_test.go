package partition

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestHashIsXXH64 pins the hash to XXH64 with seed 0 by the reference
// implementation's published values: a library that changed its function
// would move every key to another partition.
func TestHashIsXXH64(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
	}{
		{"", 0xef46db3751d8e999},
		{"a", 0xd24ec4f1a98c6e5b},
		{"abc", 0x44bc2cf5ad770999},
	} {
		if got := xxhash.Sum64String(tt.in); got != tt.want {
			t.Errorf("XXH64(%q) = %#x, want %#x", tt.in, got, tt.want)
		}
	}
}

// TestPartitionsAreStable pins the partitions of a few keys: they must
// never change, or a restarted flow would look for its state elsewhere.
func TestPartitionsAreStable(t *testing.T) {
	for _, tt := range []struct {
		key   string
		count int
		want  int
	}{
		{"", 64, 0xef46db3751d8e999 % 64},
		{"abc", 64, 0x44bc2cf5ad770999 % 64},
		{"abc", 1, 0},
		{"player/7", 64, golden["player/7"]},
		{"日本", 64, golden["日本"]},
		{"player/7", 1000, golden1000["player/7"]},
	} {
		if got := Of([]byte(tt.key), tt.count); got != tt.want {
			t.Errorf("Of(%q, %d) = %d, want %d", tt.key, tt.count, got, tt.want)
		}
		if got := OfString(tt.key, tt.count); got != tt.want {
			t.Errorf("OfString(%q, %d) = %d, want %d", tt.key, tt.count, got, tt.want)
		}
	}
}

// golden values computed once with XXH64; see TestHashIsXXH64.
var (
	golden     = map[string]int{"player/7": 32, "日本": 43}
	golden1000 = map[string]int{"player/7": 544}
)

// TestKeysSpreadOverPartitions: 10,000 keys over 64 partitions leave no
// partition empty or more than twice the mean.
func TestKeysSpreadOverPartitions(t *testing.T) {
	const n, count = 10000, 64
	var per [count]int
	for i := 0; i < n; i++ {
		per[OfString(fmt.Sprintf("key/%d", i), count)]++
	}
	for p, c := range per {
		if c == 0 || c > 2*n/count {
			t.Errorf("partition %d has %d of %d keys (mean %d)", p, c, n, n/count)
		}
	}
}

func TestCheckCount(t *testing.T) {
	for _, n := range []int{0, -1, MaxCount + 1} {
		if err := CheckCount(n); !errors.Is(err, ErrCount) {
			t.Errorf("CheckCount(%d) = %v, want ErrCount", n, err)
		}
	}
	for _, n := range []int{1, 64, MaxCount} {
		if err := CheckCount(n); err != nil {
			t.Errorf("CheckCount(%d) = %v", n, err)
		}
	}
}

func TestSubjects(t *testing.T) {
	if got := Subject("orders.in", 17); got != "orders.in.p.017" {
		t.Fatalf("Subject = %q", got)
	}
	for p := 0; p < 64; p++ {
		got, err := ParseSubject("orders.in", Subject("orders.in", p), 64)
		if err != nil || got != p {
			t.Fatalf("ParseSubject(Subject(%d)) = %d, %v", p, got, err)
		}
	}
	for _, bad := range []string{"orders.in", "orders.in.p.17", "orders.in.p.0170", "orders.in.p.-01", "orders.in.p.064", "other.p.001", "orders.in.p.abc"} {
		if _, err := ParseSubject("orders.in", bad, 64); err == nil {
			t.Errorf("ParseSubject(%q) accepted", bad)
		}
	}
}
