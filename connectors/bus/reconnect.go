package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/flowrun/flowrun/component"
)

// Defaults for Reconnect.
const (
	// DefaultReconnectInitial is the longest first wait before connecting
	// again.
	DefaultReconnectInitial = 100 * time.Millisecond
	// DefaultReconnectMax bounds every wait between connection attempts.
	DefaultReconnectMax = 10 * time.Second
)

// ErrDisconnected reports a bus connection that was lost, or could not be
// made, while Reconnect.FailFast was set.
var ErrDisconnected = errors.New("disconnected from the broker")

// ErrPermanent marks a failure that retrying cannot mend (a message the
// broker refuses for its size, say): wrap it with Permanent so that a
// Sink reports it at once instead of retrying.
var ErrPermanent = errors.New("permanent failure")

// Permanent returns err marked so that errors.Is(err, ErrPermanent).
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// Reconnect says how a bus connector behaves when its broker cannot be
// reached, at start or later: it retries with exponential backoff and full
// jitter (every wait uniform in [0, min(Max, Initial×2^n)]), reporting
// itself not ready meanwhile, or with FailFast it fails at once.
type Reconnect struct {
	// Initial bounds the first wait. Default DefaultReconnectInitial.
	Initial time.Duration
	// Max bounds every wait. Default DefaultReconnectMax.
	Max time.Duration
	// FailFast fails instead of retrying: the build fails when the broker
	// is unreachable at start, and the flow fails when it goes away.
	FailFast bool
	// Jitter returns a random duration in [0, d]. Default uniform from
	// math/rand/v2. Tests set it to be deterministic.
	Jitter func(d time.Duration) time.Duration
}

// EnsureDefaults fills unset fields with their defaults.
func (r *Reconnect) EnsureDefaults() {
	if r.Initial <= 0 {
		r.Initial = DefaultReconnectInitial
	}
	if r.Max <= 0 {
		r.Max = DefaultReconnectMax
	}
	if r.Max < r.Initial {
		r.Max = r.Initial
	}
	if r.Jitter == nil {
		r.Jitter = func(d time.Duration) time.Duration {
			if d <= 0 {
				return 0
			}
			return rand.N(d + 1)
		}
	}
}

// Backoff returns the wait before attempt n+1 after n failures (n from 0):
// full jitter over min(Max, Initial×2^n). r must have its defaults.
func (r Reconnect) Backoff(n int) time.Duration {
	d := r.Initial
	for i := 0; i < n && d < r.Max; i++ {
		d *= 2
	}
	return r.Jitter(min(d, r.Max))
}

