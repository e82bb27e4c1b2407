package changelog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Errors of the changelog.
var (
	// ErrFenced reports an append refused because the stream's last
	// sequence is not the one the writer expected: another writer (a new
	// owner of the partition) has appended since. Nothing of the refused
	// record was stored by this publish; the writer must stop using the
	// partition and take it over again (TakeOver) to continue.
	ErrFenced = errors.New("changelog append fenced: another writer has appended to the partition's stream")
	// ErrWriterFailed reports an append on a Writer whose earlier append
	// failed: its outcome may be unknown (a timeout), so the writer no
	// longer knows the stream's last sequence. The error also wraps the
	// first failure (errors.Is(err, ErrFenced) holds after a fence).
	ErrWriterFailed = errors.New("changelog writer failed an earlier append")
	// ErrGap reports a restore that cannot continue from the requested
	// sequence because the stream no longer holds the messages after it
	// (purged), or that was asked to continue from beyond the stream's end.
	ErrGap = errors.New("changelog does not continue from the store's position")
	// ErrRecordTooLarge reports a record that needs more than MaxParts
	// messages.
	ErrRecordTooLarge = errors.New("changelog record too large")
)

// readHeartbeat is the idle heartbeat a read of the log (a restore, a
// catch-up, a checkpoint's chunks) asks the server for. A pull request
// the server never answers, with no error and no heartbeat (nats-server
// 2.11 and later do so now and then; seen with 2.15.3), leaves the read
// waiting until the ordered consumer has missed two heartbeats and starts
// over from the last message it got: 10 s with the client's default of
// 5 s, which outlasted the lease of the owner taking a partition over.
const readHeartbeat = 500 * time.Millisecond

// Defaults for Options.
const (
	// DefaultReplicas keeps a stream available with one server down: an
	// append is acknowledged once two of three replicas stored it.
	DefaultReplicas = 3
	// DefaultChunkBytes is the largest payload of one message: half the
	// NATS server's default max_payload (1 MiB), leaving room for headers.
	DefaultChunkBytes = 512 << 10
	// DefaultAckTimeout bounds the wait for an append's acknowledgement:
	// longer than a stream leader election (a few seconds). It is not
	// shorter than a partition's lease (lease.DefaultTTL, 5 s): an owner
	// whose appends wait that long has usually lost its lease too, and the
	// append then fails on the fence.
	DefaultAckTimeout = 10 * time.Second
	// DefaultRestoreBatch is the number of records Restore applies per
	// kv.Backend Update call.
	DefaultRestoreBatch = 256
	// MaxInFlight bounds the messages a Writer has published and whose
	// wait has not yet been called: Submit blocks beyond it. It is part
	// of the fencing protocol: a fenced writer can have at most this many
	// messages line up behind a fence before it notices, so TakeOver
	// appends this many fence messages in a row, after which no message
	// of an older writer can be stored (see TakeOver).
	MaxInFlight = 256
	// MaxParts bounds the messages of one record: with the default
	// ChunkBytes, a commit group's record is at most 128 MiB.
	MaxParts = MaxInFlight
	// maxTakeOverAttempts bounds TakeOver's rounds of reading the last
	// sequence and fencing, against a writer that keeps appending.
	maxTakeOverAttempts = 100
)

