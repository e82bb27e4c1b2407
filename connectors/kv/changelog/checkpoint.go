package changelog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Checkpoints. A checkpoint is the state of the partition at one log
// position, written into the partition's own stream so that the log
// before it can be purged:
//
//   - chunks, on Subject+".ck": records of Set writes (the live keys, in
//     key order), each preceded by the sequence and epoch of the position
//     they are a state of, split in parts like log records;
//   - a manifest, on Subject+".ckm", written once every chunk is
//     acknowledged: the sequences of the first and last chunk, their
//     count, the number of keys, the writer's epoch and the Position the
//     checkpoint holds the state at.
//
// Every message is appended through the writer like a log record,
// expecting its predecessor's sequence: a fenced writer cannot write a
// checkpoint, and one killed midway leaves chunks without a manifest,
// which restores ignore. Restore reads the latest valid manifest's chunks,
// then the log after its position.
const (
	chunkSuffix    = ".ck"
	manifestSuffix = ".ckm"
	// manifestVersion is the first byte of a manifest and of a chunk's
	// header.
	manifestVersion = 1
	// resumeWindow is how many messages before a position a restore reads
	// to tell whether the record there is stale (behind a newer writer's
	// fence): a fenced writer has at most MaxInFlight messages in flight,
	// and a record at most MaxParts. Purging keeps this many messages
	// before a checkpoint's position, so that a store at that position
	// can still resume.
	resumeWindow = MaxInFlight + MaxParts
)

// DefaultCheckpointEvery is the default log volume between checkpoints:
// restore reads at most about this much log after the latest checkpoint,
// and the stream holds about a checkpoint plus this much.
const DefaultCheckpointEvery = 64 << 20

// Snapshot is what Checkpoint reads: a consistent view of a store,
// holding whole commit groups and the Position recorded with the last of
// them (a pebblestore.Snapshot).
type Snapshot interface {
	// Position returns the encoded Position of the view.
	Position() ([]byte, error)
	// Scan calls fn for each record with start <= key < end (nil end: no
	// bound), in key order.
	Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error
}

// Checkpointed reports a checkpoint written by Checkpoint.
type Checkpointed struct {
	// Seq is the sequence of the checkpoint's manifest.
	Seq uint64
	// Covers is the position the checkpoint holds the state at.
	Covers Position
	// Chunks counts its chunk records, Keys the keys it holds, Bytes the
	// bytes of its chunk records.
	Chunks, Keys int
	Bytes        int64
	// PurgedBelow is the sequence the stream was purged up to (not
	// included); 0 when nothing was purged.
	PurgedBelow uint64
}

// manifest is a checkpoint's manifest as read back.
type manifest struct {
	seq          uint64 // the manifest's own sequence
	first, last  uint64 // its first and last chunk messages
	chunks, keys uint64
	epoch        uint64 // the writer's
	pos          Position
}

func appendManifest(dst []byte, m *manifest) []byte {
	dst = append(dst, manifestVersion)
	for _, v := range []uint64{m.first, m.last, m.chunks, m.keys, m.epoch} {
		dst = binary.AppendUvarint(dst, v)
	}
	return m.pos.Append(dst)
}

func parseManifest(b []byte) (manifest, error) {
	d := decoder{b: b}
	if v := d.byte(); v != manifestVersion {
		return manifest{}, fmt.Errorf("%w: manifest version %d, this build reads version %d", ErrCorrupt, v, manifestVersion)
	}
	m := manifest{first: d.uvarint(), last: d.uvarint(), chunks: d.uvarint(), keys: d.uvarint(), epoch: d.uvarint()}
	if d.err != nil {
		return manifest{}, d.err
	}
	pos, err := ParsePosition(d.b)
	if err != nil {
		return manifest{}, err
	}
	m.pos = pos
	return m, nil
}

// LogBytes returns the bytes of records the writer has appended since its
// last checkpoint (or since it was made): a partition's owner writes a
// checkpoint once this passes its checkpoint interval.
func (w *Writer) LogBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logBytes
}

