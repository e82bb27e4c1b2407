// Package incrflow is the increment workload of the partitioned-flow
// proofs and of the scale bench (scripts/scalebench): a flow file that
// increments a counter per input message, read from the partition subjects
// of a NATS stream, and publishes each result to an answers stream; the
// publisher of its input (n increments over a number of keys), the reader
// of its answers, and the check that every increment was applied exactly
// once.
//
// The same flow runs on three stores, so that they can be compared on one
// input: a partitioned kv connector (local Pebble per partition plus a
// changelog on the cluster), an unpartitioned Pebble store, and the etcd
// backend. The unpartitioned variants consume the same partition subjects
// through one durable consumer (subject `IN.p.*`).
package incrflow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/internal/partition"
)

// Stores a Flow runs on.
const (
	// Partitioned is a kv connector with Flow.Partitions partitions, its
	// changelogs on the NATS cluster, fed by a partitions_of source.
	Partitioned = "partitioned"
	// Pebble is an unpartitioned kv connector on a local Pebble store.
	Pebble = "pebble"
	// Etcd is the kv connector's etcd backend.
	Etcd = "etcd"
)

// ErrBadAnswer reports an answer that is not one the flow publishes: no
// numeric correlation, or data that is not a count.
var ErrBadAnswer = errors.New("not an answer of the increment flow")

// ErrCheck reports answers that do not show every increment applied
// exactly once.
var ErrCheck = errors.New("increments not applied exactly once")

// ErrIncomplete reports answers that are right so far but do not answer
// every message yet; it wraps ErrCheck.
var ErrIncomplete = fmt.Errorf("%w: not every message answered", ErrCheck)

// Flow describes one flow file of the workload.
type Flow struct {
	// Name is the flow's name; a partitioned store's group defaults to it,
	// so a fresh name is a fresh state.
	Name string
	// URLs are the NATS cluster's client URLs, comma-separated: the
	// source's, the sink's and the changelog's.
	URLs string
	// In is the input: for a Partitioned store the base subject whose
	// partition subjects carry the messages, otherwise the one subject
	// they are on (Publish). Out is the answers' subject.
	In, Out string
	// Durable names the source's consumer (each partition's consumer with
	// a partitioned store). Default "counts".
	Durable string
	// Window is the source's window. Default 256.
	Window int
	// Store is Partitioned, Pebble or Etcd. Default Partitioned.
	Store string
	// Partitions of a Partitioned store. Default 12.
	Partitions int
	// Endpoints and Prefix of an Etcd store.
	Endpoints, Prefix string
	// NoIdem leaves out `idem_from: message_id` (on by default: a
	// redelivered message is answered from its idempotency record).
	NoIdem bool
	// MaxDeliveries is the source's max_deliveries; 0 leaves the
	// source's default.
	MaxDeliveries int
}

// EnsureDefaults fills unset fields with their defaults.
func (f *Flow) EnsureDefaults() {
	if f.Durable == "" {
		f.Durable = "counts"
	}
	if f.Window <= 0 {
		f.Window = 256
	}
	if f.Store == "" {
		f.Store = Partitioned
	}
	if f.Partitions <= 0 {
		f.Partitions = 12
	}
}

