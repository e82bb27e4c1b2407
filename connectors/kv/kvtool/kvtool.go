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
	"log/slog"
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

// OpenOptions configure Open.
type OpenOptions struct {
	// Create creates the store when dir holds none. Default false: a
	// missing or empty directory is refused with ErrNoStore.
	Create bool
	// AcceptWALLoss opens a store whose write-ahead log is damaged,
	// dropping the records after the damage (pebblestore.Options.
	// AcceptWALLoss). Default false: such a store is refused with an
	// error wrapping pebblestore.ErrWALCorrupt.
	AcceptWALLoss bool
	// Logger receives the store's log lines. Default slog.Default().
	Logger *slog.Logger
}

// Open opens the store in dir. A directory in use by a running flow is
// refused with an error wrapping pebblestore.ErrLocked.
func Open(dir string, opts OpenOptions) (*Store, error) {
	if !opts.Create {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) || (err == nil && len(entries) == 0) {
			return nil, fmt.Errorf("%w %q", ErrNoStore, dir)
		}
		if err != nil {
			return nil, fmt.Errorf("open store %q: %w", dir, err)
		}
	}
	b, err := pebblestore.Open(dir, pebblestore.Options{AcceptWALLoss: opts.AcceptWALLoss, Logger: opts.Logger})
	if err != nil {
		if errors.Is(err, pebblestore.ErrLocked) {
			return nil, fmt.Errorf("%w (stop the flow using it first)", err)
		}
		return nil, err
	}
	return &Store{b: b}, nil
}

// PartialLoads returns the loads into the store that did not complete
// (kv.PartialLoads).
func (s *Store) PartialLoads(ctx context.Context) ([]kv.PartialLoad, error) {
	return kv.PartialLoads(ctx, s.b)
}

// ForgetPartialLoads clears the store's partial load markers, and returns
// the loads they named.
func (s *Store) ForgetPartialLoads(ctx context.Context) ([]kv.PartialLoad, error) {
	loads, err := kv.PartialLoads(ctx, s.b)
	if err != nil {
		return nil, err
	}
	return loads, kv.ForgetPartialLoads(ctx, s.b, loads)
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
	// Partial loads are reported by the caller (PartialLoads), not by
	// every short-lived connector.
	c, err := kv.New(shared{s.b}, kv.Options{
		Namespace:       namespace,
		ReclaimInterval: -1,
		MaxKeysVisited:  CommandMaxKeysVisited,
		MaxResultBytes:  CommandMaxResultBytes,
		Logger:          slog.New(slog.DiscardHandler),
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
// stores give identical dumps. When reading the store fails part way
// (a damaged sstable), the lines already written are followed by the line
// kv.IncompleteDumpLine gives, which Load refuses, and the error is
// returned.
func (s *Store) Dump(ctx context.Context, w io.Writer, now func() time.Time) (int, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	var line []byte
	n := 0
	var writeErr error
	err := kv.Dump(ctx, s.b, kv.DumpOptions{Now: now}, func(r kv.Record) error {
		line = append(r.AppendJSON(line[:0]), '\n')
		n++
		_, writeErr = bw.Write(line)
		return writeErr
	})
	if err != nil {
		if writeErr == nil {
			err = fmt.Errorf("dump stopped after %d keys: %w", n, err)
			_, _ = bw.Write(kv.IncompleteDumpLine(err))
			_ = bw.Flush()
		}
		return n, err
	}
	return n, bw.Flush()
}

// LoadOptions configure Load.
type LoadOptions struct {
	// Group is the number of records committed together (one commit
	// group). Default 1000.
	Group int
	// Name names the input in errors and in the store's partial load
	// marker. Default "input".
	Name string
	// MaxKeyLength and MaxValueBytes are the limits every record must
	// meet: those of the kv connector's options of the same names.
	// Defaults kv.DefaultMaxKeyLength and kv.DefaultMaxValueBytes.
	MaxKeyLength, MaxValueBytes int
}

// Load reads JSON lines written by Dump from r and stores every record,
// overwriting existing keys, and returns how many it stored. Blank lines
// are skipped. A line that does not parse (kv.ErrInvalidRecord, or
// kv.ErrIncompleteDump for the end of a dump cut short) or that a put
// would refuse under the limits (kv.ErrKeyTooLong, kv.ErrValueTooLarge)
// stops the load with an error naming it.
//
// When r can seek (an io.ReadSeeker whose Seek works: a file), every line is checked before anything is
// written, so a bad line leaves the store unchanged. Otherwise (a pipe)
// lines are checked as they come: the lines before a bad one are stored,
// and the store keeps a partial load marker (kv.PartialLoads) until a load
// of the same input completes.
func (s *Store) Load(ctx context.Context, r io.Reader, opts LoadOptions) (int, error) {
	if opts.Name == "" {
		opts.Name = "input"
	}
	kopts := kv.LoadOptions{Group: opts.Group, Source: opts.Name, MaxKeyLength: opts.MaxKeyLength, MaxValueBytes: opts.MaxValueBytes}
	kopts.EnsureDefaults()
	if rs, ok := r.(io.ReadSeeker); ok {
		// A pipe or terminal cannot seek: its lines are checked as they come.
		if start, err := rs.Seek(0, io.SeekCurrent); err == nil {
			next := recordReader(rs, opts.Name, &kopts)
			for {
				_, err := next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return 0, fmt.Errorf("%w (nothing was stored)", err)
				}
			}
			if _, err := rs.Seek(start, io.SeekStart); err != nil {
				return 0, fmt.Errorf("%s: %w", opts.Name, err)
			}
		}
	}
	return kv.Load(ctx, s.b, kopts, recordReader(r, opts.Name, &kopts))
}

// recordReader returns a function reading the next record of r, named
// name in errors, checked against the limits of opts (kv.CheckRecord),
// and io.EOF at its end.
func recordReader(r io.Reader, name string, opts *kv.LoadOptions) func() (kv.Record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), max(MaxLineBytes, 2*opts.MaxValueBytes+64<<10))
	lineNo := 0
	return func() (kv.Record, error) {
		for sc.Scan() {
			lineNo++
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			rec, err := kv.ParseRecord(line)
			if err == nil {
				err = kv.CheckRecord(rec, opts)
			}
			if err != nil {
				return rec, fmt.Errorf("%s: line %d: %w", name, lineNo, err)
			}
			return rec, nil
		}
		if err := sc.Err(); err != nil {
			return kv.Record{}, fmt.Errorf("%s: after line %d: %w", name, lineNo, err)
		}
		return kv.Record{}, io.EOF
	}
}
