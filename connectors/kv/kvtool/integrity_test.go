package kvtool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

func dumpString(t *testing.T, s *Store) string {
	t.Helper()
	var b bytes.Buffer
	if _, err := s.Dump(context.Background(), &b, time.Now); err != nil {
		t.Fatalf("Dump: %v", err)
	}
	return b.String()
}

// TestLoadAppliesCommandLimits: a record a put would refuse is refused by
// load with the put's error, and the store is left as it was.
func TestLoadAppliesCommandLimits(t *testing.T) {
	longKey := strings.Repeat("k", 300)
	bigValue := `"` + strings.Repeat("v", 6<<20) + `"`
	line := func(key, value string) string {
		return fmt.Sprintf(`{"namespace":"n","key":%q,"value":%s}`, key, value) + "\n"
	}
	tests := []struct {
		name, key, value string
		sentinel         error
	}{
		{"key of 300 characters", longKey, `1`, kv.ErrKeyTooLong},
		{"value of 6 MiB", "big", bigValue, kv.ErrValueTooLarge},
	}
	for _, tc := range tests {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%t", tc.name, stream), func(t *testing.T) {
				ctx := context.Background()
				s := open(t, t.TempDir(), true)
				defer s.Close()
				if res := run(t, s, "n", `{"put":"before"}`, `0`); res.Err != nil {
					t.Fatal(res.Err)
				}
				// The error the command gives.
				res := run(t, s, "n", fmt.Sprintf(`{"put":%q}`, tc.key), tc.value)
				if res.Err == nil {
					t.Fatalf("put accepted the record")
				}
				cmdErr := gjson.GetBytes(res.Err.Meta, "error").String()
				before := dumpString(t, s)

				input := line("ok", "1") + line(tc.key, tc.value)
				var r io.Reader = strings.NewReader(input)
				if stream {
					input = line(tc.key, tc.value) + line("ok", "1")
					r = pipe(input)
				}
				n, err := s.Load(ctx, r, LoadOptions{Name: "in.jsonl"})
				if !errors.Is(err, tc.sentinel) || n != 0 {
					t.Fatalf("Load = %d, %v; want 0 and %v", n, err, tc.sentinel)
				}
				if !strings.Contains(err.Error(), cmdErr) {
					t.Fatalf("load error %q does not carry the command's error %q", err, cmdErr)
				}
				if after := dumpString(t, s); after != before {
					t.Fatalf("store changed:\n%s", after)
				}
			})
		}
	}
}