// YAML returns the flow file. Its state directory `state` is relative to
// the file: instances on one machine each need a directory of their own.
func (f Flow) YAML() (string, error) {
	f.EnsureDefaults()
	var source, store string
	switch f.Store {
	case Partitioned:
		source = fmt.Sprintf("{ type: nats, mode: read, url: %q, subject: %s, durable: %s, partitions_of: store, window: %d }",
			f.URLs, f.In, f.Durable, f.Window)
		store = fmt.Sprintf(`
    type: kv
    dir: state
    partitions: %d
    changelog: { urls: %q, replicas: 3 }`, f.Partitions, f.URLs)
	case Pebble, Etcd:
		source = fmt.Sprintf("{ type: nats, mode: read, url: %q, subject: %q, durable: %s, window: %d }",
			f.URLs, f.In, f.Durable, f.Window)
		if f.Store == Pebble {
			store = `
    type: kv
    dir: state`
		} else {
			if f.Endpoints == "" || f.Prefix == "" {
				return "", fmt.Errorf("incrflow: an etcd flow needs Endpoints and Prefix")
			}
			store = fmt.Sprintf(`
    type: kv
    backend: etcd
    endpoints: %q
    prefix: %q`, f.Endpoints, f.Prefix)
		}
	default:
		return "", fmt.Errorf("incrflow: store %q: want %s, %s or %s", f.Store, Partitioned, Pebble, Etcd)
	}
	if !f.NoIdem {
		store += "\n    idem_from: message_id"
	}
	if f.MaxDeliveries > 0 {
		source = strings.TrimSuffix(source, " }") + fmt.Sprintf(", max_deliveries: %d }", f.MaxDeliveries)
	}
	return fmt.Sprintf(`name: %s
connectors:
  input: %s
  store:%s
  answers: { type: nats, mode: write, url: %q, subject: %s }
pipelines:
  apply:
    - set:
        meta.kv: '{"increment": "c/" + data.k}'
        meta.correlation: data.i
links:
  - input/out -> apply/in
  - apply/out -> store/in
  - store/out -> answers/in
`, f.Name, source, store, f.URLs, f.Out), nil
}

// Key returns the key message i increments, of keys keys: "k00042". The
// store's key is "c/" + Key.
func Key(i, keys int) string { return fmt.Sprintf("k%05d", i%keys) }

// StoreKey returns the kv key message i increments: "c/" + Key(i, keys).
func StoreKey(i, keys int) string { return "c/" + Key(i, keys) }

// InputStream returns the stream config of the input with base subject
// in: its partition subjects, three replicas.
func InputStream(in string) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: bus.PartitionStreamName(in), Subjects: []string{bus.PartitionFilter(in)}, Replicas: 3}
}

// PlainInputStream returns the stream config of an unpartitioned flow's
// input on subject in (Publish with no partitions), three replicas.
func PlainInputStream(in string) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: bus.StreamName(in), Subjects: []string{in}, Replicas: 3}
}

// AnswerStream returns the stream config of the answers on subject out,
// three replicas.
func AnswerStream(out string) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: bus.StreamName(out), Subjects: []string{out}, Replicas: 3}
}

// Publish publishes n increments, message i incrementing Key(i, keys),
// each to its partition's subject of in (of parts partitions), as a
// producer that knows the key does (the repartition stage does the same),
// or with parts 0 all to subject in, for an unpartitioned flow: plain JSON
// {"k": KEY, "i": i}. It returns once the broker acknowledged every
// message: one whose publish failed (no responders while a stream leader
// is elected, an acknowledgement not received within publishAckWait) is
// published again under the same message ID, which the stream's
// duplicate window drops if the first copy was stored, up to
// publishAttempts times. A message the broker never acknowledged would
// never be answered: the run waiting for it would stall without a cause.
func Publish(ctx context.Context, js jetstream.JetStream, in string, n, keys, parts int) error {
	return PublishRange(ctx, js, in, 0, n, keys, parts)
}

// PublishRange is Publish of messages from to to-1 only: a run can hold
// some of its input back.
func PublishRange(ctx context.Context, js jetstream.JetStream, in string, from, to, keys, parts int) error {
	return publishRange(ctx, js, in, from, to, keys, parts, publishAckWait)
}

