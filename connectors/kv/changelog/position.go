package changelog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"

	"github.com/flowrun/flowrun/connectors/kv"
)

// ErrDiverged reports a store whose position (Position) the changelog
// does not continue: the stream does not hold, at the position's
// sequence, the record the store applied last (another writer's fence or
// record took that sequence: the store holds a group whose append was
// refused or lost), or ends before it, or holds it only behind a newer
// writer's fence (a stale append, which a restore skips). The store is
// ahead of the changelog: wipe it and restore from the start.
var ErrDiverged = errors.New("the store is ahead of the changelog")

// Position is where a store stands in a partition's changelog: Seq is
// the stream sequence of the last message of the last record it holds,
// Sum the checksum (XXH64) of that record's encoding, which tells this
// record from any other stored at Seq, and Epoch the highest fence epoch
// of the records up to Seq, with which a restore continuing after Seq
// tells stale records apart (see Restore). A store replicated by a Writer
// records the Position of each of its groups in the same Pebble batch as
// the group (pebblestore.Replicator), and a restore the Position of the
// records it applied (pebblestore.PositionSetter), so after a crash the
// store's Position names exactly the records it holds. The zero Position
// is an empty store's.
type Position struct {
	Seq, Epoch, Sum uint64
	// Input is the highest record Input up to Seq.
	Input uint64
}

// positionVersion is the first byte of an encoded Position.
const positionVersion = 1

// Append appends p's encoding (a version byte, then Seq, Epoch, Sum and
// Input as uvarints) to dst.
func (p Position) Append(dst []byte) []byte {
	dst = append(dst, positionVersion)
	dst = binary.AppendUvarint(dst, p.Seq)
	dst = binary.AppendUvarint(dst, p.Epoch)
	dst = binary.AppendUvarint(dst, p.Sum)
	return binary.AppendUvarint(dst, p.Input)
}

// ParsePosition decodes an encoding made by Append; nil or empty is the
// zero Position (a store that never recorded one).
func ParsePosition(b []byte) (Position, error) {
	if len(b) == 0 {
		return Position{}, nil
	}
	d := decoder{b: b}
	if v := d.byte(); v != positionVersion {
		return Position{}, fmt.Errorf("%w: position version %d, this build reads version %d", ErrCorrupt, v, positionVersion)
	}
	p := Position{Seq: d.uvarint(), Epoch: d.uvarint(), Sum: d.uvarint(), Input: d.uvarint()}
	if d.err == nil && len(d.b) != 0 {
		return Position{}, fmt.Errorf("%w: %d bytes after a position", ErrCorrupt, len(d.b))
	}
	return p, d.err
}

// Fence makes the caller the partition's writer, fencing every writer
// created before it (see TakeOver), and returns a Writer whose Last is its
// last fence record. Restore the store with the Writer's CatchUp before
// appending anything else.
func (l *Log) Fence(ctx context.Context, epoch uint64) (*Writer, error) {
	var lastErr error
	for attempt := 1; attempt <= maxTakeOverAttempts; attempt++ {
		last, err := l.Last(ctx)
		if err != nil {
			return nil, err
		}
		if l.opts.afterRestore != nil {
			l.opts.afterRestore()
		}
		w := l.NewWriter(last, epoch)
		waits := make([]func() (uint64, error), MaxInFlight)
		for i := range waits {
			waits[i] = w.Submit(ctx, &Record{Fence: true})
		}
		lastErr = nil
		for _, wait := range waits {
			if _, err := wait(); err != nil && lastErr == nil {
				lastErr = err
			}
		}
		if lastErr == nil {
			return w, nil
		}
		if !errors.Is(lastErr, ErrFenced) {
			return nil, fmt.Errorf("changelog %q: take over: %w", l.opts.Stream, lastErr)
		}
	}
	return nil, fmt.Errorf("changelog %q: take over: %d attempts to fence: %w",
		l.opts.Stream, maxTakeOverAttempts, lastErr)
}

