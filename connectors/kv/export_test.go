package kv

import "context"

// RunStats counts how Run treated its functions, for tests.
type RunStats struct {
	// Kept counts optimistic runs whose reads validated; Reruns those run
	// again in the writer; Pessimistic those run only in the writer.
	Kept, Reruns, Pessimistic int
}

// RunObserved is Run with the Update submitted only after the whole
// optimistic phase, between called in that gap (when not nil), returning
// how each function was treated.
func (c *Connector) RunObserved(ctx context.Context, fns []func(s *Session) error, between func()) ([]error, RunStats, error) {
	h := &runHooks{sequential: true, between: between}
	errs, err := c.run(ctx, fns, h)
	return errs, RunStats{Kept: h.kept, Reruns: h.reruns, Pessimistic: h.pessimistic}, err
}
