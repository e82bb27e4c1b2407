package partitioned

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/operators/expr"
)

// This file declares partitions for flow files: Backend gives the pebble
// backend of the kv connector its Partitioned hook.

// Backend returns b (the pebble backend, pebblestore.Backend()) able to
// build partitioned connectors: a config setting partitions builds a
// Connector whose partitions are Pebble stores with b's store options
// (sync, max_group, max_delay, row_cache) under dir.
func Backend(b kv.BackendSpec) kv.BackendSpec {
	check := b.Check
	b.Check = func(c *component.Config) error {
		if check != nil {
			if err := check(c); err != nil {
				return err
			}
		}
		if !c.Has("partitions") {
			return nil
		}
		_, err := specOptions(c)
		return err
	}
	b.Partitioned = build
	return b
}

// changelogKeys are the keys of the changelog option.
var changelogKeys = []string{"urls", "replicas", "fail_fast"}

// specConfig is what a config gives beyond the kv options.
type specConfig struct {
	urls     string
	opts     Options
	keySrc   string
	replicas int
	failFast bool // the build fails when no changelog server answers
}

// specOptions reads and checks the partition options of c.
func specOptions(c *component.Config) (specConfig, error) {
	sc := specConfig{}
	cl := c.Map("changelog")
	if cl == nil {
		return sc, component.OptionErr("changelog", errors.New(`required with partitions: {urls: "${FLOWRUN_NATS_CLUSTER_URLS}", replicas: 3}`))
	}
	var unknown []string
	for k := range cl {
		if !containsString(changelogKeys, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return sc, component.OptionErr("changelog", fmt.Errorf("unknown key %q (keys: %s)", unknown[0], strings.Join(changelogKeys, ", ")))
	}
	sc.urls = strings.TrimSpace(cl["urls"])
	if sc.urls == "" {
		return sc, component.OptionErr("changelog", errors.New(`urls is required: the NATS cluster's client URLs, comma-separated (urls: "${FLOWRUN_NATS_CLUSTER_URLS}")`))
	}
	sc.replicas = DefaultReplicas
	if r, ok := cl["replicas"]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || (n != 1 && n != 3 && n != 5) {
			return sc, component.OptionErr("changelog", fmt.Errorf("replicas is %q, must be 1, 3 or 5", r))
		}
		sc.replicas = n
	}
	if f, ok := cl["fail_fast"]; ok {
		b, err := strconv.ParseBool(strings.TrimSpace(f))
		if err != nil {
			return sc, component.OptionErr("changelog", fmt.Errorf("fail_fast is %q, must be true or false", f))
		}
		sc.failFast = b
	}
	if g := c.String("group"); g != "" && !validToken(g) {
		return sc, component.OptionErr("group", fmt.Errorf("%q must be letters, digits, '_', '-' or '.'", g))
	}
	if in := c.String("instance"); in != "" && !validToken(in) || strings.Contains(c.String("instance"), ".") {
		return sc, component.OptionErr("instance", fmt.Errorf("%q must be letters, digits, '_' or '-'", c.String("instance")))
	}
	sc.keySrc = c.String("partition_key")
	sc.opts = Options{
		Partitions: c.Int("partitions"),
		Dir:        c.String("dir"),
		Group:      c.String("group"),
		Instance:   c.String("instance"),
		Replicas:   sc.replicas,
		LeaseTTL:   c.Duration("lease_ttl"),
		Wait:       c.Duration("partition_wait"),

		CheckpointEvery: c.ByteSize("checkpoint_every"),
	}
	if sc.opts.Wait == 0 {
		sc.opts.Wait = -1 // partition_wait: 0 does not wait
	}
	if err := partition.CheckCount(sc.opts.Partitions); err != nil {
		return sc, component.OptionErr("partitions", err)
	}
	return sc, nil
}

