// Package kvtool works on a kv store directory that no flow holds open: it
// runs single commands through a kv.Connector exactly as a flow would,
// dumps every live record of every namespace as JSON lines and loads such a
// dump back. The flowrun kv verbs are thin wrappers around it.
package kvtool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/pipeline"
)

// ErrNoStore reports a directory that does not exist or is empty, opened
// for reading: reading it would only create an empty store.
var ErrNoStore = errors.New("no store in directory")

// MaxLineBytes is the longest dump line Load accepts: a value of the
// largest size the kv connector allows, with room for its key.
const MaxLineBytes = 2*kv.DefaultMaxValueBytes + 64<<10

// Store is an offline store directory opened by Open.
type Store struct {
	b kv.Backend
}

// Open opens the store in dir. With create false the directory must hold a
// store already (ErrNoStore otherwise). A directory in use by a running
// flow is refused with an error wrapping pebblestore.ErrLocked.
func Open(dir string, create bool) (*Store, error) {
	if !create {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) || (err == nil && len(entries) == 0) {
			return nil, fmt.Errorf("%w %q", ErrNoStore, dir)
		}
		if err != nil {
			return nil, fmt.Errorf("open store %q: %w", dir, err)
		}
	}
	b, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		if errors.Is(err, pebblestore.ErrLocked) {
			return nil, fmt.Errorf("%w (stop the flow using it first)", err)
		}
		return nil, err
	}
	return &Store{b: b}, nil
}

// Close flushes and closes the store.
func (s *Store) Close() error { return s.b.Close() }

// The budgets of Command: a count of a billion keys takes minutes but
// needs no memory; a result is held whole before it is printed, so it is
// bounded to what a terminal or a pipe can sensibly take.
const (
	CommandMaxKeysVisited = 1 << 30
	CommandMaxResultBytes = 1 << 30
)

// shared lets short-lived connectors use the store without closing it.
type shared struct{ kv.Backend }

func (shared) Close() error { return nil }

// Result is what one command emitted.
type Result struct {
	// Out holds the events emitted on "out" (several for scan).
	Out []pipeline.Event
	// Err holds the event emitted on "err", if the command failed; its
	// meta.error says why.
	Err *pipeline.Event
}

// recorder collects a connector's output.
type recorder struct{ res *Result }

func (r recorder) Emit(port string, ev pipeline.Event) {
	if port == pipeline.PortErr {
		r.res.Err = &ev
		return
	}
	r.res.Out = append(r.res.Out, ev)
}

// Command runs one kv command, given as the JSON of meta.kv (for example
// {"get":"k"}), with data as the event's payload, in namespace, through a
// kv.Connector with default limits except the budgets: the store is this
// process's alone, so a long read stalls no one (CommandMaxKeysVisited),
// and the result is printed, not held per event of a flow
// (CommandMaxResultBytes). A failed command is reported in Result.Err, not
// as an error; the error is for a store that cannot be used.
func (s *Store) Command(ctx context.Context, namespace string, command, data []byte) (Result, error) {
	c, err := kv.New(shared{s.b}, kv.Options{
		Namespace:       namespace,
		ReclaimInterval: -1,
		MaxKeysVisited:  CommandMaxKeysVisited,
		MaxResultBytes:  CommandMaxResultBytes,
	})
	if err != nil {
		return Result{}, err
	}
	defer c.Close(ctx)
	meta := append([]byte(`{"kv":`), command...)
	meta = append(meta, '}')
	var res Result
	if err := c.Process(ctx, []pipeline.Event{{Data: data, Meta: meta}}, recorder{&res}); err != nil {
		return Result{}, err
	}
	return res, nil
}

// Dump writes every live record of every namespace to w, one JSON line
// each (kv.Record.AppendJSON), and returns how many it wrote. Identical
// stores give identical dumps.
func (s *Store) Dump(ctx context.Context, w io.Writer, now func() time.Time) (int, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var line []byte
	n := 0
	err := kv.Dump(ctx, s.b, kv.DumpOptions{Now: now}, func(r kv.Record) error {
		line = append(r.AppendJSON(line[:0]), '\n')
		n++
		_, err := bw.Write(line)
		return err
	})
	if err != nil {
		return n, err
	}
	return n, bw.Flush()
}

// LoadOptions configure Load.
type LoadOptions struct {
	// Batch is the number of records committed together. Default 1000.
	Batch int
	// Name names the input in errors. Default "input".
	Name string
}

// Load reads JSON lines written by Dump from r and stores every record,
// overwriting existing keys, and returns how many it stored. Blank lines
// are skipped. A line that does not parse stops the load with an error
// naming it (kv.ErrInvalidRecord); the lines before it are stored.
func (s *Store) Load(ctx context.Context, r io.Reader, opts LoadOptions) (int, error) {
	if opts.Name == "" {
		opts.Name = "input"
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
	lineNo := 0
	next := func() (kv.Record, error) {
		for sc.Scan() {
			lineNo++
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			rec, err := kv.ParseRecord(line)
			if err != nil {
				return rec, fmt.Errorf("%s: line %d: %w", opts.Name, lineNo, err)
			}
			return rec, nil
		}
		if err := sc.Err(); err != nil {
			return kv.Record{}, fmt.Errorf("%s: after line %d: %w", opts.Name, lineNo, err)
		}
		return kv.Record{}, io.EOF
	}
	return kv.Load(ctx, s.b, kv.LoadOptions{Batch: opts.Batch}, next)
}
