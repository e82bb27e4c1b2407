package pebblestore

import (
	"errors"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flowrun/flowrun/connectors/kv"
)

// smallDisk is the real filesystem reporting avail bytes free.
type smallDisk struct {
	vfs.FS
	avail *atomic.Uint64
}

func (d smallDisk) GetDiskUsage(string) (vfs.DiskUsage, error) {
	return vfs.DiskUsage{AvailBytes: d.avail.Load(), TotalBytes: 100 << 20}, nil
}

// TestDiskReserve checks the free-space check: a group that would leave
// less than the reserve free is refused with ErrDiskFull (an ENOSPC), the
// store fails, Open refuses a disk with less than the reserve free, and a
// reopen with room has every acknowledged write and none of the refused.
func TestDiskReserve(t *testing.T) {
	dir := t.TempDir()
	var avail atomic.Uint64
	avail.Store(50 << 20)
	opts := Options{
		DiskReserveBytes: 1 << 20,
		Pebble:           func(o *pebble.Options) { o.FS = smallDisk{vfs.Default, &avail} },
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	value := strings.Repeat("v", 100<<10)
	if errs := update(t, s, set("acked", value, 0)); errs[0] != nil {
		t.Fatal(errs[0])
	}

	// Below the reserve: refused whatever room the log has preallocated
	// (writes that fit in it are admitted while the reserve is free).
	avail.Store(1<<20 - 4<<10)
	errs := make([]error, 1)
	err = s.Update(t.Context(), []kv.TxnFunc{set("refused", value, 0)}, errs)
	if !errors.Is(err, ErrDiskFull) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("put with 1020 KiB free and a 1 MiB reserve: %v, want ErrDiskFull", err)
	}
	for _, want := range []string{"no space left on device", "1020.0 KiB free", "reserve of 1.0 MiB", dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	avail.Store(50 << 20)
	if err := s.Update(t.Context(), []kv.TxnFunc{set("later", "1", 0)}, errs); !errors.Is(err, ErrDiskFull) || !errors.Is(err, ErrFailed) {
		t.Errorf("put after the refusal: %v, want the same failure", err)
	}
	if err := s.Close(); !errors.Is(err, ErrDiskFull) {
		t.Errorf("Close: %v, want the failure", err)
	}

	avail.Store(512 << 10)
	start := time.Now()
	if _, err := Open(dir, opts); !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Open with 512 KiB free and a 1 MiB reserve: %v, want ErrDiskFull naming the directory", err)
	} else {
		t.Logf("Open refused after %v: %v", time.Since(start), err)
	}

	avail.Store(50 << 20)
	s, err = Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var a, r got
	if errs := update(t, s, get("acked", &a), get("refused", &r)); errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if !a.found || r.found {
		t.Errorf("after reopen: acknowledged found %v, refused found %v", a.found, r.found)
	}
}

// TestDiskReserveOff checks that a negative DiskReserveBytes disables the
// check.
func TestDiskReserveOff(t *testing.T) {
	var avail atomic.Uint64
	s, err := Open(t.TempDir(), Options{
		DiskReserveBytes: -1,
		Pebble:           func(o *pebble.Options) { o.FS = smallDisk{vfs.Default, &avail} },
	})
	if err != nil {
		t.Fatalf("Open with 0 bytes reported free and no reserve: %v", err)
	}
	defer s.Close()
	if errs := update(t, s, set("k", "v", 0)); errs[0] != nil {
		t.Fatal(errs[0])
	}
}

func TestDefaultDiskReserve(t *testing.T) {
	for _, tt := range []struct {
		total uint64
		want  int64
	}{
		{20 << 20, MinDiskReserveBytes},
		{10 << 30, 10 << 30 / 100},
		{1 << 40, MaxDiskReserveBytes},
	} {
		if got := defaultDiskReserve(tt.total); got != tt.want {
			t.Errorf("defaultDiskReserve(%d) = %d, want %d", tt.total, got, tt.want)
		}
	}
}