// Options configure a Log. Stream and Subject are required; the rest have
// defaults filled in by EnsureDefaults and are checked by Validate.
type Options struct {
	// Stream is the JetStream stream holding the partition's changelog;
	// Open creates it when missing. One stream per partition: fencing
	// uses the stream's last sequence.
	Stream string
	// Subject is the subject the records are published on, captured by
	// Stream; checkpoints are published on Subject+".ck" (their chunks)
	// and Subject+".ckm" (their manifests), captured too.
	Subject string
	// Replicas is the stream's replica count when Open creates it.
	// Default DefaultReplicas; must be 1, 3 or 5 (1 only for tests).
	Replicas int
	// ChunkBytes is the largest message payload: a larger record is
	// split into consecutive messages. Default DefaultChunkBytes; must
	// be at least 64 and below the server's max_payload.
	ChunkBytes int
	// AckTimeout bounds the wait for each append's acknowledgement,
	// counted from its publish, and for each request about the stream
	// (its state, a reader). Default DefaultAckTimeout.
	AckTimeout time.Duration
	// RestoreBatch is how many records Restore applies per Update.
	// Default DefaultRestoreBatch.
	RestoreBatch int

	// afterRestore, when set, is called by TakeOver between reading the
	// stream's last sequence and appending its fence: tests append from
	// another writer there.
	afterRestore func()
	// beforeManifest, when set, is called by Checkpoint once the chunks
	// are acknowledged; an error stops it there, as if its writer had
	// been killed (tests of torn checkpoints).
	beforeManifest func() error
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.ChunkBytes == 0 {
		o.ChunkBytes = DefaultChunkBytes
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.RestoreBatch == 0 {
		o.RestoreBatch = DefaultRestoreBatch
	}
}

// Validate reports the first invalid field, by name.
func (o *Options) Validate() error {
	switch {
	case o.Stream == "":
		return errors.New("changelog: Options.Stream is required")
	case o.Subject == "":
		return errors.New("changelog: Options.Subject is required")
	case o.Replicas != 1 && o.Replicas != 3 && o.Replicas != 5:
		return fmt.Errorf("changelog: Options.Replicas is %d, must be 1, 3 or 5", o.Replicas)
	case o.ChunkBytes < 64:
		return fmt.Errorf("changelog: Options.ChunkBytes is %d, must be at least 64", o.ChunkBytes)
	case o.AckTimeout <= 0:
		return fmt.Errorf("changelog: Options.AckTimeout is %v, must be positive", o.AckTimeout)
	case o.RestoreBatch <= 0:
		return fmt.Errorf("changelog: Options.RestoreBatch is %d, must be positive", o.RestoreBatch)
	}
	return nil
}

// Log is one partition's changelog stream. It is safe for concurrent use;
// appends go through a Writer.
type Log struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	opts   Options
}

// Open returns the changelog of opts.Stream, creating the stream (file
// storage, opts.Replicas replicas, capturing opts.Subject) when it does
// not exist. An existing stream must capture opts.Subject.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Log, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	subjects := []string{opts.Subject, opts.Subject + chunkSuffix, opts.Subject + manifestSuffix}
	stream, err := js.Stream(ctx, opts.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		stream, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:      opts.Stream,
			Subjects:  subjects,
			Storage:   jetstream.FileStorage,
			Replicas:  opts.Replicas,
			Retention: jetstream.LimitsPolicy,
			Discard:   jetstream.DiscardOld,
			// Appends are fenced by sequence; deleting single messages
			// would only punch holes in records.
			DenyDelete: true,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("changelog: open stream %q: %w", opts.Stream, err)
	}
	cfg := stream.CachedInfo().Config
	if len(cfg.Subjects) == 1 && cfg.Subjects[0] == opts.Subject {
		// A stream made before checkpoints: capture their subjects too.
		cfg.Subjects = subjects
		if stream, err = js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("changelog: add the checkpoint subjects to stream %q: %w", opts.Stream, err)
		}
	}
	if !slices.Equal(cfg.Subjects, subjects) {
		return nil, fmt.Errorf("changelog: stream %q captures %q, Options.Subject %q needs %q (one stream per partition)",
			opts.Stream, cfg.Subjects, opts.Subject, subjects)
	}
	return &Log{js: js, stream: stream, opts: opts}, nil
}

// info reads the stream's state from its leader, waiting at most
// Options.AckTimeout: while a new leader is being elected (a few seconds
// after the leader's server died, on the loopback cluster) a request can
// go unanswered, and asking again once it timed out reaches the new one.
func (l *Log) info(ctx context.Context) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, l.opts.AckTimeout)
	defer cancel()
	return l.stream.Info(ctx)
}

// Last returns the stream's last sequence: 0 for a stream never written.
func (l *Log) Last(ctx context.Context) (uint64, error) {
	info, err := l.info(ctx)
	if err != nil {
		return 0, fmt.Errorf("changelog: stream %q: %w", l.opts.Stream, err)
	}
	return info.State.LastSeq, nil
}