// CatchUp restores b, a store at position from (the zero Position for an
// empty store), up to w's fence, which Fence just appended: it applies only
// the records after from.Seq. It first checks that the changelog
// continues the store: that the stream still holds, at from.Seq, the
// record the store applied last, not behind a newer writer's fence.
// Otherwise it returns ErrDiverged (the store holds writes the changelog
// does not) or ErrGap (the records after from.Seq, or the one at it, were
// purged), having written nothing to b: wipe the store and call CatchUp
// again with the zero Position. Call it once w holds the fence and before
// anything else is appended through w.
func (w *Writer) CatchUp(ctx context.Context, b kv.Backend, from Position) (Restored, error) {
	l := w.log
	fence := w.Last()
	if from.Seq != 0 {
		if err := l.continues(ctx, from); err != nil {
			return Restored{Applied: from.Seq, After: from.Seq, Position: from},
				fmt.Errorf("changelog %q: resume from sequence %d: %w", l.opts.Stream, from.Seq, err)
		}
	}
	res, err := l.restore(ctx, b, from)
	if err != nil {
		return res, fmt.Errorf("changelog %q: take over: %w", l.opts.Stream, err)
	}
	if res.Applied != fence || res.Last != fence {
		// Only a newer owner can append after the fence.
		return res, fmt.Errorf("changelog %q: take over: %w: the stream ends at %d, after the fence at %d",
			l.opts.Stream, ErrFenced, res.Last, fence)
	}
	w.mu.Lock()
	w.input = max(w.input, res.Input)
	w.mu.Unlock()
	return res, nil
}

// continues checks that the stream continues a store at position from: it
// reads the messages of the window before from.Seq in which a fence can
// make the record at from.Seq stale (MaxInFlight messages, see TakeOver)
// and the record's own parts. ErrGap when the window is purged, even in
// part; ErrDiverged when the record ending at from.Seq is not the store's
// (checksum), or a fence of an epoch above from.Epoch precedes it.
func (l *Log) continues(ctx context.Context, from Position) error {
	info, err := l.info(ctx)
	if err != nil {
		return fmt.Errorf("changelog: stream %q: %w", l.opts.Stream, err)
	}
	st := info.State
	if st.LastSeq < from.Seq {
		return fmt.Errorf("%w: the store holds sequence %d, the stream ends at %d", ErrDiverged, from.Seq, st.LastSeq)
	}
	start := uint64(1)
	if window := uint64(MaxInFlight + MaxParts); from.Seq > window {
		start = from.Seq - window + 1
	}
	if st.FirstSeq > start {
		return fmt.Errorf("%w: the store holds sequence %d, the stream starts at %d", ErrGap, from.Seq, st.FirstSeq)
	}
	var (
		a            assembler
		found        bool
		newerFence   uint64 // the epoch of a fence above from.Epoch, 0 if none
		newerFenceAt uint64
	)
	// Only records: a checkpoint's chunks in the window are not read.
	err = l.read(ctx, start, from.Seq, l.opts.Subject, func(seq uint64, _ string, data []byte) error {
		b, err := a.add(seq, data)
		if err != nil || b == nil {
			return err
		}
		if seq == from.Seq {
			if xxhash.Sum64(b) != from.Sum {
				return fmt.Errorf("%w: the record at sequence %d is not the one the store applied", ErrDiverged, seq)
			}
			if newerFence != 0 {
				return fmt.Errorf("%w: the record at sequence %d is behind a fence of epoch %d at sequence %d, above the store's epoch %d",
					ErrDiverged, seq, newerFence, newerFenceAt, from.Epoch)
			}
			found = true
			return nil
		}
		rec, err := DecodeRecord(b)
		if err != nil {
			return fmt.Errorf("record ending at sequence %d: %w", seq, err)
		}
		if rec.Fence && rec.Epoch > from.Epoch {
			newerFence, newerFenceAt = rec.Epoch, seq
		}
		return nil
	})
	if err != nil || found {
		return err
	}
	return fmt.Errorf("%w: no complete record ends at sequence %d", ErrDiverged, from.Seq)
}
