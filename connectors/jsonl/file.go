package jsonl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/flowrun/flowrun/pipeline"
)

// Mode says how the file connector opens its file.
type Mode string

// File modes. ModeRead makes the file a source; the others make it a sink.
const (
	// ModeRead reads events from an existing file.
	ModeRead Mode = "read"
	// ModeWrite creates the file or truncates an existing one (the same as
	// ModeTruncate).
	ModeWrite Mode = "write"
	// ModeAppend creates the file or appends to an existing one.
	ModeAppend Mode = "append"
	// ModeTruncate creates the file or truncates an existing one.
	ModeTruncate Mode = "truncate"
)

// Modes lists every valid Mode.
func Modes() []Mode { return []Mode{ModeRead, ModeWrite, ModeAppend, ModeTruncate} }

// ErrUnknownMode reports a file mode that is not one of Modes.
var ErrUnknownMode = errors.New("unknown file mode")

// ErrSymlink reports a file sink path that is a symbolic link while
// WriterOptions.FollowSymlinks is off.
var ErrSymlink = errors.New("path is a symbolic link")

// IsSink reports whether a file opened in mode m is written to.
func (m Mode) IsSink() bool { return m == ModeWrite || m == ModeAppend || m == ModeTruncate }

// fileSource is a Reader over a file it owns.
type fileSource struct {
	*Reader
	f *os.File
}

// OpenFileSource opens path for reading and returns a source emitting its
// JSON lines (see NewReader). The file is opened now, so a missing or
// unreadable file is reported before the flow starts; it is closed when the
// graph closes the source.
func OpenFileSource(path string, opts ReaderOptions) (pipeline.Source, error) {
	if opts.Name == "" {
		opts.Name = path
	}
	f, err := os.Open(path)
	if err != nil {
		// The *PathError says "open PATH: ..."; whoever built the source
		// names it.
		return nil, err
	}
	opts.EnsureDefaults()
	return &fileSource{Reader: &Reader{r: f, opts: opts}, f: f}, nil
}

// Close implements pipeline.Closer by closing the file.
func (s *fileSource) Close(context.Context) error {
	if err := s.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("%s: close: %w", s.opts.Name, err)
	}
	return nil
}

// OpenFileSink opens (creating it and its parent directories when missing)
// path for writing in the given mode and returns a Writer that owns the
// file: its Close flushes, syncs and closes the file.
//
// A path whose last element is a symbolic link is refused with ErrSymlink
// unless opts.FollowSymlinks is set: a link planted where a flow writes
// would otherwise make it write, or truncate, another file. The check is
// made by the open itself (O_NOFOLLOW), so it has no race.
func OpenFileSink(path string, mode Mode, opts WriterOptions) (pipeline.Processor, error) {
	if opts.Name == "" {
		opts.Name = path
	}
	flags := os.O_WRONLY | os.O_CREATE
	switch mode {
	case ModeWrite, ModeTruncate:
		flags |= os.O_TRUNC
	case ModeAppend:
		flags |= os.O_APPEND
	default:
		return nil, fmt.Errorf("%s: %w %q (a sink needs %q, %q or %q)", opts.Name, ErrUnknownMode, mode, ModeWrite, ModeAppend, ModeTruncate)
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("%s: create directory: %w", opts.Name, err)
		}
	}
	if !opts.FollowSymlinks {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		if !opts.FollowSymlinks && errors.Is(err, syscall.ELOOP) {
			if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
				return nil, fmt.Errorf("%s: %w: %s (set follow_symlinks: true to write to the file it points to)", opts.Name, ErrSymlink, path)
			}
		}
		return nil, err // "open PATH: ...", as for OpenFileSource
	}
	return newWriter(f, f, opts), nil
}
