package kv

import (
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
	// Optimistic makes Run execute its functions optimistically when the
	// Backend is a Viewer: in the caller's goroutine while the Update waits
	// for the store's writer, which then only checks their reads and
	// applies their writes (see Run). It frees the writer when several
	// flows share it and a core is idle, at the price of reading each key
	// a function uses twice. Default false: functions run in the writer.
	Optimistic bool
	// Logger receives janitor failures. Default slog.Default().
	Logger *slog.Logger
	// OnCommands, when set, is told the outcome of the commands of each
	// processed batch: it is called once per op and outcome present in the
	// batch with the number of commands concerned, after their events are
	// emitted, from the goroutine running Process. op is the command name
	// ("get", "batch", ...) or "invalid" for an event whose command could
	// not be decoded; ok is false for commands emitted on "err". Metrics use
	// it; it must be quick. Default nil: nothing is counted.
	OnCommands func(namespace, op string, ok bool, n int)
}

// EnsureDefaults fills unset (zero or negative) fields with their defaults;
// a negative ReclaimInterval is kept, since it disables the janitor.
func (o *Options) EnsureDefaults() {
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
