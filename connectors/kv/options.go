package kv

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Defaults for Options.
const (
	DefaultNamespace       = "default"
	DefaultMaxKeyLength    = 255
	DefaultMaxValueBytes   = 4 << 20
	DefaultMaxGetAll       = 10000
	DefaultMaxScan         = 10000
	DefaultMaxBatch        = 1000
	DefaultReclaimInterval = time.Minute
	DefaultIdemRetention   = 24 * time.Hour
	// DefaultMaxResultBytes is the default of Options.MaxResultBytes: four
	// times the largest value, so that any single get succeeds with room
	// to spare, while a hostile event holds at most this much (plus the
	// copy emitted) however much it asks for.
	DefaultMaxResultBytes = 16 << 20
	// DefaultMaxKeysVisited is the default of Options.MaxKeysVisited: ten
	// full pages of scan, keys or get_all. Visiting 100,000 keys takes
	// about 10 ms on Pebble (8 ms measured for the count of a clear on a
	// loaded two-core machine): the longest one event may hold the
	// store's writer.
	DefaultMaxKeysVisited = 100000
)

// MaxDepth is the deepest nesting of arrays and objects accepted in a value.
// It bounds the recursion of canonicalisation so hostile input cannot
// exhaust the stack.
const MaxDepth = 1000

// Options configure a Connector. The zero value is usable: EnsureDefaults
// fills every unset field.
type Options struct {
	// Namespace isolates this connector's keys from those of other
	// connectors sharing the same Backend. Default DefaultNamespace.
	Namespace string
	// MaxKeyLength is the longest key, scan bound or prefix accepted,
	// counted in characters (Unicode code points). Default 255.
	MaxKeyLength int
	// MaxValueBytes is the largest value accepted, measured on its
	// canonical JSON encoding. Default 4 MiB.
	MaxValueBytes int
	// MaxGetAll is the most entries get_all returns; a prefix matching more
	// is refused with ErrTooManyEntries. Default 10000.
	MaxGetAll int
	// MaxScan is the limit of scan and keys when the command gives none,
	// and the highest limit a command may ask for. Default 10000.
	MaxScan int
	// MaxBatch is the most sub-commands one batch may hold. Default 1000.
	MaxBatch int
	// MaxResultBytes is the budget in result bytes of one event: the
	// bytes read from the store that its command returns (values of get,
	// swap, delete and cad; keys and values of scan, keys and get_all),
	// summed over every command of a batch or of one script run. A
	// command crossing it stops reading at once and fails with
	// ErrBudgetExceeded, leaving the store unchanged. Default
	// DefaultMaxResultBytes (16 MiB); flow option max_result_bytes.
	MaxResultBytes int
	// MaxKeysVisited is the budget in work of one event: the keys its
	// commands visit (each key a point read looks up, each record a scan,
	// count, keys, get_all or clear steps over, expired ones included),
	// summed like MaxResultBytes. It bounds how long one event may hold
	// the store's writer. Crossing it fails the command with
	// ErrBudgetExceeded and leaves the store unchanged. Default
	// DefaultMaxKeysVisited (100,000); flow option max_keys_visited.
	MaxKeysVisited int
	// Now is the clock deciding expiry. Default time.Now.
	Now func() time.Time
	// ReclaimInterval is how often the background janitor deletes expired
	// keys. Default one minute; a negative value disables the janitor
	// (expired keys stay invisible, their space is reclaimed only by
	// Reclaim).
	ReclaimInterval time.Duration
	// IdemRetention is how long the idempotency key of a write command
	// ("idem") is remembered: a redelivery within it is answered with the
	// recorded result and not applied again. It must outlast the longest
	// redelivery delay of the flow's source. Default 24 hours.
	IdemRetention time.Duration
	// IdemFrom, when set, is a path in the event's meta (such as
	// "message_id", which bus sources fill) whose string value becomes the
	// idempotency key of every write command that gives none; a write
	// without it is refused. Default "": only explicit "idem" keys count.
	IdemFrom string
	// InputFrom, when set, is a path in the event's meta whose value (a
	// non-negative integer, or a string of digits) is the input position
	// of the event's commands: the sequence of the message in the
	// partition's input stream. Every command notes it with its
	// transaction (kv.NoteInput), so that a backend replicating its commit
	// groups (a partition's store) records the highest one of each group
	// with it (changelog Record.Input). A missing value is 0, unknown; any
	// other value is refused. Default "": no input positions.
	InputFrom string
	// Optimistic makes Run execute its functions optimistically when the
	// Backend is a Viewer: in the caller's goroutine while the Update waits
	// for the store's writer, which then only checks their reads and
	// applies their writes (see Run). It frees the writer when several
	// flows share it and a core is idle, at the price of reading each key
	// a function uses twice. Default false: functions run in the writer.
	Optimistic bool
	// Result, when set, makes the connector enrich events instead of
	// replacing them: a path below data or meta ("data.player",
	// "meta.lookup") where each successful command's result object
	// ({"op","key","found","value", and "next" or "replayed" when the
	// out meta.kv has them}) is written into the event, which keeps its
	// data and meta otherwise (meta.kv becomes the out meta.kv). A scan
	// gives one event whose value is the array of its {"key","value"}
	// rows. Failures go to "err" as without it. Default "": the result
	// replaces the event.
	Result string
	// OnExpired, when set, is told of the expired keys each reclaim pass
	// (Reclaim, the janitor) is about to delete, a chunk at a time, before
	// it deletes them; a key is deleted only if OnExpired returned nil, so
	// it must return only once the keys are handed on for good. On an
	// error the pass stops and the keys stay (invisible) until a later
	// pass reports them again: at least once. Keys written, deleted or
	// cleared after expiring and before a pass are not reported.
	// Idempotency records are never reported. Default nil.
	OnExpired func(ctx context.Context, keys []ExpiredKey) error
	// ExpiredEvents makes the connector report its expired keys as events
	// of ExpirySource (the "expired" port of a flow) instead of running a
	// janitor: the source reclaims every ReclaimInterval. Default false.
	ExpiredEvents bool
	// Logger receives janitor failures. Default slog.Default().
	Logger *slog.Logger
	// OnCommands, when set, is told the outcome of the commands of each
	// processed slice of events: it is called once per op and outcome present
	// in the slice with the number of commands concerned, after their events are
	// emitted, from the goroutine running Process. op is the command name
	// ("get", "batch", ...) or "invalid" for an event whose command could
	// not be decoded; ok is false for commands emitted on "err". Metrics use
	// it; it must be quick. Default nil: nothing is counted.
	OnCommands func(namespace, op string, ok bool, n int)
	// AbandonFailedCommits makes a command whose commit failed (ErrCommit)
	// give its event back to the source for redelivery
	// (pipeline.Abandon) instead of emitting it on "err", when the source
	// redelivers (pipeline.Event.Redeliverable); other events still go to
	// "err". A partitioned connector sets it: there a failed commit means
	// the partition moved to another instance (its changelog append was
	// fenced), which applies the command when it is delivered again.
	// Default false.
	AbandonFailedCommits bool
}