// Writer appends records to a Log, each publish expecting the stream's
// last sequence to be the one the writer's previous publish got. Appends
// are stored, and their sequences assigned, in the order of Submit calls.
// It is safe for concurrent use, but the order of concurrent Submits is
// the order they take the writer's lock.
type Writer struct {
	log   *Log
	epoch uint64

	// slots holds a token per message published whose submission, or an
	// earlier one, has not yet been settled by its wait (MaxInFlight):
	// slots are given back in submission order, so a writer never has
	// more than MaxInFlight messages published from its oldest unsettled
	// one on, whichever goroutines call the waits (the fencing protocol
	// relies on it, see TakeOver).
	slots chan struct{}

	mu        sync.Mutex
	last      uint64 // the sequence the next publish expects to be last
	submitted uint64 // submissions so far
	failed    error  // the first failure; every later append fails
	failedAt  uint64 // the submission that failed
	input     uint64 // the highest record Input submitted
	// logBytes counts the bytes of records submitted since the last
	// checkpoint (or since the writer was made).
	logBytes int64
	// done holds, for each settled submission not yet released, the
	// slots it holds; release is the first submission not released.
	// waited is signalled (on mu) each time release moves.
	done    map[uint64]int
	release uint64
	waited  *sync.Cond
}

// NewWriter returns a writer that expects last to be the stream's last
// sequence, and stamps its records with epoch. A writer created from a
// stale last sequence has its first append refused with ErrFenced.
func (l *Log) NewWriter(last, epoch uint64) *Writer {
	w := &Writer{log: l, last: last, epoch: epoch, slots: make(chan struct{}, MaxInFlight),
		done: map[uint64]int{}, release: 1}
	w.waited = sync.NewCond(&w.mu)
	return w
}

// Last returns the sequence the writer's next append expects to be the
// stream's last: the last message it appended, or the one it started from.
func (w *Writer) Last() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// Append appends r and waits for the stream to acknowledge it (stored on a
// quorum of replicas). It returns the sequence of r's last message. After
// a failure (ErrFenced, a timeout, a lost connection) the writer refuses
// every later append with ErrWriterFailed.
func (w *Writer) Append(ctx context.Context, r *Record) (uint64, error) {
	return w.Submit(ctx, r)()
}

// Submit publishes r without waiting: wait blocks until r's messages are
// acknowledged and returns what Append would. Records submitted one after
// another are pipelined: each message expects its predecessor's sequence,
// so if one is refused, every later one is too. r is encoded before Submit
// returns and may be reused then. Call wait exactly once; a goroutine
// calls the waits of its own submissions in order (several goroutines may
// submit: a checkpoint is written while the store appends its groups).
// Submit blocks while MaxInFlight messages are published from the oldest
// submission not yet waited for on, until ctx is done.
func (w *Writer) Submit(ctx context.Context, r *Record) (wait func() (uint64, error)) {
	_, wait, err := w.submit(ctx, r)
	if err != nil {
		return func() (uint64, error) { return 0, err }
	}
	return wait
}

// submit is Submit, which also returns the position the record will have
// once stored (its last message's sequence, the writer's epoch and the
// record's checksum), or the error that kept it from being published.
func (w *Writer) submit(ctx context.Context, r *Record) (Position, func() (uint64, error), error) {
	rec := *r
	rec.Epoch = w.epoch
	data := AppendRecord(nil, &rec)
	sum := xxhash.Sum64(data)
	parts := (len(data) + w.log.opts.ChunkBytes - 1) / w.log.opts.ChunkBytes
	if parts == 0 {
		parts = 1
	}
	if parts > MaxParts {
		return Position{}, nil, fmt.Errorf("changelog %q: %w: %d bytes need %d messages of Options.ChunkBytes %d, limit %d",
			w.log.opts.Stream, ErrRecordTooLarge, len(data), parts, w.log.opts.ChunkBytes, MaxParts)
	}
	payloads := make([][]byte, parts)
	for i := range payloads {
		chunk := data[i*w.log.opts.ChunkBytes : min((i+1)*w.log.opts.ChunkBytes, len(data))]
		payloads[i] = appendPart(make([]byte, 0, len(chunk)+8), i, parts, chunk)
	}
	p, _, wait, err := w.publish(ctx, w.log.opts.Subject, payloads, r.Input, len(data))
	p.Sum = sum
	return p, wait, err
}

