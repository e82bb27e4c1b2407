package etcdstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/flowrun/flowrun/connectors/kv"
)

// Pool shares one Store per cluster and key prefix among the kv connectors
// of a process, as pebblestore.Pool shares one store per directory: one
// etcd client, one lease cache, and Updates serialised across the
// connectors (each in its own namespace). Its zero value is not usable;
// use NewPool.
type Pool struct {
	mu     sync.Mutex
	stores map[string]*pooled
}

type pooled struct {
	store *Store
	conf  string // the options that must agree between users
	refs  int
}

// NewPool returns an empty pool.
func NewPool() *Pool { return &Pool{stores: map[string]*pooled{}} }

// poolKey names a store: its endpoints, in any order, and its prefix.
func poolKey(o *Options) string {
	eps := slices.Clone(o.Endpoints)
	slices.Sort(eps)
	return strings.Join(eps, ",") + "\x00" + o.Prefix
}

// poolConf renders the options two users of one store must agree on.
func poolConf(o *Options) string {
	return fmt.Sprintf("dial_timeout=%s request_timeout=%s tls_cert=%q tls_key=%q tls_ca=%q max_txn_ops=%d max_request_bytes=%d",
		o.DialTimeout, o.RequestTimeout, o.CertFile, o.KeyFile, o.CAFile, o.MaxTxnOps, o.MaxRequestBytes)
}

// Open returns a handle on the store of opts' endpoints and prefix,
// connecting on first use. A later Open of the same store with different
// options (timeouts, TLS files, limits) is refused rather than silently
// given the first ones. Closing the handle releases it; the store closes
// when its last handle does.
func (p *Pool) Open(ctx context.Context, opts Options) (kv.Backend, error) {
	opts.EnsureDefaults()
	key, conf := poolKey(&opts), poolConf(&opts)
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.stores[key]; ok {
		if e.conf != conf {
			return nil, fmt.Errorf("etcdstore: store %v prefix %q is already open with %s, asked for %s",
				opts.Endpoints, opts.Prefix, e.conf, conf)
		}
		e.refs++
		return &handle{pool: p, key: key, store: e.store}, nil
	}
	s, err := Open(ctx, opts)
	if err != nil {
		return nil, err
	}
	p.stores[key] = &pooled{store: s, conf: conf, refs: 1}
	return &handle{pool: p, key: key, store: s}, nil
}

func (p *Pool) release(key string) error {
	p.mu.Lock()
	e, ok := p.stores[key]
	if !ok {
		p.mu.Unlock()
		return ErrClosed
	}
	e.refs--
	if e.refs > 0 {
		p.mu.Unlock()
		return nil
	}
	delete(p.stores, key)
	p.mu.Unlock()
	return e.store.Close()
}

// handle is one user's reference to a pooled store.
type handle struct {
	pool   *Pool
	key    string
	store  *Store
	mu     sync.Mutex
	closed bool
}

var _ kv.TxnLimiter = (*handle)(nil)

func (h *handle) Update(ctx context.Context, fns []kv.TxnFunc, errs []error) error {
	return h.store.Update(ctx, fns, errs)
}

func (h *handle) UpdateHinted(ctx context.Context, fns []kv.TxnFunc, hints [][][]byte, errs []error) error {
	return h.store.UpdateHinted(ctx, fns, hints, errs)
}

func (h *handle) MaxTxnWrites() int { return h.store.MaxTxnWrites() }

func (h *handle) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrClosed
	}
	h.closed = true
	h.mu.Unlock()
	return h.pool.release(h.key)
}