// publishRange is PublishRange waiting ackWait for each acknowledgement.
func publishRange(ctx context.Context, js jetstream.JetStream, in string, from, to, keys, parts int, ackWait time.Duration) error {
	// A JetStream context of its own: the caller's may have no
	// acknowledgement timeout, and an acknowledgement lost would then
	// keep the publish pending until ctx ends.
	pjs, err := jetstream.New(js.Conn(), jetstream.WithPublishAsyncTimeout(ackWait))
	if err != nil {
		return err
	}
	wait := func() error {
		select {
		case <-pjs.PublishAsyncComplete():
			return nil
		case <-ctx.Done():
			return fmt.Errorf("publishing: %w", ctx.Err())
		}
	}
	// One ID per run of Publish and message: a test publishing twice to
	// one subject within the duplicate window must not lose the second.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	send := func(i int) (jetstream.PubAckFuture, error) {
		k := Key(i, keys)
		subj := in
		if parts > 0 {
			subj = partition.Subject(in, partition.OfString("c/"+k, parts))
		}
		for {
			f, err := pjs.PublishAsync(subj, fmt.Appendf(nil, `{"k":%q,"i":%d}`, k, i), jetstream.WithMsgID(run+"."+strconv.Itoa(i)))
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				// A loaded machine acknowledges slowly: let the
				// outstanding publishes complete and try again.
				if err := wait(); err != nil {
					return nil, err
				}
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("publish message %d: %w", i, err)
			}
			return f, nil
		}
	}
	type sent struct {
		i int
		f jetstream.PubAckFuture
	}
	// settle waits for the window's acknowledgements and publishes the
	// messages that failed again, after a pause growing with each
	// attempt, until each is acknowledged.
	settle := func(window []sent) error {
		for attempt := 1; len(window) > 0; attempt++ {
			if err := wait(); err != nil {
				return err
			}
			var failed []int
			for _, s := range window {
				select {
				case <-s.f.Ok():
				case err := <-s.f.Err():
					if attempt == publishAttempts {
						return fmt.Errorf("publish message %d: not acknowledged in %d attempts: %w", s.i, attempt, err)
					}
					failed = append(failed, s.i)
				}
			}
			if len(failed) == 0 {
				return nil
			}
			select {
			case <-time.After(time.Duration(attempt) * publishPause):
			case <-ctx.Done():
				return fmt.Errorf("publishing: %w", ctx.Err())
			}
			window = window[:0]
			for _, i := range failed {
				f, err := send(i)
				if err != nil {
					return err
				}
				window = append(window, sent{i, f})
			}
		}
		return nil
	}
	window := make([]sent, 0, publishWindow)
	for i := from; i < to; i++ {
		f, err := send(i)
		if err != nil {
			return err
		}
		window = append(window, sent{i, f})
		if len(window) == publishWindow {
			if err := settle(window); err != nil {
				return err
			}
			window = window[:0]
		}
	}
	return settle(window)
}

// publishWindow is how many messages Publish sends before it waits for
// their acknowledgements; publishAckWait how long it waits for one (a
// loaded cluster acknowledges within a second or two); publishAttempts
// how often it sends a message before it gives up, pausing publishPause
// times the attempt's number before sending the failed ones again.
const (
	publishWindow   = 4096
	publishAckWait  = 10 * time.Second
	publishAttempts = 5
	publishPause    = 250 * time.Millisecond
)

// Answer is one result the flow published: the increment of input
// message Corr on Key reached Value.
type Answer struct {
	Corr  int
	Key   string // the store's key, "c/k00042"
	Value int64
	At    time.Time // stored by the broker
	Seq   uint64    // in the answers stream
}

// ParseAnswer reads an answer message; an error wraps ErrBadAnswer.
func ParseAnswer(m jetstream.Msg) (Answer, error) {
	md, err := m.Metadata()
	if err != nil {
		return Answer{}, fmt.Errorf("%w: metadata: %w", ErrBadAnswer, err)
	}
	corr, err := strconv.Atoi(m.Headers().Get(bus.CorrelationKey))
	if err != nil {
		return Answer{}, fmt.Errorf("%w: no numeric correlation: %v %s", ErrBadAnswer, m.Headers(), m.Data())
	}
	v, err := strconv.ParseInt(string(m.Data()), 10, 64)
	if err != nil {
		return Answer{}, fmt.Errorf("%w: answer %d: data %q is not a count", ErrBadAnswer, corr, m.Data())
	}
	key := gjson.Get(m.Headers().Get("kv"), "key").String()
	return Answer{Corr: corr, Key: key, Value: v, At: md.Timestamp, Seq: md.Sequence.Stream}, nil
}