// failingReader returns its lines, then fails.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// TestInterruptedLoadIsReported: a load that stops half way leaves a mark
// that PartialLoads and a connector opening the store report, until a
// load of the same input completes.
func TestInterruptedLoadIsReported(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir, true)
	var input strings.Builder
	for i := range 2500 {
		fmt.Fprintf(&input, `{"namespace":"n","key":"k%04d","value":%d}`+"\n", i, i)
	}
	half := input.String()[:input.Len()/2]
	half = half[:strings.LastIndexByte(half, '\n')+1]
	injected := errors.New("injected read failure")
	n, err := s.Load(ctx, &failingReader{r: strings.NewReader(half), err: injected}, LoadOptions{Name: "big.jsonl", Group: 100})
	if !errors.Is(err, injected) || n == 0 {
		t.Fatalf("Load = %d, %v; want some records and the injected failure", n, err)
	}
	loads, err := s.PartialLoads(ctx)
	if err != nil || len(loads) != 1 || loads[0].Source != "big.jsonl" {
		t.Fatalf("PartialLoads = %v, %v; want the load of big.jsonl", loads, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A connector opening the store warns.
	b, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	c, err := kv.New(b, kv.Options{Namespace: "n", ReclaimInterval: -1, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "partially loaded") ||
		!strings.Contains(logs.String(), "big.jsonl") {
		t.Fatalf("connector open did not warn of the partial load:\n%s", logs.String())
	}
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// A load of another input leaves the mark; a complete load of the same
	// input clears it.
	s = open(t, dir, false)
	defer s.Close()
	if _, err := s.Load(ctx, pipe(`{"namespace":"n","key":"other","value":1}`), LoadOptions{Name: "other.jsonl"}); err != nil {
		t.Fatal(err)
	}
	if loads, _ := s.PartialLoads(ctx); len(loads) != 1 {
		t.Fatalf("after a load of another input: %v", loads)
	}
	if n, err := s.Load(ctx, strings.NewReader(input.String()), LoadOptions{Name: "big.jsonl"}); err != nil || n != 2500 {
		t.Fatalf("reload = %d, %v", n, err)
	}
	if loads, _ := s.PartialLoads(ctx); len(loads) != 0 {
		t.Fatalf("after a complete load of the same input: %v", loads)
	}
	// Marks are invisible to dumps and commands.
	if d := dumpString(t, s); strings.Count(d, "\n") != 2501 {
		t.Fatalf("dump has %d lines, want 2501", strings.Count(d, "\n"))
	}
}

// corruptSSTable flips bytes in the middle of the largest sstable of dir,
// inside a data block.
func corruptSSTable(t *testing.T, dir string) {
	t.Helper()
	ssts, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	if len(ssts) == 0 {
		t.Fatal("no sstable")
	}
	size := func(p string) int64 { st, _ := os.Stat(p); return st.Size() }
	slices.SortFunc(ssts, func(a, b string) int { return int(size(b) - size(a)) })
	b, err := os.ReadFile(ssts[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) / 2; i < len(b)/2+16; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(ssts[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// FillAndFlush writes n keys of about 200 bytes into a new store in dir and
// closes it; reopening it flushes them into sstables.
func fillAndFlush(t *testing.T, dir string, n int) {
	t.Helper()
	s := open(t, dir, true)
	var input strings.Builder
	for i := range n {
		fmt.Fprintf(&input, `{"namespace":"n","key":"k%06d","value":"%s"}`+"\n", i, strings.Repeat("x", 200))
	}
	if _, err := s.Load(context.Background(), strings.NewReader(input.String()), LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, false) // replays the log into an sstable
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestDumpOfDamagedStoreIsMarkedIncomplete: a dump that cannot read the
// whole store fails and its output ends with the incomplete marker,
// which load refuses.
func TestDumpOfDamagedStoreIsMarkedIncomplete(t *testing.T) {
	dir := t.TempDir()
	fillAndFlush(t, dir, 20000)
	corruptSSTable(t, dir)
	s := open(t, dir, false)
	defer s.Close()
	var out bytes.Buffer
	n, err := s.Dump(context.Background(), &out, time.Now)
	if err == nil {
		t.Fatalf("Dump of a damaged store succeeded with %d keys", n)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	last := lines[len(lines)-1]
	if !gjson.Get(last, kv.IncompleteDumpField).Exists() {
		t.Fatalf("dump output (%d lines) does not end with the incomplete marker; last line %.200s", len(lines), last)
	}
	t.Logf("%d lines, the last %s", len(lines), last)
	fresh := open(t, t.TempDir(), true)
	defer fresh.Close()
	if _, err := fresh.Load(context.Background(), bytes.NewReader(out.Bytes()), LoadOptions{}); !errors.Is(err, kv.ErrIncompleteDump) {
		t.Fatalf("Load of the incomplete dump: %v, want ErrIncompleteDump", err)
	}
	if d := dumpString(t, fresh); d != "" {
		t.Fatal("load of an incomplete dump stored records")
	}
}

func TestForgetPartialLoads(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), true)
	defer s.Close()
	injected := errors.New("injected")
	if _, err := s.Load(ctx, &failingReader{r: strings.NewReader(`{"namespace":"n","key":"a","value":1}` + "\n"), err: injected}, LoadOptions{Name: "x"}); !errors.Is(err, injected) {
		t.Fatal(err)
	}
	forgot, err := s.ForgetPartialLoads(ctx)
	if err != nil || len(forgot) != 1 || forgot[0].Source != "x" {
		t.Fatalf("ForgetPartialLoads = %v, %v", forgot, err)
	}
	if loads, err := s.PartialLoads(ctx); err != nil || len(loads) != 0 {
		t.Fatalf("PartialLoads after forgetting = %v, %v", loads, err)
	}
	if res := run(t, s, "n", `{"get":"a"}`, ""); res.Err != nil || string(res.Out[0].Data) != "1" {
		t.Fatalf("the partially loaded record: %+v", res)
	}
}
