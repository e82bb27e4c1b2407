package kv

import (
	"errors"
	"testing"
)

// TestParseStoreKey: every kind of key the layout writes is taken apart
// into its kind, namespace and user or idempotency key; other keys are
// refused with ErrNotStoreKey.
func TestParseStoreKey(t *testing.T) {
	l, empty := newLayout("orders"), newLayout("")
	for _, tc := range []struct {
		name string
		key  []byte
		want StoreKey
	}{
		{"data", l.dataKey(nil, "player/7"), StoreKey{StoreKeyData, "orders", []byte("player/7")}},
		{"empty user key", l.dataKey(nil, ""), StoreKey{StoreKeyData, "orders", []byte{}}},
		{"expiry", l.expiryKey(nil, 1700000000000, []byte("player/7")), StoreKey{StoreKeyExpiry, "orders", []byte("player/7")}},
		{"idempotency", l.idemKey(nil, "S:42/abc"), StoreKey{StoreKeyIdem, "orders", []byte("S:42/abc")}},
		{"idempotency expiry", l.idemExpiryKey(nil, 5, []byte("S:42/abc")), StoreKey{StoreKeyIdemExpiry, "orders", []byte("S:42/abc")}},
		{"empty namespace", empty.dataKey(nil, "k"), StoreKey{StoreKeyData, "", []byte("k")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStoreKey(tc.key)
			if err != nil || got.Kind != tc.want.Kind || got.Namespace != tc.want.Namespace || string(got.Key) != string(tc.want.Key) {
				t.Fatalf("ParseStoreKey(%q) = %+v, %v; want %+v", tc.key, got, err, tc.want)
			}
		})
	}
	for _, bad := range [][]byte{nil, []byte("d"), []byte("\x00flowrun.position"), []byte("d\x09short"), append(l.expiry, 1, 2)} {
		if got, err := ParseStoreKey(bad); !errors.Is(err, ErrNotStoreKey) {
			t.Errorf("ParseStoreKey(%q) = %+v, %v; want ErrNotStoreKey", bad, got, err)
		}
	}
}
