package kvbench

import (
	"bufio"
	"bytes"
	"os"
	"sort"
	"strconv"
	"time"
)

// percentile returns the q-quantile (0 < q <= 1), in microseconds, of
// per-batch latencies lat where batch i counts weights[i] times: every
// operation of a batch is given its batch's latency.
func percentile(lat []time.Duration, weights []int, q float64) float64 {
	idx := make([]int, len(lat))
	total := 0
	for i := range idx {
		idx[i] = i
		total += weights[i]
	}
	if total == 0 {
		return 0
	}
	sort.Slice(idx, func(a, b int) bool { return lat[idx[a]] < lat[idx[b]] })
	want := q * float64(total)
	seen := 0
	for _, i := range idx {
		seen += weights[i]
		if float64(seen) >= want {
			return float64(lat[i]) / float64(time.Microsecond)
		}
	}
	return float64(lat[idx[len(idx)-1]]) / float64(time.Microsecond)
}

// ResetPeakRSS resets the kernel's record of this process's peak resident
// set (VmHWM) to the current resident set, by writing "5" to
// /proc/self/clear_refs (Linux 4.0 and later). It reports whether the reset
// worked; where it does not (other systems, restricted containers), the
// peak keeps growing over the whole process.
func ResetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// PeakRSSMB returns this process's peak resident set in MiB (VmHWM from
// /proc/self/status), or 0 when it cannot be read.
func PeakRSSMB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	return parseVmHWM(data)
}

// parseVmHWM reads the "VmHWM:   1234 kB" line of a /proc status file.
func parseVmHWM(status []byte) float64 {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := bytes.CutPrefix(sc.Bytes(), []byte("VmHWM:"))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		if len(fields) == 0 {
			return 0
		}
		kb, err := strconv.ParseFloat(string(fields[0]), 64)
		if err != nil {
			return 0
		}
		return kb / 1024
	}
	return 0
}
