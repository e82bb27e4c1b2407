package kv

import (
	"context"
	"strconv"
)

// Backend is the storage seam under the kv command set: an ordered byte-key
// store with per-key expiry and atomic, serialised read-modify-write
// transactions. The command logic (connectors/kv) is written only against
// Backend and Txn, so every backend runs the same conformance table.
//
// Backends know nothing of namespaces, JSON or commands: keys and values are
// opaque bytes laid out by the command layer.
type Backend interface {
	// Update runs fns in order, serialised with every other Update on the
	// same backend. Each fn is atomic on its own: fn sees the writes of every
	// fn before it (in this call or earlier ones); when fn returns an error,
	// none of its writes are applied and errs[i] holds that error.
	//
	// Update returns once the writes of every successful fn are committed
	// under the backend's durability policy (by default synced to disk). A
	// non-nil return means the commit failed: then no fn of this call took
	// effect, whatever errs says. errs must have len(fns) entries.
	Update(ctx context.Context, fns []TxnFunc, errs []error) error

	// Close waits for committed writes to be durable and releases the store.
	Close() error
}

// Viewer is implemented by backends that can run read-only transactions
// without queueing them behind writes. The connector uses it for a slice
// of events whose commands only read.
type Viewer interface {
	// View runs fns, which must only read, in order. Each fn observes at
	// least every write of every Update that returned before View was
	// called. View returns only once every write any fn may have observed
	// is committed under the backend's durability policy, so a result
	// built from a read is never lost while the write it saw survives. A
	// write through the Txn fails with ErrReadOnly. View is safe to call
	// concurrently with Update and with other View calls; errs must have
	// len(fns) entries. A non-nil return means the reads cannot be
	// trusted (the store failed or closed), whatever errs says.
	View(ctx context.Context, fns []TxnFunc, errs []error) error
}

// TxnFunc is one atomic unit of work run by Backend.Update.
type TxnFunc func(tx Txn) error

// Txn is the read-write view a TxnFunc has of the store. Reads observe every
// write made before them, including earlier writes of the same TxnFunc.
// Byte slices passed to Txn methods may be reused by the caller after the
// call returns; slices returned by Get and passed to Scan's callback are
// valid only until the next Txn call (copy them to keep them) and must not
// be modified: they may be the store's own memory.
type Txn interface {
	// Get returns the value stored at key and its expiry (Unix
	// milliseconds, 0 for none). Expired records are returned too: the
	// command layer decides visibility with its own clock.
	Get(key []byte) (value []byte, expireAt int64, found bool, err error)
	// Set stores value at key with the given expiry (0: never expires).
	Set(key, value []byte, expireAt int64) error
	// Delete removes key; deleting an absent key is not an error.
	Delete(key []byte) error
	// DeleteRange removes every key in [start, end) without reading them.
	DeleteRange(start, end []byte) error
	// Scan calls fn for each record with start <= key < end, in byte order,
	// until fn returns false or an error. A nil end means no upper bound.
	Scan(start, end []byte, fn func(key, value []byte, expireAt int64) (bool, error)) error
}

// TxnLimiter is implemented by Backends that bound how many keys one
// TxnFunc may write or delete (etcd caps the operations of a transaction).
// Work the command layer splits over several TxnFuncs of its own accord,
// such as reclaiming expired records, is cut to fit; a command that needs
// more writes than the limit fails with the backend's error.
type TxnLimiter interface {
	// MaxTxnWrites returns the most keys one TxnFunc may write or delete;
	// zero or less means no limit.
	MaxTxnWrites() int
}

// ReadHinter is implemented by Backends whose reads each cost a network
// round trip (etcd). UpdateHinted is Update told, for each fn, the keys it
// is expected to Get (hints[i] for fns[i], nil for none), so the backend
// can fetch the keys of a whole group in one request before running the
// fns. Hints change only speed: a fn may read other keys or fewer, and
// every read still observes what the fns before it wrote.
type ReadHinter interface {
	UpdateHinted(ctx context.Context, fns []TxnFunc, hints [][][]byte, errs []error) error
}

// ViewHinter is implemented by Viewers whose reads each cost a network
// round trip (etcd). ViewHinted is View told, for each fn, the keys it is
// expected to Get (hints[i] for fns[i], nil for none), as UpdateHinted is
// for Update, so the backend can fetch the keys of many fns in one
// request. Hints change only speed.
type ViewHinter interface {
	ViewHinted(ctx context.Context, fns []TxnFunc, hints [][][]byte, errs []error) error
}

// HintedSubmitter is implemented by Submitters that can use read hints:
// SubmitHinted is Submit told, for each fn, the keys it is expected to Get
// (hints[i] for fns[i], nil for none), as UpdateHinted is for Update, so a
// backend whose reads are local can look a whole batch of them up at once
// (pebblestore: its row cache's slots and entries fetched from memory in
// parallel) before running the fns. Hints change only speed; they belong
// to the backend, as fns do, until wait returns.
type HintedSubmitter interface {
	SubmitHinted(ctx context.Context, fns []TxnFunc, hints [][][]byte, errs []error) (wait func() error)
}

// Submitter is implemented by Backends that can queue an Update without
// waiting for its commit, so a caller can prepare its next work while the
// previous commit is being synced. Submit queues fns exactly as Update
// would and returns at once; wait blocks until their outcome and returns
// what Update would have returned. fns and errs belong to the backend until
// wait returns. Submissions from one goroutine are applied in the order
// they were made, after every Update or Submit that returned before.
type Submitter interface {
	Submit(ctx context.Context, fns []TxnFunc, errs []error) (wait func() error)
}

// WriteOp is the kind of a Write: which Txn method made it.
type WriteOp uint8

// Write kinds.
const (
	WriteSet         WriteOp = 1 // Txn.Set(Key, Value, ExpireAt)
	WriteDelete      WriteOp = 2 // Txn.Delete(Key)
	WriteDeleteRange WriteOp = 3 // Txn.DeleteRange(Key, End)
)

// String returns the Txn method the WriteOp stands for.
func (o WriteOp) String() string {
	switch o {
	case WriteSet:
		return "set"
	case WriteDelete:
		return "delete"
	case WriteDeleteRange:
		return "delete_range"
	}
	return "write_op(" + strconv.Itoa(int(o)) + ")"
}

// Write is one write a transaction made, as Txn received it: the store's
// keys, values as given to Set, ExpireAt in Unix milliseconds (0: never
// expires). Backends that replicate their commit groups describe them as
// Writes (pebblestore.Replicator), and replaying them in order through
// Txn reproduces the store's contents.
type Write struct {
	Op       WriteOp
	Key      []byte // for WriteDeleteRange, the start of the range
	End      []byte // WriteDeleteRange only: the range is [Key, End)
	Value    []byte // WriteSet only
	ExpireAt int64  // WriteSet only
}

// InputNoter is implemented by the Txn of backends that replicate their
// commit groups together with the input position they cover (a
// partition's Pebble store, docs/scaling.md).
type InputNoter interface {
	// NoteInput records that the transaction applies a command read at
	// input position pos (the partition's input stream sequence): the
	// replica of the transaction's commit group carries the highest
	// position noted by its successful transactions.
	NoteInput(pos uint64)
}

// NoteInput tells tx's backend that the transaction applies the command
// read at input position pos; it does nothing when the backend does not
// record input positions (InputNoter) or pos is 0 (unknown).
func NoteInput(tx Txn, pos uint64) {
	if n, ok := tx.(InputNoter); ok && pos != 0 {
		n.NoteInput(pos)
	}
}