// EnsureDefaults fills unset (zero or negative) fields with their defaults;
// a negative ReclaimInterval is kept, since it disables the janitor. The
// budgets (MaxResultBytes, MaxKeysVisited) are filled only when zero: a
// negative budget is kept for Validate to refuse, never taken as "off".
func (o *Options) EnsureDefaults() {
	if o.MaxResultBytes == 0 {
		o.MaxResultBytes = DefaultMaxResultBytes
	}
	if o.MaxKeysVisited == 0 {
		o.MaxKeysVisited = DefaultMaxKeysVisited
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.MaxKeyLength <= 0 {
		o.MaxKeyLength = DefaultMaxKeyLength
	}
	if o.MaxValueBytes <= 0 {
		o.MaxValueBytes = DefaultMaxValueBytes
	}
	if o.MaxGetAll <= 0 {
		o.MaxGetAll = DefaultMaxGetAll
	}
	if o.MaxScan <= 0 {
		o.MaxScan = DefaultMaxScan
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ReclaimInterval == 0 {
		o.ReclaimInterval = DefaultReclaimInterval
	}
	if o.IdemRetention <= 0 {
		o.IdemRetention = DefaultIdemRetention
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports options EnsureDefaults cannot make sense of: a negative
// budget. There is no way to switch a budget off; raise it instead.
func (o *Options) Validate() error {
	if o.MaxResultBytes < 0 {
		return fmt.Errorf("kv: MaxResultBytes (max_result_bytes) is %d, must be positive (raise it to allow larger results; there is no unlimited)", o.MaxResultBytes)
	}
	if _, err := parseResultPath(o.Result); err != nil {
		return err
	}
	if o.MaxKeysVisited < 0 {
		return fmt.Errorf("kv: MaxKeysVisited (max_keys_visited) is %d, must be positive (raise it to allow longer reads; there is no unlimited)", o.MaxKeysVisited)
	}
	return nil
}