// Reader reads the answers stream in order, each stored answer once.
type Reader struct {
	js      jetstream.JetStream
	stream  string
	cons    jetstream.Consumer
	lastSeq uint64
	// fresh says the consumer was made again from lastSeq+1 and has
	// delivered nothing since: a gap then is the stream's own (messages
	// deleted), not one the consumer skipped.
	fresh bool
	// Restarts counts the consumers made again after a gap, or after a
	// fetch that brought nothing while the stream held more; Gaps, those
	// after a gap.
	Restarts, Gaps int
}

// NewReader returns a reader of the answers on subject out, from the
// stream's first message.
func NewReader(ctx context.Context, js jetstream.JetStream, out string) (*Reader, error) {
	r := &Reader{js: js, stream: bus.StreamName(out)}
	if err := r.restart(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// restart makes the reader's ordered consumer again, from the message
// after the last one read.
func (r *Reader) restart(ctx context.Context) error {
	cfg := jetstream.OrderedConsumerConfig{}
	if r.lastSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.lastSeq+1
	}
	cons, err := r.js.OrderedConsumer(ctx, r.stream, cfg)
	if err != nil {
		return fmt.Errorf("answers of %s: %w", r.stream, err)
	}
	r.cons, r.fresh = cons, true
	return nil
}

// Fetch appends to dst the answers stored since the last call, up to max,
// waiting at most wait for the first. A failed fetch (the cluster busy,
// nothing within wait) returns its error and dst unchanged; an answer
// that does not parse returns an error wrapping ErrBadAnswer.
//
// The answers stream is only appended to, so its sequence numbers follow
// each other: a message past the next one expected means the consumer
// skipped some (an ordered consumer made again while a node of the
// cluster was down can), and the reader drops the rest of the batch and
// reads again from the first one missing, with a new consumer; so it does
// after a fetch that brought nothing while the stream holds answers past
// the last one read (see behind).
func (r *Reader) Fetch(dst []Answer, max int, wait time.Duration) ([]Answer, error) {
	batch, err := r.cons.Fetch(max, jetstream.FetchMaxWait(wait))
	if err != nil {
		return dst, r.behind(err)
	}
	got := 0
	defer func() {
		if got == 0 {
			_ = r.behind(nil)
		}
	}()
	for m := range batch.Messages() {
		got++
		a, err := ParseAnswer(m)
		if err != nil {
			return dst, err
		}
		switch {
		case a.Seq <= r.lastSeq:
			continue // the ordered consumer delivered it again
		case a.Seq > r.lastSeq+1 && !r.fresh:
			for range batch.Messages() { // let the fetch end
			}
			r.Restarts++
			r.Gaps++
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return dst, r.restart(ctx)
		}
		r.lastSeq, r.fresh = a.Seq, false
		dst = append(dst, a)
	}
	return dst, batch.Error()
}

// behind makes the consumer again when a fetch brought nothing (err, or
// no message) while the stream holds answers past the last one read: an
// ordered consumer whose server went away can stay silent. It returns err.
func (r *Reader) behind(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, serr := r.js.Stream(ctx, r.stream)
	if serr != nil || st.CachedInfo().State.LastSeq <= r.lastSeq {
		return err
	}
	r.Restarts++
	if rerr := r.restart(ctx); rerr != nil && err == nil {
		return rerr
	}
	return err
}

// LastSeq returns the stream sequence of the last answer read.
func (r *Reader) LastSeq() uint64 { return r.lastSeq }

// Summary is what Check found.
type Summary struct {
	// Answered is the number of distinct messages answered.
	Answered int
	// Repeated counts answers beyond the first of their message (answered
	// again from its idempotency record after a redelivery).
	Repeated int
	// Last is the answer that completed the set: the first answer of the
	// last message to be answered, in stream order.
	Last Answer
	// First is the first answer stored.
	First Answer
}

// Check checks that answers (in stream order) answer each of messages
// 0..n-1 with one value, and that the values of each key are exactly
// 1..(its number of messages) when the keys were incremented only by
// these n messages over keys keys: no increment lost or applied twice.
// An error wraps ErrCheck; with fewer than n messages answered and no
// other fault it wraps ErrIncomplete and says how many.
func Check(answers []Answer, n, keys int) (Summary, error) {
	var s Summary
	valueOf := make(map[int]int64, n)
	for _, a := range answers {
		if a.Corr < 0 || a.Corr >= n {
			return s, fmt.Errorf("%w: answer for message %d, outside 0..%d", ErrCheck, a.Corr, n-1)
		}
		if v, ok := valueOf[a.Corr]; ok {
			s.Repeated++
			if v != a.Value {
				return s, fmt.Errorf("%w: message %d answered %d and %d: applied twice", ErrCheck, a.Corr, v, a.Value)
			}
			continue
		}
		if want := StoreKey(a.Corr, keys); a.Key != want {
			return s, fmt.Errorf("%w: message %d answered for key %q, want %q", ErrCheck, a.Corr, a.Key, want)
		}
		if len(valueOf) == 0 {
			s.First = a
		}
		valueOf[a.Corr] = a.Value
		s.Last = a
	}
	s.Answered = len(valueOf)
	if s.Answered != n {
		return s, fmt.Errorf("%w: %d of %d", ErrIncomplete, s.Answered, n)
	}
	byKey := make(map[int][]int64, keys)
	for corr, v := range valueOf {
		byKey[corr%keys] = append(byKey[corr%keys], v)
	}
	for k, vs := range byKey {
		slices.Sort(vs)
		for i, v := range vs {
			if v != int64(i+1) {
				return s, fmt.Errorf("%w: key %s: increments answered %s, want 1..%d: an increment lost or applied twice",
					ErrCheck, StoreKey(k, keys), shorten(vs), len(vs))
			}
		}
	}
	return s, nil
}

// shorten prints vs, at most 20 of them.
func shorten(vs []int64) string {
	if len(vs) <= 20 {
		return fmt.Sprint(vs)
	}
	parts := make([]string, 0, 21)
	for _, v := range vs[:20] {
		parts = append(parts, strconv.FormatInt(v, 10))
	}
	return "[" + strings.Join(parts, " ") + fmt.Sprintf(" ... (%d values)]", len(vs))
}

// Instance is one `flowrun run` process of a flow file, in a directory of
// its own (its state directory is relative to the file, as on a machine
// of its own).
type Instance struct {
	cmd    *exec.Cmd
	logs   syncBuffer
	exited chan struct{} // closed once the process was waited for
	err    error         // its exit status, once exited is closed
}

// Start writes flowYAML to dir/flow.yaml (making dir) and starts bin (the
// flowrun command) running it from dir, `bin run [args] dir/flow.yaml`;
// its stderr is kept (Logs).
func Start(bin, dir, flowYAML string, args ...string) (*Instance, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	flowPath := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(flowPath, []byte(flowYAML), 0o644); err != nil {
		return nil, err
	}
	in := &Instance{exited: make(chan struct{})}
	in.cmd = exec.Command(bin, append(append([]string{"run"}, args...), flowPath)...)
	in.cmd.Dir = dir
	in.cmd.Stderr = &in.logs
	if err := in.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s run %s: %w", bin, flowPath, err)
	}
	go func() {
		in.err = in.cmd.Wait()
		close(in.exited)
	}()
	return in, nil
}

// Pid returns the process id.
func (in *Instance) Pid() int { return in.cmd.Process.Pid }

// Logs returns what the process wrote to stderr so far.
func (in *Instance) Logs() string { return in.logs.String() }

// Exited reports whether the process has exited, and how.
func (in *Instance) Exited() (bool, error) {
	select {
	case <-in.exited:
		return true, in.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process.
func (in *Instance) Signal(sig os.Signal) error { return in.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits at most timeout for the process to exit,
// then kills it. It returns the exit status, or an error saying it had
// to be killed.
func (in *Instance) Stop(timeout time.Duration) error {
	if exited, err := in.Exited(); exited {
		return err
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-in.exited:
		return in.err
	case <-t.C:
		in.Kill()
		return fmt.Errorf("pid %d did not exit within %v of SIGTERM: killed", in.Pid(), timeout)
	}
}

// Kill kills the process and waits for it.
func (in *Instance) Kill() {
	_ = in.cmd.Process.Kill()
	<-in.exited
}

// syncBuffer serialises writes to a buffer (a process's stderr copied by
// exec) and reads of it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
