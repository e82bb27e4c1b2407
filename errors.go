package flowrun

import (
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
)

// Errors returned by Store and Namespace, for errors.Is. They are the kv
// connector's and the Pebble store's own errors: a command fails here with
// the error its event would carry in meta.error in a flow, wrapped with
// the namespace, the key and the limit involved.
var (
	// ErrClosed reports a command on a closed Store.
	ErrClosed = pebblestore.ErrClosed
	// ErrFailed reports a store that refuses all work after a failed
	// commit or sync; reopen it to recover.
	ErrFailed = pebblestore.ErrFailed
	// ErrCommit reports a failed commit: no command of the call took
	// effect.
	ErrCommit = kv.ErrCommit
	// ErrInvalidKey reports an empty key or one that is not valid UTF-8.
	ErrInvalidKey = kv.ErrInvalidKey
	// ErrKeyTooLong reports a key longer than StoreOptions.MaxKeyLength.
	ErrKeyTooLong = kv.ErrKeyTooLong
	// ErrInvalidJSON reports a value that is not valid JSON.
	ErrInvalidJSON = kv.ErrInvalidJSON
	// ErrNullValue reports a null or empty value; Delete removes a key.
	ErrNullValue = kv.ErrNullValue
	// ErrValueTooLarge reports a value larger than
	// StoreOptions.MaxValueBytes.
	ErrValueTooLarge = kv.ErrValueTooLarge
	// ErrInvalidCommand reports a bad argument, such as a negative TTL or
	// page size.
	ErrInvalidCommand = kv.ErrInvalidCommand
	// ErrCASMismatch reports a CompareAndSet or CompareAndDelete whose
	// expected value differs from the current one.
	ErrCASMismatch = kv.ErrCASMismatch
	// ErrNotNumber reports an increment of a value that is not a number
	// (or, for Increment, not an integer).
	ErrNotNumber = kv.ErrNotNumber
	// ErrOverflow reports an increment whose result does not fit an int64
	// or a finite float64.
	ErrOverflow = kv.ErrOverflow
	// ErrTooManyEntries reports a GetAll matching more than
	// StoreOptions.MaxGetAll keys, or a page size above
	// StoreOptions.MaxScan.
	ErrTooManyEntries = kv.ErrTooManyEntries
	// ErrBudgetExceeded reports a call reading more than
	// StoreOptions.MaxResultBytes or visiting more than
	// StoreOptions.MaxKeysVisited keys; nothing of it is applied.
	ErrBudgetExceeded = kv.ErrBudgetExceeded
	// ErrPartitionNotReady reports, from OpenStore, a directory of a kv
	// connector with partitions: the connector's dir (holding p000,
	// p001, ...) or one partition's directory. A partition's state lives
	// in its changelog and the local copy may be stale or partial, so it
	// is never opened directly; send kv commands to the running flow
	// instead (see docs/kv.md, Partitions).
	ErrPartitionNotReady = kv.ErrPartitionNotReady
)
