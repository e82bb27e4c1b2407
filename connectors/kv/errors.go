package kv

import "errors"

// Errors reported by the kv connector. Each failed command's meta.error is
// one of them wrapped with the command, the key and the limit involved;
// callers of the Go API test them with errors.Is.
var (
	// ErrUnknownCommand reports a meta.kv object naming no known command.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrInvalidCommand reports a malformed command: meta.kv missing or not
	// an object, two commands in one object, a field the command does not
	// accept, or a field of the wrong type.
	ErrInvalidCommand = errors.New("invalid command")
	// ErrInvalidKey reports a key that is empty, not a string or not valid
	// UTF-8.
	ErrInvalidKey = errors.New("invalid key")
	// ErrKeyTooLong reports a key longer than Options.MaxKeyLength
	// characters.
	ErrKeyTooLong = errors.New("key too long")
	// ErrInvalidJSON reports a payload or field value that is not valid
	// JSON, or nests deeper than MaxDepth.
	ErrInvalidJSON = errors.New("invalid JSON")
	// ErrValueTooLarge reports a value whose canonical encoding exceeds
	// Options.MaxValueBytes.
	ErrValueTooLarge = errors.New("value too large")
	// ErrNullValue reports a null value given to put, swap or cas; delete
	// is the way to remove a key.
	ErrNullValue = errors.New("null value (use delete to remove a key)")
	// ErrCASMismatch reports a cas or cad whose expected value differs from
	// the current one; the err event's meta.kv.current holds the current
	// value.
	ErrCASMismatch = errors.New("compare mismatch")
	// ErrNotNumber reports an increment of a stored value that is not a
	// JSON number.
	ErrNotNumber = errors.New("stored value is not a number")
	// ErrOverflow reports an increment whose result does not fit an int64
	// (or is not a finite float).
	ErrOverflow = errors.New("numeric overflow")
	// ErrTooManyEntries reports a get_all matching more than
	// Options.MaxGetAll keys, a limit above Options.MaxScan, or a batch
	// longer than Options.MaxBatch.
	ErrTooManyEntries = errors.New("too many entries")
	// ErrIdemConflict reports a command whose idempotency key ("idem") was
	// recorded, within the retention, for a different command: answering
	// with that command's result would be wrong, and applying it would
	// break the key's promise.
	ErrIdemConflict = errors.New("idempotency key reused")
	// ErrBudgetExceeded reports an event whose commands read more than
	// Options.MaxResultBytes of results or visited more than
	// Options.MaxKeysVisited keys; the message names the budget, its
	// option and how far the command got. Nothing of the event is applied.
	ErrBudgetExceeded = errors.New("budget exceeded")
	// ErrCommit reports a backend commit failure; every command of the
	// failed Update is reported with it and none took effect.
	ErrCommit = errors.New("commit failed")
	// ErrPartitionNotReady reports a command of a partitioned connector
	// whose partition this process does not serve (yet): another
	// instance owns it, or it is being restored from its changelog. The
	// message names the partition and its state. Events a source
	// redelivers are given back instead (pipeline.Abandon); others wait
	// up to partition_wait before failing with it.
	ErrPartitionNotReady = errors.New("partition not ready")
	// ErrCrossPartition reports a batch whose elements' keys fall into
	// different partitions of a partitioned connector: it is refused
	// rather than applied without its atomicity.
	ErrCrossPartition = errors.New("keys in different partitions")
	// ErrReadOnly reports a write attempted in a Viewer.View transaction.
	ErrReadOnly = errors.New("write in a read-only transaction")
)
