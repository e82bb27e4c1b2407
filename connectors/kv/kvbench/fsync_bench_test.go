package kvbench

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowrun/flowrun/internal/loadgen"
)

// BenchmarkDiskSync measures this disk's fsync (fdatasync) after each
// append of a commit group's log record, 32 KiB (about 250 puts of
// 100-byte values, the WAL of a commit group at 400,000 puts/s), to a file
// in the benchmark directory (-benchdir, default the system temp dir, as
// flowrun bench uses). It reports the latency percentiles: with sync on, no
// event completes before the fsync of its group, so their p99 is a floor
// for the open loop's. Run it where the store lives:
//
//	go test -run '^$' -bench DiskSync -benchtime 2000x ./connectors/kv/kvbench/
func BenchmarkDiskSync(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "sync.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rec := make([]byte, 32<<10)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(rec); err != nil {
			b.Fatal(err)
		}
		t := time.Now()
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	q := loadgen.Percentiles(lat)
	b.ReportMetric(q.P50, "p50-us")
	b.ReportMetric(q.P99, "p99-us")
	b.ReportMetric(q.P999, "p999-us")
	b.ReportMetric(q.Max, "max-us")
}
