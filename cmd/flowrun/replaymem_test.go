package main

import (
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// memTableSize returns the memtable size Pebble recorded in the OPTIONS
// file of the store in dir.
func memTableSize(t *testing.T, dir string) int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "OPTIONS-*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no OPTIONS file in %s (%v)", dir, err)
	}
	m := regexp.MustCompile(`(?m)^\s*mem_table_size=(\d+)$`).FindStringSubmatch(readFile(t, files[len(files)-1]))
	if m == nil {
		t.Fatalf("no mem_table_size in %s", files[len(files)-1])
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReplayMemTableSize checks that replay opens its stores with the
// smaller memtables of replayMemTableBytes and run with the default.
func TestReplayMemTableSize(t *testing.T) {
	for _, tc := range []struct {
		verb string
		want int64
	}{
		{"replay", replayMemTableBytes},
		{"run", pebblestore.DefaultMemTableBytes},
	} {
		t.Run(tc.verb, func(t *testing.T) {
			dir := copyExample(t, "kv")
			flow, events := filepath.Join(dir, "flow.yaml"), filepath.Join(dir, "events.jsonl")
			args := []string{tc.verb, flow}
			stdin := ""
			if tc.verb == "replay" {
				args = append(args, events)
			} else {
				stdin = readFile(t, events)
			}
			if code, _, stderr := runCLI(t, stdin, args...); code != 0 {
				t.Fatalf("%s: exit %d: %s", tc.verb, code, stderr)
			}
			if got := memTableSize(t, filepath.Join(dir, "state")); got != tc.want {
				t.Errorf("%s opened its store with memtables of %d bytes, want %d", tc.verb, got, tc.want)
			}
		})
	}
	if replayMemTableBytes >= pebblestore.DefaultMemTableBytes {
		t.Errorf("replayMemTableBytes %d is not below the default %d", replayMemTableBytes, pebblestore.DefaultMemTableBytes)
	}
}