// publish publishes payloads on subject as consecutive messages, each
// expecting its predecessor's sequence, without waiting. It returns the
// Position of the last one (without Sum; Input is the highest input
// position submitted so far, input included), and the wait. logBytes is
// what the messages add to the log since the last checkpoint.
func (w *Writer) publish(ctx context.Context, subject string, payloads [][]byte, input uint64, logBytes int) (Position, uint64, func() (uint64, error), error) {
	parts := len(payloads)
	// The slots are taken before the lock: a wait that fails takes the
	// lock before it gives its slots back.
	for i := 0; i < parts; i++ {
		select {
		case w.slots <- struct{}{}:
		case <-ctx.Done():
			for ; i > 0; i-- {
				<-w.slots
			}
			return Position{}, 0, nil, fmt.Errorf("changelog %q: waiting to publish: %w", w.log.opts.Stream, ctx.Err())
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.submitted++
	id := w.submitted
	if w.failed != nil {
		for range parts {
			<-w.slots
		}
		w.settled(id, 0)
		return Position{}, 0, nil, fmt.Errorf("changelog %q: %w: %w", w.log.opts.Stream, ErrWriterFailed, w.failed)
	}
	futures := make([]jetstream.PubAckFuture, 0, parts)
	first := w.last + 1
	for _, payload := range payloads {
		m := nats.NewMsg(subject)
		m.Data = payload
		// No retry on "no responders" (the stream has no leader for a
		// moment): the append fails and its group is redelivered, which
		// the fencing already handles, and nats.go v1.37's retry of an
		// async publish can panic (slice bounds out of range in
		// PublishMsgAsync, nats.go#1661) when the no-responders reply
		// comes back before the first publish returned, as it did to an
		// instance while a NATS node was killed.
		f, err := w.log.js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(w.last), jetstream.WithRetryAttempts(0))
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			// Acknowledgements lost with a stream's leader (a node
			// killed while the connection stayed with another) never
			// come, and the context keeps their publishes pending for
			// ever: once it holds its limit of them, every publish of
			// the process stalls and no partition recovers. Drop them
			// and publish again. The publishes of other appends still
			// waiting fail with them and their writers fail (their
			// groups are redelivered); the expected last sequence
			// keeps what was stored meanwhile in order.
			w.log.js.CleanupPublisher()
			f, err = w.log.js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(w.last), jetstream.WithRetryAttempts(0))
		}
		if err != nil {
			// Parts already published may be stored: the stream's
			// last sequence is unknown from here on.
			w.fail(id, fmt.Errorf("changelog %q: publish: %w", w.log.opts.Stream, err))
			for range parts {
				<-w.slots
			}
			w.settled(id, 0)
			return Position{}, 0, nil, w.failed
		}
		futures = append(futures, f)
		w.last++
	}
	w.input = max(w.input, input)
	w.logBytes += int64(logBytes)
	// The acknowledgements are due AckTimeout after the publish, not
	// after the call of wait: a caller that waits for many appends in
	// turn (Fence: MaxInFlight of them) waits AckTimeout in all when
	// their acknowledgements were lost, not AckTimeout for each.
	timeout := w.log.opts.AckTimeout
	due := time.Now().Add(timeout)
	pos := Position{Seq: w.last, Epoch: w.epoch, Input: w.input}
	return pos, id, func() (uint64, error) {
		timer := time.NewTimer(time.Until(due))
		defer timer.Stop()
		defer func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.settled(id, parts)
		}()
		for i, f := range futures {
			want := first + uint64(i)
			acked := func(ack *jetstream.PubAck) error {
				if ack.Sequence != want {
					return fmt.Errorf("changelog %q: append stored at sequence %d, expected %d (does the server honour Nats-Expected-Last-Sequence?)",
						w.log.opts.Stream, ack.Sequence, want)
				}
				return nil
			}
			var err error
			// An answer already in counts even when the deadline has
			// passed too (of ready cases, select picks one at random).
			answered := true
			select {
			case ack := <-f.Ok():
				err = acked(ack)
			case perr := <-f.Err():
				err = classify(w.log.opts.Stream, want, perr)
			default:
				answered = false
			}
			if !answered {
				select {
				case ack := <-f.Ok():
					err = acked(ack)
				case perr := <-f.Err():
					err = classify(w.log.opts.Stream, want, perr)
				case <-timer.C:
					err = fmt.Errorf("changelog %q: append at sequence %d: no acknowledgement within Options.AckTimeout %v of its publish: %w",
						w.log.opts.Stream, want, timeout, context.DeadlineExceeded)
				case <-ctx.Done():
					err = fmt.Errorf("changelog %q: append at sequence %d: %w", w.log.opts.Stream, want, ctx.Err())
				}
			}
			if err != nil {
				w.mu.Lock()
				defer w.mu.Unlock()
				if w.failed != nil && w.failedAt < id {
					// A consequence of an earlier failure, not a fence.
					return 0, fmt.Errorf("changelog %q: %w: %w", w.log.opts.Stream, ErrWriterFailed, w.failed)
				}
				w.fail(id, err)
				return 0, err
			}
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.failed != nil && w.failedAt < id {
			// Stored, but after an earlier append of this writer was
			// refused: behind another writer's fence, where Restore
			// skips it (its epoch is below the fence's).
			return 0, fmt.Errorf("changelog %q: %w: %w", w.log.opts.Stream, ErrWriterFailed, w.failed)
		}
		return first + uint64(len(futures)) - 1, nil
	}, nil
}