// Checkpoint writes snap, a view of the store this writer replicates,
// as a checkpoint: its live keys (records whose expiry is at or before
// now left out) as chunks, then a manifest naming the position snap holds
// the state at, all appended like records (fenced: a writer fenced
// before or during it fails with ErrFenced, ErrWriterFailed, and its
// checkpoint is never used). Once the manifest and every message before
// it are acknowledged, it purges the stream below the position minus the
// messages a restore needs to resume a store at that position. The
// store's commit groups go on being appended meanwhile.
func (w *Writer) Checkpoint(ctx context.Context, snap Snapshot, now time.Time) (Checkpointed, error) {
	l := w.log
	raw, err := snap.Position()
	if err != nil {
		return Checkpointed{}, fmt.Errorf("changelog %q: checkpoint: %w", l.opts.Stream, err)
	}
	pos, err := ParsePosition(raw)
	if err != nil {
		return Checkpointed{}, fmt.Errorf("changelog %q: checkpoint: %w", l.opts.Stream, err)
	}
	if pos.Seq == 0 || pos.Seq > w.Last() {
		return Checkpointed{}, fmt.Errorf("changelog %q: checkpoint of a store at position %d, the writer is at %d: not a store this writer replicates",
			l.opts.Stream, pos.Seq, w.Last())
	}
	logBytes := w.LogBytes()
	nowMs := now.UnixMilli()
	res := Checkpointed{Covers: pos}
	m := manifest{epoch: w.epoch, pos: pos}

	// The chunks' waits are called in order by a goroutine of their own
	// while the next chunks are published: the writer's slots are given
	// back in submission order, so a publish blocked on them waits for
	// earlier chunks to be settled.
	waits := make(chan func() (uint64, error), MaxInFlight)
	waited := make(chan error, 1)
	go func() {
		var first error
		for wait := range waits {
			if _, err := wait(); err != nil && first == nil {
				first = err
			}
		}
		waited <- first
	}()
	var rec Record
	size := 0
	header := binary.AppendUvarint(binary.AppendUvarint(nil, pos.Seq), w.epoch)
	flush := func() error {
		if len(rec.Writes) == 0 {
			return nil
		}
		rec.Epoch = w.epoch
		data := AppendRecord(append([]byte(nil), header...), &rec)
		parts := (len(data) + l.opts.ChunkBytes - 1) / l.opts.ChunkBytes
		if parts > MaxParts {
			return fmt.Errorf("%w: a checkpoint chunk of %d bytes needs %d messages, limit %d", ErrRecordTooLarge, len(data), parts, MaxParts)
		}
		payloads := make([][]byte, parts)
		for i := range payloads {
			chunk := data[i*l.opts.ChunkBytes : min((i+1)*l.opts.ChunkBytes, len(data))]
			payloads[i] = appendPart(make([]byte, 0, len(chunk)+8), i, parts, chunk)
		}
		p, _, wait, err := w.publish(ctx, l.opts.Subject+chunkSuffix, payloads, 0, 0)
		if err != nil {
			return err
		}
		if m.first == 0 {
			m.first = p.Seq - uint64(parts) + 1
		}
		m.last = p.Seq
		m.chunks++
		res.Bytes += int64(len(data))
		waits <- wait
		rec.Writes, size = rec.Writes[:0], 0
		return nil
	}
	err = snap.Scan(nil, nil, func(key, value []byte, expireAt int64) (bool, error) {
		if expireAt != 0 && expireAt <= nowMs {
			return true, nil
		}
		rec.Writes = append(rec.Writes, Write{Op: OpSet, Key: append([]byte(nil), key...), Value: append([]byte(nil), value...), ExpireAt: expireAt})
		m.keys++
		size += len(key) + len(value) + 16
		if size >= l.opts.ChunkBytes-l.opts.ChunkBytes/8 { // one message, mostly
			return true, flush()
		}
		return true, nil
	})
	if err == nil {
		err = flush()
	}
	close(waits)
	if werr := <-waited; err == nil {
		err = werr
	}
	if err != nil {
		return res, fmt.Errorf("changelog %q: checkpoint at sequence %d: %w", l.opts.Stream, pos.Seq, err)
	}
	res.Chunks, res.Keys = int(m.chunks), int(m.keys)
	if l.opts.beforeManifest != nil {
		if err := l.opts.beforeManifest(); err != nil {
			return res, err
		}
	}
	mpos, id, wait, err := w.publish(ctx, l.opts.Subject+manifestSuffix, [][]byte{appendManifest(nil, &m)}, 0, 0)
	if err == nil {
		_, err = wait()
	}
	if err == nil {
		// The manifest is stored; it is valid only if nothing before it
		// was refused (the store's groups are waited for elsewhere).
		err = w.settle(ctx, id)
	}
	if err != nil {
		return res, fmt.Errorf("changelog %q: checkpoint at sequence %d: manifest: %w", l.opts.Stream, pos.Seq, err)
	}
	res.Seq = mpos.Seq
	w.mu.Lock()
	w.logBytes = max(0, w.logBytes-logBytes)
	w.mu.Unlock()

	if pos.Seq > resumeWindow {
		below := pos.Seq - resumeWindow + 1
		pctx, cancel := context.WithTimeout(ctx, l.opts.AckTimeout)
		defer cancel()
		if err := l.stream.Purge(pctx, jetstream.WithPurgeSequence(below)); err != nil {
			// The checkpoint is written; the next one purges.
			return res, fmt.Errorf("changelog %q: purge below sequence %d after the checkpoint: %w", l.opts.Stream, below, err)
		}
		res.PurgedBelow = below
	}
	return res, nil
}

