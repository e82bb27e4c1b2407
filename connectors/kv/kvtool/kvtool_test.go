package kvtool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

func open(t *testing.T, dir string, create bool) *Store {
	t.Helper()
	s, err := Open(dir, OpenOptions{Create: create})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func run(t *testing.T, s *Store, ns, cmd, data string) Result {
	t.Helper()
	res, err := s.Command(context.Background(), ns, []byte(cmd), []byte(data))
	if err != nil {
		t.Fatalf("Command %s: %v", cmd, err)
	}
	return res
}

func TestDumpLoadDumpIsIdentical(t *testing.T) {
	ctx := context.Background()
	now := func() time.Time { return time.UnixMilli(1_700_000_000_000) }
	dir := filepath.Join(t.TempDir(), "src")
	s := open(t, dir, true)
	for _, ns := range []string{"game", "bans", "z"} {
		for _, c := range []struct{ cmd, data string }{
			{`{"put":"alpha"}`, `{"n":1,"list":[true,null,"é"]}`},
			{`{"put":"beta","expire_at":4000000000000}`, `"later"`},
			{`{"put":"gamma","expire_at":1600000000000}`, `"expired long ago"`},
			{`{"increment":"hits","by":3}`, ``},
		} {
			if res := run(t, s, ns, c.cmd, c.data); res.Err != nil {
				t.Fatalf("%s in %s: %s", c.cmd, ns, res.Err.Meta)
			}
		}
	}
	var first bytes.Buffer
	n, err := s.Dump(ctx, &first, now)
	if err != nil || n != 9 {
		t.Fatalf("Dump = %d, %v; want 9 records (3 live keys in 3 namespaces)", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(first.String(), `{"namespace":"bans","key":"beta","value":"later","expire_at":4000000000000}`) {
		t.Fatalf("dump lacks an expiring key:\n%s", first.String())
	}

	dst := open(t, filepath.Join(t.TempDir(), "dst"), true)
	defer dst.Close()
	if n, err := dst.Load(ctx, bytes.NewReader(first.Bytes()), LoadOptions{Group: 2}); err != nil || n != 9 {
		t.Fatalf("Load = %d, %v", n, err)
	}
	var second bytes.Buffer
	if _, err := dst.Dump(ctx, &second, now); err != nil {
		t.Fatal(err)
	}
	if second.String() != first.String() {
		t.Fatalf("dump -> load -> dump differs:\nfirst:\n%s\nsecond:\n%s", first.String(), second.String())
	}
	res := run(t, dst, "z", `{"get":"hits"}`, "")
	if len(res.Out) != 1 || string(res.Out[0].Data) != "3" {
		t.Fatalf("get after load: %+v", res)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing"), OpenOptions{}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("missing dir: %v", err)
	}
	if _, err := Open(t.TempDir(), OpenOptions{}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("empty dir: %v", err)
	}
	dir := t.TempDir()
	s := open(t, dir, true)
	defer s.Close()
	_, err := Open(dir, OpenOptions{})
	if !errors.Is(err, pebblestore.ErrLocked) || !strings.Contains(err.Error(), "stop the flow") {
		t.Fatalf("locked dir: %v", err)
	}
}

func TestCommandAndLoadErrors(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), true)
	defer s.Close()
	res := run(t, s, "n", `{"put":"k"}`, `null`)
	if res.Err == nil || !strings.Contains(string(res.Err.Meta), "null value") {
		t.Fatalf("put null: %+v", res)
	}
	res = run(t, s, "n", `{"scan":""}`, ``)
	if res.Err != nil || len(res.Out) != 0 {
		t.Fatalf("scan of empty namespace: %+v", res)
	}
	input := `{"namespace":"n","key":"a","value":1}

{"namespace":"n","key":"b","value":}
`
	// A file is checked whole first: nothing is stored.
	n, err := s.Load(ctx, strings.NewReader(input), LoadOptions{Name: "backup.jsonl"})
	if !errors.Is(err, kv.ErrInvalidRecord) || !strings.Contains(err.Error(), "backup.jsonl: line 3") || n != 0 {
		t.Fatalf("Load of a bad line: %d, %v", n, err)
	}
	res = run(t, s, "n", `{"count":""}`, ``)
	if string(res.Out[0].Data) != "0" {
		t.Fatalf("records before the bad line of a file stored: %+v", res)
	}
	// A stream is checked as it comes: the lines before are stored.
	n, err = s.Load(ctx, pipe(input), LoadOptions{Name: "backup.jsonl"})
	if !errors.Is(err, kv.ErrInvalidRecord) || !strings.Contains(err.Error(), "backup.jsonl: line 3") || n != 1 {
		t.Fatalf("Load of a bad line: %d, %v", n, err)
	}
	res = run(t, s, "n", `{"count":""}`, ``)
	if string(res.Out[0].Data) != "1" {
		t.Fatalf("records before the bad line not kept: %+v", res)
	}
}

// pipe returns a reader of s that cannot seek, as standard input from a
// pipe.
func pipe(s string) io.Reader { return io.MultiReader(strings.NewReader(s)) }
