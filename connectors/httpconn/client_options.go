package httpconn

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/flowrun/flowrun/operators/expr"
)

// Defaults for ClientOptions.
const (
	// DefaultMethod is the default of ClientOptions.Method.
	DefaultMethod = http.MethodPost
	// DefaultTimeout is the default of ClientOptions.Timeout: long enough
	// for a webhook doing real work, short enough that a hung server does
	// not hold a slice of events for minutes (with the default retries, one event
	// waits at most about 4 × 5 s plus backoff).
	DefaultTimeout = 5 * time.Second
	// DefaultMaxRetries is the default of ClientOptions.MaxRetries.
	DefaultMaxRetries = 3
	// DefaultBackoffInitial is the default of ClientOptions.BackoffInitial.
	DefaultBackoffInitial = 100 * time.Millisecond
	// DefaultBackoffMax is the default of ClientOptions.BackoffMax.
	DefaultBackoffMax = 5 * time.Second
	// DefaultMaxInFlight is the default of ClientOptions.MaxInFlight.
	DefaultMaxInFlight = 64
	// DefaultMaxResponseBytes is the default of
	// ClientOptions.MaxResponseBytes, the same budget as the kv
	// connector's largest result (kv.DefaultMaxResultBytes).
	DefaultMaxResponseBytes = 16 << 20
	// MaxErrorBodyBytes is how much of a failed response's body is kept in
	// meta.http.body of the err event.
	MaxErrorBodyBytes = 1 << 10
)

// Body says what a request sends.
type Body string

// Values of ClientOptions.Body.
const (
	// BodyData sends the event's data as JSON (Content-Type
	// application/json).
	BodyData Body = "data"
	// BodyEvent sends the whole event as {"data":...,"meta":...}.
	BodyEvent Body = "event"
	// BodyNone sends no body.
	BodyNone Body = "none"
)

// ErrInvalidOption reports ClientOptions that Validate refuses; the error
// names the field.
var ErrInvalidOption = errors.New("invalid option")

// BasicAuth is a user name and password sent with HTTP basic
// authentication.
type BasicAuth struct {
	User     string
	Password string
}

// ClientOptions configure a Client. The zero value is not usable (URL is
// required); EnsureDefaults fills every other unset field and Validate
// checks the result. NewClient does both.
type ClientOptions struct {
	// Expr configures the expressions of the URL and header placeholders;
	// its Now is the clock of now() and now_s() (default time.Now).
	Expr expr.Options
	// URL is the template of the request URL: an absolute http or https
	// URL whose path, query and fragment may contain placeholders
	// {EXPR}, where EXPR is an expression of package operators/expr
	// evaluated against the event (such as {data.player} or
	// {meta.correlation}). A placeholder's value must be a string, number
	// or boolean; it is escaped with url.PathEscape in the path and
	// url.QueryEscape in the query and fragment, so it can never change
	// the scheme, host or number of path segments, and a path value of
	// "." or ".." is refused. Placeholders in the scheme or host are
	// refused by Validate. Write "{{" and "}}" for literal braces.
	// Required; flow option url (${NAME} is expanded by the flow loader).
	URL string
	// Method is the HTTP method. Default DefaultMethod (POST).
	Method string
	// Headers are sent with every request; values are templates like URL
	// (not escaped; a control character, in the template or in a
	// rendered value, is refused).
	// Content-Type defaults to application/json when a body is sent.
	Headers map[string]string
	// Body says what is sent. Default BodyData, or BodyNone for GET and
	// HEAD.
	Body Body
	// BearerToken, when set, is sent as "Authorization: Bearer TOKEN".
	BearerToken string
	// BasicAuth, when set, is sent as HTTP basic authentication. At most
	// one of BearerToken, BasicAuth and an Authorization header is given.
	BasicAuth *BasicAuth
	// Timeout bounds one attempt: connecting, sending, and reading the
	// whole response. Default DefaultTimeout (5 s).
	Timeout time.Duration
	// MaxRetries is how many times a request is tried again after a
	// connection error, a timeout, a 5xx or a 429 response. Other
	// responses are never retried. Default DefaultMaxRetries (3); set
	// NoRetry to try each request once.
	MaxRetries int
	// NoRetry tries each request exactly once, whatever MaxRetries says.
	NoRetry bool
	// BackoffInitial and BackoffMax shape the wait before retry n
	// (counting from 0): a random duration between 0 and
	// min(BackoffMax, BackoffInitial × 2^n) ("full jitter"). The
	// Retry-After header of a retried response replaces it, capped at
	// BackoffMax. Defaults
	// DefaultBackoffInitial (100 ms) and DefaultBackoffMax (5 s).
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// MaxInFlight bounds the requests one Client has in flight at once.
	// Default DefaultMaxInFlight (64).
	MaxInFlight int
	// RateLimit bounds the requests started per second (every attempt
	// counts), with bursts of RateBurst. Default 0: unlimited.
	RateLimit float64
	// RateBurst is the most requests started at once under RateLimit.
	// Default 1.
	RateBurst int
	// MaxResponseBytes is the largest response body read; a larger one
	// sends the event to err (ErrResponseTooLarge) after reading at most
	// MaxResponseBytes+1 bytes. Default DefaultMaxResponseBytes (16 MiB).
	MaxResponseBytes int64
	// Transport sends the requests. Default: a transport like
	// http.DefaultTransport (proxy from the environment) keeping up to
	// MaxInFlight idle connections per host, owned and closed by the
	// Client.
	Transport http.RoundTripper
	// Jitter returns a random duration in [0, d]; it draws the backoff
	// waits. Default: uniform from math/rand/v2's global source (which
	// is never seeded or mutated). Tests set it to be deterministic.
	Jitter func(d time.Duration) time.Duration
}

