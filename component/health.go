package component

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// ErrNotReady reports a process some of whose components are not ready:
// a bus source or sink not connected to its broker, say.
var ErrNotReady = errors.New("not ready")

// Health is the readiness of the components of a process: each reports
// under its own name whether it is ready, and /ready endpoints (the
// metrics address, http_server) answer from Err. It is safe for
// concurrent use; the zero value has every component ready.
type Health struct {
	mu   sync.Mutex
	down map[string]error
}

// healthKey holds the Health shared by the builds of one set of
// Resources.
var healthKey = NewKey[*Health]("component.Health")

// HealthOf returns the Health of the components built with r, creating it
// on first use.
func HealthOf(r *Resources) *Health {
	return healthKey.Shared(r, func() *Health { return &Health{} })
}

// Set records name as ready (err nil) or as not ready for the reason err.
func (h *Health) Set(name string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		delete(h.down, name)
		return
	}
	if h.down == nil {
		h.down = map[string]error{}
	}
	h.down[name] = err
}

// Err returns nil when every component is ready, and otherwise an error
// matching ErrNotReady that names each component not ready (sorted) with
// its reason.
func (h *Health) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.down) == 0 {
		return nil
	}
	names := make([]string, 0, len(h.down))
	for n := range h.down {
		names = append(names, n)
	}
	sort.Strings(names)
	errs := make([]error, 0, len(names)+1)
	errs = append(errs, ErrNotReady)
	for _, n := range names {
		errs = append(errs, fmt.Errorf("%s: %w", n, h.down[n]))
	}
	return errors.Join(errs...)
}