// settled records that submission id, holding parts slots, has been
// waited for, and gives back the slots of every submission settled in
// order from the oldest not given back; w.mu is held.
func (w *Writer) settled(id uint64, parts int) {
	w.done[id] = parts
	moved := false
	for {
		n, ok := w.done[w.release]
		if !ok {
			break
		}
		for range n {
			<-w.slots
		}
		delete(w.done, w.release)
		w.release++
		moved = true
	}
	if moved {
		w.waited.Broadcast()
	}
}

// settle waits until every submission before id has been waited for,
// and returns the writer's failure if one of them failed (or ctx's
// error). Waits run on other goroutines (the store's syncer): a message
// acknowledged does not by itself say that no earlier one was refused.
func (w *Writer) settle(ctx context.Context, id uint64) error {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.waited.Broadcast()
	})
	defer stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		if w.failed != nil && w.failedAt <= id {
			return fmt.Errorf("changelog %q: %w: %w", w.log.opts.Stream, ErrWriterFailed, w.failed)
		}
		if w.release >= id {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		w.waited.Wait()
	}
}

// fail records the writer's first failure; w.mu is held.
func (w *Writer) fail(id uint64, err error) {
	if w.failed == nil {
		w.failed, w.failedAt = err, id
	}
}

// classify turns a refused publish into ErrFenced when the stream's last
// sequence was not the expected one.
func classify(stream string, seq uint64, err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return fmt.Errorf("changelog %q: append at sequence %d: %w (%v)", stream, seq, ErrFenced, err)
	}
	return fmt.Errorf("changelog %q: append at sequence %d: %w", stream, seq, err)
}

// A message's payload is a part header (a version byte, uvarints part
// index and part count) followed by that part's bytes of the encoded
// record.
const partVersion = 1

func appendPart(dst []byte, index, count int, chunk []byte) []byte {
	dst = append(dst, partVersion)
	dst = binary.AppendUvarint(dst, uint64(index))
	dst = binary.AppendUvarint(dst, uint64(count))
	return append(dst, chunk...)
}

func parsePart(b []byte) (index, count uint64, chunk []byte, err error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != partVersion {
		return 0, 0, nil, fmt.Errorf("%w: part version %d, this build reads version %d", ErrCorrupt, v, partVersion)
	}
	index, count = d.uvarint(), d.uvarint()
	if d.err != nil {
		return 0, 0, nil, d.err
	}
	if count == 0 || count > MaxParts || index >= count {
		return 0, 0, nil, fmt.Errorf("%w: part %d of %d", ErrCorrupt, index, count)
	}
	return index, count, d.b, nil
}