// Retry calls try until it returns nil or a Permanent error, ctx ends, or
// (FailFast) it fails once. While it fails, health (when not nil) reports
// name not ready with try's error, and each failure is logged; once it
// succeeds name is ready again. The error returned is try's last error
// (wrapping ErrDisconnected under FailFast), or ctx's.
func (r Reconnect) Retry(ctx context.Context, name string, health *component.Health, logger *slog.Logger, try func(context.Context) error) error {
	r.EnsureDefaults()
	if logger == nil {
		logger = slog.Default()
	}
	for n := 0; ; n++ {
		err := try(ctx)
		if err == nil {
			if health != nil {
				health.Set(name, nil)
			}
			if n > 0 {
				logger.Info("connected to the broker", "node", name, "attempts", n+1)
			}
			return nil
		}
		if errors.Is(err, ErrPermanent) {
			return err
		}
		if health != nil {
			health.Set(name, err)
		}
		if r.FailFast {
			if errors.Is(err, ErrDisconnected) {
				return err
			}
			return fmt.Errorf("%w (fail_fast): %w", ErrDisconnected, err)
		}
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		wait := r.Backoff(n)
		logger.Warn("broker unreachable, retrying", "node", name, "attempt", n+1, "wait", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Dial connects to a broker and subscribes to topic: msgs are the messages
// of that one connection, closed when it is lost (or when release is
// called), and release frees the connection. A message taken from msgs is
// acked or nacked on the connection it came from; one settled after its
// connection was lost is redelivered by the broker.
type Dial func(ctx context.Context, topic string) (msgs <-chan *message.Message, release func() error, err error)

// ReconnectingSubscriber is a message.Subscriber over a Dial that connects
// again, with Reconnect's backoff, whenever its connection is lost or
// cannot be made, reporting the node not ready meanwhile: a flow reading
// from it pauses while the broker is away and resumes by itself. With
// FailFast the first connection is made in Subscribe (its failure is
// Subscribe's error), and losing it ends the subscription with Err set.
type ReconnectingSubscriber struct {
	name   string
	dial   Dial
	r      Reconnect
	health *component.Health
	logger *slog.Logger

	buffer int // room in the channel Subscribe returns

	mu      sync.Mutex
	err     error
	cancels []context.CancelFunc
	wg      sync.WaitGroup
}

// NewReconnectingSubscriber returns a subscriber for the node name. health
// may be nil.
func NewReconnectingSubscriber(name string, dial Dial, r Reconnect, health *component.Health, logger *slog.Logger) *ReconnectingSubscriber {
	r.EnsureDefaults()
	if logger == nil {
		logger = slog.Default()
	}
	return &ReconnectingSubscriber{name: name, dial: dial, r: r, health: health, logger: logger}
}

// WithBuffer gives the channels Subscribe returns room for n messages
// (none by default), so that a connection's messages are handed on in
// runs rather than one synchronous handoff each; call it before
// Subscribe. Messages still in the buffer when the subscription ends are
// neither acked nor nacked: they are left to the broker, which redelivers
// them as it does a message of a lost connection. It returns s.
func (s *ReconnectingSubscriber) WithBuffer(n int) *ReconnectingSubscriber {
	s.buffer = max(n, 0)
	return s
}

// Subscribe implements message.Subscriber: the channel it returns carries
// the messages of every connection in turn and is closed once ctx ends or
// Close is called (or, with FailFast, the connection is lost).
func (s *ReconnectingSubscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	ctx, cancel := context.WithCancel(ctx)
	var first <-chan *message.Message
	var release func() error
	if s.r.FailFast {
		msgs, rel, err := s.dial(ctx, topic)
		if err != nil {
			cancel()
			if s.health != nil {
				s.health.Set(s.name, err)
			}
			return nil, fmt.Errorf("%w (fail_fast): %w", ErrDisconnected, err)
		}
		first, release = msgs, rel
	}
	out := make(chan *message.Message, s.buffer)
	s.mu.Lock()
	s.cancels = append(s.cancels, cancel)
	s.mu.Unlock()
	s.wg.Add(1)
	go s.run(ctx, topic, first, release, out)
	return out, nil
}

// run forwards the messages of each connection to out, dialing again
// after a connection is lost.
func (s *ReconnectingSubscriber) run(ctx context.Context, topic string, msgs <-chan *message.Message, release func() error, out chan<- *message.Message) {
	defer s.wg.Done()
	defer close(out)
	for {
		if msgs == nil {
			err := s.r.Retry(ctx, s.name, s.health, s.logger, func(ctx context.Context) error {
				var err error
				msgs, release, err = s.dial(ctx, topic)
				return err
			})
			if err != nil {
				if ctx.Err() == nil {
					s.setErr(err)
				}
				return
			}
		}
		if s.health != nil {
			s.health.Set(s.name, nil)
		}
		lost := s.forward(ctx, msgs, out)
		if release != nil {
			if err := release(); err != nil && lost {
				s.logger.Warn("releasing a lost connection", "node", s.name, "error", err)
			}
		}
		msgs, release = nil, nil
		if !lost {
			return
		}
		err := fmt.Errorf("%w: connection lost", ErrDisconnected)
		if s.health != nil {
			s.health.Set(s.name, err)
		}
		if s.r.FailFast {
			s.setErr(fmt.Errorf("%w (fail_fast)", err))
			return
		}
		s.logger.Warn("connection to the broker lost, reconnecting", "node", s.name)
	}
}

// forward hands msgs to out until msgs closes (lost: true) or ctx ends.
func (s *ReconnectingSubscriber) forward(ctx context.Context, msgs <-chan *message.Message, out chan<- *message.Message) (lost bool) {
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return ctx.Err() == nil
			}
			select {
			case out <- m:
			case <-ctx.Done():
				m.Nack()
				return false
			}
		case <-ctx.Done():
			return false
		}
	}
}

func (s *ReconnectingSubscriber) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// Err returns the error that ended a subscription by itself (FailFast and
// the connection lost), or nil.
func (s *ReconnectingSubscriber) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends every subscription, releases their connections and waits
// until their channels are closed.
func (s *ReconnectingSubscriber) Close() error {
	s.mu.Lock()
	cancels := s.cancels
	s.cancels = nil
	s.mu.Unlock()
	for _, c := range cancels {
		c()
	}
	s.wg.Wait()
	if s.health != nil {
		s.health.Set(s.name, nil)
	}
	return nil
}
