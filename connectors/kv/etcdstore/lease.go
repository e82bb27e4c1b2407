package etcdstore

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxLeaseTTL is etcd's longest lease, in seconds: records expiring later
// get no lease.
const maxLeaseTTL = 9_000_000_000

// minBucketMs is the width of the finest expiry bucket: every record
// expiring within the same second shares one lease.
const minBucketMs = 1000

// bucketShift sets how coarse the bucket of a far expiry is: its width is
// the power-of-two multiple of a second just above remaining/2^bucketShift,
// so etcd deletes a record at most about remaining/16 after its expiry
// while a long TTL does not need a lease per second.
const bucketShift = 5

// lease is one granted lease, reused for the bucket it was granted for.
type lease struct {
	id clientv3.LeaseID
	// until is when etcd may revoke it at the earliest (Unix ms): the
	// grant's TTL counted from before the grant was requested.
	until int64
}

// leaseCache maps the end of each expiry bucket (Unix ms) to its lease.
type leaseCache struct {
	byEnd map[int64]lease
	// grants counts leases granted, for tests.
	grants int
}

func (c *leaseCache) reset() { clear(c.byEnd) }

// bucketEnd returns the end of the expiry bucket of exp, seen remaining
// milliseconds before it.
func bucketEnd(exp, remaining int64) int64 {
	w := int64(minBucketMs)
	for w<<bucketShift < remaining {
		w <<= 1
	}
	return (exp + w - 1) / w * w
}

// leaseFor returns the lease a record expiring at exp (Unix ms) is
// attached to, granting one for its bucket when none is cached, or
// NoLease when the record gets none (already expired, or beyond etcd's
// longest lease). It runs under s.mu.
func (s *Store) leaseFor(ctx context.Context, exp int64) (clientv3.LeaseID, error) {
	now := s.opts.Now().UnixMilli()
	remaining := exp - now
	if remaining <= 0 {
		return clientv3.NoLease, nil
	}
	end := bucketEnd(exp, remaining)
	if l, ok := s.leases.byEnd[end]; ok && l.until >= end {
		return l.id, nil
	}
	ttl := (end-now+999)/1000 + 1 // whole seconds, one spare
	if ttl > maxLeaseTTL {
		return clientv3.NoLease, nil
	}
	for e, l := range s.leases.byEnd {
		if e < now || l.until < now {
			delete(s.leases.byEnd, e)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	resp, err := s.client.Grant(rctx, ttl)
	if err != nil {
		return clientv3.NoLease, fmt.Errorf("etcdstore: granting a %ds lease for records expiring at %d: %w", ttl, exp, err)
	}
	s.leases.grants++
	// etcd may raise a short TTL to its minimum, never lower it.
	s.leases.byEnd[end] = lease{id: resp.ID, until: now + resp.TTL*1000}
	return resp.ID, nil
}

func isLeaseNotFound(err error) bool {
	return err != nil && strings.Contains(err.Error(), "requested lease not found")
}