// Restored reports what Restore read and applied.
type Restored struct {
	// Applied is the stream sequence of the last message of the last
	// record applied (the after argument when none was): the position to
	// continue a later Restore from.
	Applied uint64
	// Last is the stream's last sequence when the restore ended: a Writer
	// continuing after this restore expects it. It is beyond Applied when
	// the stream ends with a record not yet complete.
	Last uint64
	// Records and Writes count the records (fence records included) and
	// writes applied.
	Records, Writes int
	// Input is the highest Input of the records up to Applied: of the
	// records applied, and of those before them (the store's position, a
	// checkpoint).
	Input uint64
	// Torn counts records skipped because some of their messages are
	// missing: their writer stopped between parts, and a new owner
	// fenced it.
	Torn int
	// Epoch is the highest epoch of the fence records read.
	Epoch uint64
	// Stale counts records skipped because a fence of a higher epoch
	// came before them: appends of a writer that was pipelining when it
	// was fenced, which lined up behind the fence and which the writer
	// reported as failed.
	Stale int
	// After is the sequence the restore started after: 0 for a restore
	// from the start, a store's position for one that resumed from it
	// (CatchUp).
	After uint64
	// Position is the position the store holds once the restore is done
	// (see Position): the one it started from when nothing was applied.
	Position Position
	// Checkpoint is the sequence of the manifest of the checkpoint the
	// restore started from (0: none), CheckpointKeys the keys it held.
	Checkpoint     uint64
	CheckpointKeys int
}

// Restore applies to b, in order, every complete record stored after
// stream sequence after, up to the stream's last sequence when Restore
// starts. With after 0, b must be empty: Restore first writes the state
// of the latest valid checkpoint (see Checkpoint) when the stream holds
// one, then applies the records after it (Restored.Checkpoint), else
// applies every record from the start. Each record is one transaction of b; a
// record whose transaction fails stops the restore with its error; b may
// then hold some of the records after Applied, and must be discarded.
// A record with messages missing (a writer stopped between parts) is
// skipped and counted in Torn. Restore fails with ErrGap when the stream
// does not hold the message after after any more, or ends before after.
//
// A record whose epoch is below that of a fence read before it is skipped
// and counted in Stale (see TakeOver). A restore starting after a fence
// (after > 0) knows only the fences it reads.
//
// A backend whose Txn implements SetPosition (a pebblestore.Store) records,
// with each Update of the restore, the Position of its last record.
func (l *Log) Restore(ctx context.Context, b kv.Backend, after uint64) (Restored, error) {
	return l.restore(ctx, b, Position{Seq: after})
}

// positionSetter is the Txn of a backend that records its Position
// (pebblestore.PositionSetter).
type positionSetter interface {
	SetPosition(pos []byte) error
}