// read calls fn with each message of the stream in [start, end], in order;
// only with those on subject when it is not empty.
func (l *Log) read(ctx context.Context, start, end uint64, subject string, fn func(seq uint64, subject string, data []byte) error) error {
	if start > end {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, l.opts.AckTimeout)
	defer cancel()
	if subject != "" {
		// A filtered consumer would wait for a message that never
		// comes: start at the first one, stop after the last one.
		first, err := l.stream.GetMsg(cctx, start, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read from sequence %d: %w", start, err)
		}
		if first.Sequence > end {
			return nil
		}
		start = first.Sequence
	}
	cfg := jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   start,
	}
	if subject != "" {
		cfg.FilterSubjects = []string{subject}
	}
	cons, err := l.stream.OrderedConsumer(cctx, cfg)
	if err != nil {
		return fmt.Errorf("read from sequence %d: %w", start, err)
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(readHeartbeat))
	if err != nil {
		return fmt.Errorf("read from sequence %d: %w", start, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for prev := start - 1; prev < end; {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return fmt.Errorf("read after sequence %d: %w", prev, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read after sequence %d: %w", prev, err)
		}
		prev = meta.Sequence.Stream
		if prev > end {
			break
		}
		if err := fn(prev, msg.Subject(), msg.Data()); err != nil {
			return err
		}
		if subject != "" && meta.NumPending == 0 {
			break // the last message on subject
		}
	}
	return nil
}

// assembler puts records back together from their parts.
type assembler struct {
	pending     []byte
	next, count uint64
	prev        uint64
}

// add takes the part in data at seq and returns the record's bytes when
// it completes one (valid until the next call).
func (a *assembler) add(seq uint64, data []byte) ([]byte, error) {
	index, n, chunk, err := parsePart(data)
	if err != nil {
		return nil, fmt.Errorf("sequence %d: %w", seq, err)
	}
	switch {
	case index == 0:
		a.pending, a.next, a.count = append(a.pending[:0], chunk...), 1, n
	case a.next != 0 && index == a.next && n == a.count && seq == a.prev+1:
		a.pending = append(a.pending, chunk...)
		a.next++
	default:
		a.pending, a.next, a.count = a.pending[:0], 0, 0
	}
	a.prev = seq
	if a.next == 0 || a.next < a.count {
		return nil, nil
	}
	a.next, a.count = 0, 0
	return a.pending, nil
}

// newerFence reports whether a fence of an epoch above epoch lies in the
// resumeWindow messages before seq: a message at seq of a writer of that
// epoch was stored behind it (stale). ErrGap when that window is purged.
func (l *Log) newerFence(ctx context.Context, seq, epoch, first uint64) (bool, error) {
	start := uint64(1)
	if seq > resumeWindow {
		start = seq - resumeWindow
	}
	if first > start {
		return false, fmt.Errorf("%w: the messages before sequence %d are purged (the stream starts at %d)", ErrGap, seq, first)
	}
	var a assembler
	found := false
	// Fences are records: chunk messages are not read.
	err := l.read(ctx, start, seq-1, l.opts.Subject, func(s uint64, subject string, data []byte) error {
		if subject != l.opts.Subject {
			a = assembler{pending: a.pending[:0], prev: s}
			return nil
		}
		b, err := a.add(s, data)
		if err != nil || b == nil {
			return err
		}
		rec, err := DecodeRecord(b)
		if err != nil {
			return fmt.Errorf("record ending at sequence %d: %w", s, err)
		}
		if rec.Fence && rec.Epoch > epoch {
			found = true
		}
		return nil
	})
	return found, err
}

// latestCheckpoint returns the manifest of the latest checkpoint a
// restore from the start can use, nil when there is none: complete (a
// manifest is written only after its chunks), not stale (no newer
// writer's fence shortly before it), its chunks and the log after its
// position not purged.
func (l *Log) latestCheckpoint(ctx context.Context, first uint64) (*manifest, error) {
	subject := l.opts.Subject + manifestSuffix
	gctx, cancel := context.WithTimeout(ctx, l.opts.AckTimeout)
	last, err := l.stream.GetLastMsgForSubject(gctx, subject)
	cancel()
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the latest checkpoint manifest: %w", err)
	}
	// Purging keeps few manifests: read them all, to fall back on an
	// earlier one when the latest is stale.
	var ms []manifest
	err = l.read(ctx, max(first, 1), last.Sequence, subject, func(seq uint64, subj string, data []byte) error {
		if subj != subject {
			return nil
		}
		m, err := parseManifest(data)
		if err != nil {
			return fmt.Errorf("checkpoint manifest at sequence %d: %w", seq, err)
		}
		m.seq = seq
		ms = append(ms, m)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := len(ms) - 1; i >= 0; i-- {
		m := &ms[i]
		if m.first < first || m.pos.Seq+1 < first {
			continue
		}
		stale, err := l.newerFence(ctx, m.seq, m.epoch, first)
		if errors.Is(err, ErrGap) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !stale {
			return m, nil
		}
	}
	return nil, nil
}

// applyCheckpoint writes m's chunks into b, recording m's position with
// the last of them.
func (l *Log) applyCheckpoint(ctx context.Context, b kv.Backend, m *manifest) error {
	subject := l.opts.Subject + chunkSuffix
	var (
		a      assembler
		chunks []Record
		n      uint64
	)
	apply := func(last bool) error {
		if len(chunks) == 0 && !last {
			return nil
		}
		fns := make([]kv.TxnFunc, 0, len(chunks)+1)
		for i := range chunks {
			r := &chunks[i]
			fns = append(fns, func(tx kv.Txn) error { return apply(tx, r) })
		}
		if last {
			fns = append(fns, func(tx kv.Txn) error {
				if ps, ok := tx.(positionSetter); ok {
					return ps.SetPosition(m.pos.Append(nil))
				}
				return nil
			})
		}
		errs := make([]error, len(fns))
		if err := b.Update(ctx, fns, errs); err != nil {
			return err
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		chunks = chunks[:0]
		return nil
	}
	err := l.read(ctx, m.first, m.last, subject, func(seq uint64, subj string, data []byte) error {
		if subj != subject {
			return nil
		}
		raw, err := a.add(seq, data)
		if err != nil || raw == nil {
			return err
		}
		d := decoder{b: raw}
		at, epoch := d.uvarint(), d.uvarint()
		if d.err != nil {
			return fmt.Errorf("checkpoint chunk ending at sequence %d: %w", seq, d.err)
		}
		if at != m.pos.Seq || epoch != m.epoch {
			return nil // another checkpoint's (a torn one)
		}
		rec, err := DecodeRecord(d.b)
		if err != nil {
			return fmt.Errorf("checkpoint chunk ending at sequence %d: %w", seq, err)
		}
		rec.Writes = cloneWrites(rec.Writes)
		chunks = append(chunks, rec)
		n++
		if len(chunks) >= l.opts.RestoreBatch/16+1 {
			return apply(false)
		}
		return nil
	})
	if err == nil && n != m.chunks {
		err = fmt.Errorf("%w: the checkpoint at sequence %d has %d chunks, its manifest says %d", ErrCorrupt, m.seq, n, m.chunks)
	}
	if err == nil {
		err = apply(true)
	}
	if err != nil {
		return fmt.Errorf("changelog %q: restore the checkpoint at sequence %d: %w", l.opts.Stream, m.seq, err)
	}
	return nil
}
