package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/internal/sharing"
)

// Pool shares one Store per cluster and key prefix among the kv connectors
// of a process, as pebblestore.Pool shares one store per directory: one
// etcd client, one lease cache, and Updates serialised across the
// connectors (each in its own namespace). Its zero value is not usable;
// use NewPool.
type Pool struct {
	stores sharing.Pool[*Store]
}

// NewPool returns an empty pool.
func NewPool() *Pool { return &Pool{} }

// poolKey names a store: its endpoints, in any order, and its prefix.
func poolKey(o *Options) string {
	eps := slices.Clone(o.Endpoints)
	slices.Sort(eps)
	return strings.Join(eps, ",") + "\x00" + o.Prefix
}

// poolConf renders the options two users of one store must agree on.
func poolConf(o *Options) string {
	return fmt.Sprintf("dial_timeout=%s request_timeout=%s tls_cert=%q tls_key=%q tls_ca=%q max_txn_ops=%d max_request_bytes=%d reads=%s",
		o.DialTimeout, o.RequestTimeout, o.CertFile, o.KeyFile, o.CAFile, o.MaxTxnOps, o.MaxRequestBytes, o.Reads)
}

// Open returns a handle on the store of opts' endpoints and prefix,
// connecting on first use. A later Open of the same store with different
// options (timeouts, TLS files, limits) is refused rather than silently
// given the first ones. Closing the handle releases it; the store closes
// when its last handle does.
func (p *Pool) Open(ctx context.Context, opts Options) (kv.Backend, error) {
	opts.EnsureDefaults()
	conf := poolConf(&opts)
	check := func(s *Store) error {
		// A pooled store keeps the options it was opened with, defaults
		// filled in as here.
		if have := poolConf(&s.opts); have != conf {
			return fmt.Errorf("etcdstore: store %v prefix %q is already open with %s, asked for %s",
				opts.Endpoints, opts.Prefix, have, conf)
		}
		return nil
	}
	s, ref, err := p.stores.Acquire(poolKey(&opts), check, func() (*Store, error) { return Open(ctx, opts) })
	if err != nil {
		return nil, err
	}
	return &handle{store: s, ref: ref}, nil
}

// handle is one user's reference to a pooled store.
type handle struct {
	store *Store
	ref   *sharing.Ref
}

var (
	_ kv.TxnLimiter = (*handle)(nil)
	_ kv.ReadHinter = (*handle)(nil)
	_ kv.ViewHinter = (*handle)(nil)
	_ kv.Viewer     = (*handle)(nil)
)

func (h *handle) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.Update(ctx, fns, errs)
}

func (h *handle) UpdateHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	return h.store.UpdateHinted(ctx, fns, hints, errs)
}

func (h *handle) View(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.View(ctx, fns, errs)
}

func (h *handle) ViewHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	return h.store.ViewHinted(ctx, fns, hints, errs)
}

func (h *handle) MaxTxnWrites() int { return h.store.MaxTxnWrites() }

func (h *handle) Close() error {
	err := h.ref.Release()
	if errors.Is(err, sharing.ErrReleased) {
		return ErrClosed
	}
	return err
}