// restore is Restore from a position: from.Epoch is the highest fence
// epoch of the records up to from.Seq.
func (l *Log) restore(ctx context.Context, b kv.Backend, from Position) (Restored, error) {
	after := from.Seq
	info, err := l.info(ctx)
	if err != nil {
		return Restored{Applied: after, After: after, Position: from}, fmt.Errorf("changelog: stream %q: %w", l.opts.Stream, err)
	}
	st := info.State
	var ck *manifest
	if after == 0 && st.LastSeq > 0 {
		// From the start: from the latest checkpoint, if there is one.
		if ck, err = l.latestCheckpoint(ctx, st.FirstSeq); err != nil {
			return Restored{}, fmt.Errorf("changelog %q: %w", l.opts.Stream, err)
		}
		if ck != nil {
			if err := l.applyCheckpoint(ctx, b, ck); err != nil {
				return Restored{}, err
			}
			from = ck.pos
			after = from.Seq
		}
	}
	res := Restored{Applied: after, Last: st.LastSeq, Epoch: from.Epoch, Position: from, Input: from.Input}
	if ck != nil {
		res.Checkpoint, res.CheckpointKeys = ck.seq, int(ck.keys)
	} else {
		res.After = after
	}
	switch {
	case st.LastSeq < after:
		return res, fmt.Errorf("changelog %q: %w: restore after sequence %d, the stream ends at %d",
			l.opts.Stream, ErrGap, after, st.LastSeq)
	case st.LastSeq == after:
		return res, nil
	case st.FirstSeq > after+1:
		return res, fmt.Errorf("changelog %q: %w: restore after sequence %d, the stream starts at %d",
			l.opts.Stream, ErrGap, after, st.FirstSeq)
	}

	cctx, cancel := context.WithTimeout(ctx, l.opts.AckTimeout)
	defer cancel()
	// Unfiltered: the stream's last message may be a checkpoint's.
	cons, err := l.stream.OrderedConsumer(cctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   after + 1,
	})
	if err != nil {
		return res, fmt.Errorf("changelog %q: read from sequence %d: %w", l.opts.Stream, after+1, err)
	}
	it, err := cons.Messages(jetstream.PullHeartbeat(readHeartbeat))
	if err != nil {
		return res, fmt.Errorf("changelog %q: read from sequence %d: %w", l.opts.Stream, after+1, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	var (
		batch    []Record
		batchEnd uint64 // Applied once batch is applied
		batchSum uint64 // the checksum of the record ending at batchEnd
		pending  []byte // parts of the record being assembled
		next     uint64 // the part index expected next; 0 when none is pending
		count    uint64 // the pending record's part count
		prevSeq  = after
	)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		fns := make([]kv.TxnFunc, len(batch))
		errs := make([]error, len(batch))
		for i := range batch {
			r := &batch[i]
			fns[i] = func(tx kv.Txn) error { return apply(tx, r) }
		}
		input := res.Input
		for i := range batch {
			input = max(input, batch[i].Input)
		}
		pos := Position{Seq: batchEnd, Epoch: res.Epoch, Sum: batchSum, Input: input}
		last := fns[len(fns)-1]
		fns[len(fns)-1] = func(tx kv.Txn) error {
			if err := last(tx); err != nil {
				return err
			}
			if ps, ok := tx.(positionSetter); ok {
				return ps.SetPosition(pos.Append(nil))
			}
			return nil
		}
		if err := b.Update(ctx, fns, errs); err != nil {
			return fmt.Errorf("changelog %q: restore up to sequence %d: %w", l.opts.Stream, batchEnd, err)
		}
		for i, err := range errs {
			if err != nil {
				// The other records of the Update are committed: the
				// store is between two states of the log and must be
				// discarded (Restore's doc).
				return fmt.Errorf("changelog %q: restore record %d of the group ending at sequence %d: %w",
					l.opts.Stream, i, batchEnd, err)
			}
			res.Records++
			res.Writes += len(batch[i].Writes)
			res.Input = max(res.Input, batch[i].Input)
		}
		res.Applied = batchEnd
		res.Position = pos
		batch = batch[:0]
		return nil
	}
	for prevSeq < st.LastSeq {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return res, fmt.Errorf("changelog %q: read after sequence %d: %w", l.opts.Stream, prevSeq, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return res, fmt.Errorf("changelog %q: read after sequence %d: %w", l.opts.Stream, prevSeq, err)
		}
		seq := meta.Sequence.Stream
		if seq > st.LastSeq {
			break
		}
		if msg.Subject() != l.opts.Subject {
			// A checkpoint's message: a record's parts are consecutive,
			// so one in between means the record is torn.
			if next != 0 {
				res.Torn++
				pending, next, count = pending[:0], 0, 0
			}
			prevSeq = seq
			continue
		}
		index, n, chunk, err := parsePart(msg.Data())
		if err != nil {
			return res, fmt.Errorf("changelog %q: sequence %d: %w", l.opts.Stream, seq, err)
		}
		switch {
		case index == 0:
			if next != 0 {
				res.Torn++ // a new record began before the pending one ended
			}
			pending, next, count = append(pending[:0], chunk...), 1, n
		case next != 0 && index == next && n == count && seq == prevSeq+1:
			pending = append(pending, chunk...)
			next++
		default:
			// A later part of a record whose start was not read here:
			// with after at a record boundary, only a torn record's.
			if next != 0 {
				res.Torn++
			}
			pending, next, count = pending[:0], 0, 0
			prevSeq = seq
			continue
		}
		prevSeq = seq
		if next < count {
			continue
		}
		rec, err := DecodeRecord(pending)
		if err != nil {
			return res, fmt.Errorf("changelog %q: record ending at sequence %d: %w", l.opts.Stream, seq, err)
		}
		sum := xxhash.Sum64(pending)
		// pending is reused for the next record: the writes must not
		// point into it.
		rec.Writes = cloneWrites(rec.Writes)
		pending, next, count = pending[:0], 0, 0
		batchEnd, batchSum = seq, sum
		switch {
		case rec.Epoch < res.Epoch:
			// Behind a fence of a newer writer: never acknowledged.
			res.Stale++
			if len(batch) == 0 {
				res.Applied = seq
			}
			continue
		case rec.Fence:
			res.Epoch = rec.Epoch
		}
		batch = append(batch, rec)
		if len(batch) >= l.opts.RestoreBatch {
			if err := flush(); err != nil {
				return res, err
			}
		}
	}
	// A record the stream ends inside (its writer may still be appending
	// it) is not applied: Applied stays before it.
	if err := flush(); err != nil {
		return res, err
	}
	return res, nil
}