func validToken(s string) bool {
	for _, r := range s {
		if !(r == '_' || r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return s != ""
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// groupsKey holds the groups claimed by the connectors of a process: two
// connectors on one group would compete for its partitions.
var groupsKey = component.NewKey[*claims]("partitioned groups")

type claims struct {
	mu sync.Mutex
	m  map[string]string // group -> node
}

func (cl *claims) claim(group, node string) (release func(), err error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if other, ok := cl.m[group]; ok {
		return nil, fmt.Errorf("group %q is already used by connector %q in this process: give one of them another group", group, other)
	}
	cl.m[group] = node
	return func() {
		cl.mu.Lock()
		delete(cl.m, group)
		cl.mu.Unlock()
	}, nil
}

// build is the pebble backend's Partitioned hook.
func build(ctx context.Context, env *component.Env, c *component.Config, kopts kv.Options) (component.Component, error) {
	sc, err := specOptions(c)
	if err != nil {
		return component.Component{}, err
	}
	opts := sc.opts
	if opts.Group == "" {
		opts.Group = env.Flow
	}
	opts.Dir = component.StoreDir(env.Resources, opts.Dir)
	opts.KV = kopts
	opts.Store = pebblestore.SpecOptions(env, c)
	opts.Logger = env.Logger
	opts.Board = partition.BoardOf(env.Resources, c.Node)
	if sc.keySrc != "" {
		x, err := expr.ParseWith(sc.keySrc, expr.Options{Now: component.Clock(env.Resources)})
		if err != nil {
			return component.Component{}, component.OptionErr("partition_key", err)
		}
		opts.PartitionKey = x
	}
	release, err := groupsKey.Shared(env.Resources, func() *claims { return &claims{m: map[string]string{}} }).claim(opts.Group, c.Node)
	if err != nil {
		return component.Component{}, component.OptionErr("group", err)
	}
	// Servers unreachable at start are waited for, as bus sources wait
	// for their brokers: nats.go keeps trying (every ReconnectWait).
	// With fail_fast the build fails instead.
	var dialErr atomic.Pointer[error] // the last connection attempt's failure
	copts := []nats.Option{nats.Name("flowrun " + env.Flow + " " + c.Node), nats.MaxReconnects(-1), nats.Timeout(5 * time.Second)}
	nc, err := nats.Connect(sc.urls, copts...)
	if err != nil && !sc.failFast {
		first := err
		dialErr.Store(&first)
		nc, err = nats.Connect(sc.urls, append(copts, nats.RetryOnFailedConnect(true),
			nats.ReconnectErrHandler(func(_ *nats.Conn, err error) { dialErr.Store(&err) }))...)
	}
	if err != nil {
		release()
		return component.Component{}, fmt.Errorf("changelog: connect to %s: %w", sc.urls, err)
	}
	lastErr := func() error {
		if p := dialErr.Load(); p != nil {
			return *p
		}
		return nil
	}
	if err := awaitConnected(ctx, nc, c.Node, sc.urls, lastErr, component.HealthOf(env.Resources), env.Logger); err != nil {
		nc.Close()
		release()
		return component.Component{}, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		release()
		return component.Component{}, fmt.Errorf("changelog: %w", err)
	}
	opts.JetStream = js
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := New(cctx, opts)
	if err != nil {
		nc.Close()
		release()
		return component.Component{}, err
	}
	return component.Component{Processor: &ownedConn{Connector: conn, close: func() { nc.Close(); release() }}}, nil
}

// awaitReport is how often awaitConnected logs that it is still waiting.
const awaitReport = 30 * time.Second

// awaitConnected returns once nc is connected to one of the changelog's
// servers (urls), or ctx's error wrapped when ctx ends first. While it
// waits, node is reported not ready on health, and the wait is logged at
// once and every awaitReport, with lastErr's failure of the last attempt.
func awaitConnected(ctx context.Context, nc *nats.Conn, node, urls string, lastErr func() error, health *component.Health, logger *slog.Logger) error {
	if nc.IsConnected() {
		return nil
	}
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	unreachable := fmt.Errorf("changelog: no NATS server of %s reachable", urls)
	health.Set(node, unreachable)
	t := time.NewTicker(awaitReport)
	defer t.Stop()
	start := time.Now()
	for !nc.IsConnected() {
		logger.Warn("changelog servers unreachable, waiting for them", "node", node, "urls", urls,
			"waited", time.Since(start).Round(time.Second), "error", lastErr())
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", unreachable, ctx.Err())
		case <-ch:
		case <-t.C:
		}
		if nc.IsClosed() {
			return fmt.Errorf("%w: the connection was closed", unreachable)
		}
	}
	health.Set(node, nil)
	logger.Info("changelog servers reached", "node", node, "url", nc.ConnectedUrlRedacted(), "waited", time.Since(start).Round(time.Millisecond))
	return nil
}

// ownedConn is a Connector built from a config: closing it closes the
// NATS connection it made.
type ownedConn struct {
	*Connector
	close func()
}

func (o *ownedConn) Close(ctx context.Context) error {
	err := o.Connector.Close(ctx)
	o.close()
	return err
}

// RepartitionSpec reads, from the config of a partitioned kv connector of
// flow, what re-partitioning it needs: the changelog cluster's URLs, and
// RepartitionOptions with Group (the group option, or flow), Replicas and
// PartitionKey set; the caller sets JetStream and Partitions. A connector
// without partitions is refused.
func RepartitionSpec(flow string, c *component.Config) (urls string, opts RepartitionOptions, err error) {
	if !c.Has("partitions") {
		return "", opts, fmt.Errorf("kv connector %q declares no partitions: there is nothing to re-partition", c.Node)
	}
	sc, err := specOptions(c)
	if err != nil {
		return "", opts, err
	}
	opts = RepartitionOptions{Group: sc.opts.Group, Replicas: sc.replicas}
	if opts.Group == "" {
		opts.Group = flow
	}
	if sc.keySrc != "" {
		x, err := expr.Parse(sc.keySrc)
		if err != nil {
			return "", opts, component.OptionErr("partition_key", err)
		}
		opts.PartitionKey = x
	}
	return sc.urls, opts, nil
}