// EnsureDefaults fills unset (zero) fields with their defaults. Negative
// values are kept for Validate to refuse.
func (o *ClientOptions) EnsureDefaults() {
	if o.Method == "" {
		o.Method = DefaultMethod
	}
	if o.Body == "" {
		o.Body = BodyData
		if o.Method == http.MethodGet || o.Method == http.MethodHead {
			o.Body = BodyNone
		}
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = DefaultMaxRetries
	}
	if o.BackoffInitial == 0 {
		o.BackoffInitial = DefaultBackoffInitial
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.RateBurst == 0 {
		o.RateBurst = 1
	}
	if o.MaxResponseBytes == 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if o.Jitter == nil {
		o.Jitter = fullJitter
	}
}

// fullJitter returns a uniform random duration in [0, d].
func fullJitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// Validate reports options that cannot work, naming the field (and its
// flow option). It does not parse URL's placeholders; NewClient does.
func (o *ClientOptions) Validate() error {
	bad := func(field, option, format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		return &optionError{option: option, msg: msg,
			err: fmt.Errorf("http_client: %s (%s): %w: %s", field, option, ErrInvalidOption, msg)}
	}
	if o.URL == "" {
		return bad("URL", "url", "a URL is required")
	}
	if !httpguts.ValidHeaderFieldName(o.Method) {
		return bad("Method", "method", "%q is not a method name", o.Method)
	}
	switch o.Body {
	case BodyData, BodyEvent, BodyNone:
	default:
		return bad("Body", "body", "%q is not one of data, event, none", o.Body)
	}
	auth := 0
	for name, v := range o.Headers {
		if !httpguts.ValidHeaderFieldName(name) {
			return bad("Headers", "headers", "%q is not a header name", name)
		}
		if !httpguts.ValidHeaderFieldValue(v) {
			return bad("Headers", "headers", "the value of %s holds a control character", name)
		}
		if http.CanonicalHeaderKey(name) == "Authorization" {
			auth++
		}
	}
	if o.BearerToken != "" {
		auth++
		if !httpguts.ValidHeaderFieldValue(o.BearerToken) {
			return bad("BearerToken", "bearer_token", "the token holds a control character")
		}
	}
	if o.BasicAuth != nil {
		auth++
	}
	if auth > 1 {
		return bad("BearerToken", "bearer_token", "give at most one of bearer_token, basic_auth and an Authorization header")
	}
	if o.Timeout < 0 {
		return bad("Timeout", "timeout", "%v is negative", o.Timeout)
	}
	if o.MaxRetries < 0 {
		return bad("MaxRetries", "max_retries", "%d is negative (set NoRetry to try once)", o.MaxRetries)
	}
	if o.BackoffInitial < 0 {
		return bad("BackoffInitial", "backoff_initial", "%v is negative", o.BackoffInitial)
	}
	if o.BackoffMax < o.BackoffInitial {
		return bad("BackoffMax", "backoff_max", "%v is below backoff_initial %v", o.BackoffMax, o.BackoffInitial)
	}
	if o.MaxInFlight < 0 {
		return bad("MaxInFlight", "max_in_flight", "%d is negative", o.MaxInFlight)
	}
	if o.RateLimit < 0 {
		return bad("RateLimit", "rate_limit", "%v is negative (0 is unlimited)", o.RateLimit)
	}
	if o.RateBurst < 0 {
		return bad("RateBurst", "rate_burst", "%d is negative", o.RateBurst)
	}
	if o.MaxResponseBytes < 0 {
		return bad("MaxResponseBytes", "max_response_bytes", "%d is negative (raise it to allow larger responses; there is no unlimited)", o.MaxResponseBytes)
	}
	return nil
}