// apply runs one record's writes in tx.
func apply(tx kv.Txn, r *Record) error {
	for _, w := range r.Writes {
		var err error
		switch w.Op {
		case OpSet:
			err = tx.Set(w.Key, w.Value, w.ExpireAt)
		case OpDelete:
			err = tx.Delete(w.Key)
		case OpDeleteRange:
			err = tx.DeleteRange(w.Key, w.End)
		default:
			err = fmt.Errorf("%w: unknown op %d", ErrCorrupt, uint8(w.Op))
		}
		if err != nil {
			return fmt.Errorf("%s %q: %w", w.Op, w.Key, err)
		}
	}
	return nil
}

// cloneWrites copies the writes' bytes into one allocation.
func cloneWrites(ws []Write) []Write {
	n := 0
	for _, w := range ws {
		n += len(w.Key) + len(w.End) + len(w.Value)
	}
	buf := make([]byte, 0, n)
	take := func(b []byte) []byte {
		if b == nil {
			return nil
		}
		start := len(buf)
		buf = append(buf, b...)
		return buf[start:len(buf):len(buf)]
	}
	out := make([]Write, len(ws))
	for i, w := range ws {
		out[i] = Write{Op: w.Op, Key: take(w.Key), End: take(w.End), Value: take(w.Value), ExpireAt: w.ExpireAt}
	}
	return out
}

// TakeOver makes the caller the partition's writer, fencing every writer
// created before it, then restores b from the stream after sequence after
// (the store's own position, 0 for an empty store).
//
// Fencing appends MaxInFlight fence records (stamped with epoch) in a
// row, the first expecting the stream's last sequence. A writer that was
// pipelining when fenced may have had messages line up behind the first
// fence (each of its messages expects its predecessor's sequence, and a
// later one may expect the fence's): it has at most MaxInFlight messages
// published and not settled, one of which the fence refused, and it
// publishes nothing more once it has seen that. Its messages thus expect
// sequences below the first fence's + MaxInFlight - 1, and once the fence
// records fill the stream up to there, none of them can ever be stored.
// If one gets in between, the round is repeated from the new last
// sequence (at most maxTakeOverAttempts rounds); the restore skips the
// old writer's records behind a fence (their epoch is below its epoch, so
// epochs must grow from owner to owner: a lease epoch), and that writer
// reported them failed.
//
// The returned Writer expects the last fence record to be the stream's
// last message; the returned Restored covers the restore, Applied being
// that record's sequence. A writer that never stops appending could win
// every round; the lease stops an old owner within a renewal interval of
// noticing, so in a flow the fence wins within about that.
func (l *Log) TakeOver(ctx context.Context, b kv.Backend, after, epoch uint64) (*Writer, Restored, error) {
	w, err := l.Fence(ctx, epoch)
	if err != nil {
		return nil, Restored{Applied: after, After: after}, err
	}
	res, err := l.restore(ctx, b, Position{Seq: after})
	if err != nil {
		return nil, res, fmt.Errorf("changelog %q: take over: %w", l.opts.Stream, err)
	}
	if fence := w.Last(); res.Applied != fence || res.Last != fence {
		// Only a newer owner can append after the fence.
		return nil, res, fmt.Errorf("changelog %q: take over: %w: the stream ends at %d, after the fence at %d",
			l.opts.Stream, ErrFenced, res.Last, fence)
	}
	return w, res, nil
}

// Replicate appends one commit group's writes as a record, without
// waiting: it makes a Writer a pebblestore.Replicator, so that a store's
// results are released only once their group is in the changelog. The
// writes are encoded before Replicate returns. pos is the record's
// Position, encoded (the store keeps it with the group, and CatchUp
// resumes from it); err reports a record that was not published (the
// writer failed earlier, the record is too large), which the store must
// not apply. The wait is bounded by Options.AckTimeout.
func (w *Writer) Replicate(writes []kv.Write, input uint64) (pos []byte, wait func() error, err error) {
	p, wait2, err := w.submit(context.Background(), &Record{Writes: writes, Input: input})
	if err != nil {
		return nil, nil, err
	}
	return p.Append(nil), func() error {
		_, err := wait2()
		return err
	}, nil
}
