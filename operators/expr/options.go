package expr

import (
	"crypto/rand"
	"fmt"
	"io"
	"time"
)

// DefaultMaxStringBytes is the default Options.MaxStringBytes: 1 MiB. An
// expression builds small values (keys, commands, labels); larger texts
// are the work of a lua processor, whose own bound is 4 MiB.
const DefaultMaxStringBytes = 1 << 20

// Options configure what the functions of an expression depend on beyond
// the event: the clock, the randomness of uuid() and the size bound of the
// strings they build. The zero value gives the defaults.
type Options struct {
	// Now is the clock of now() and now_s(); expressions never read the
	// time any other way, so a fixed clock makes a replay deterministic.
	// It is called once per call of now() or now_s(), possibly from
	// several goroutines. Default time.Now.
	Now func() time.Time
	// Rand is the randomness of uuid(): 16 bytes are read per call,
	// possibly from several goroutines. Default crypto/rand.Reader.
	Rand io.Reader
	// MaxStringBytes bounds the result of the functions that build strings
	// and arrays (concat, join, replace, split, lower, upper, to_string,
	// format_time): a larger result is an evaluation error
	// wrapping ErrTooLarge. Zero means DefaultMaxStringBytes; negative is
	// invalid.
	MaxStringBytes int
}

// EnsureDefaults fills unset fields with their defaults.
func (o *Options) EnsureDefaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.MaxStringBytes == 0 {
		o.MaxStringBytes = DefaultMaxStringBytes
	}
}

// Validate reports an invalid option; it wraps ErrInvalidOptions.
func (o *Options) Validate() error {
	if o.MaxStringBytes < 0 {
		return fmt.Errorf("%w: MaxStringBytes is %d, want 0 (default %d) or more", ErrInvalidOptions, o.MaxStringBytes, DefaultMaxStringBytes)
	}
	return nil
}
