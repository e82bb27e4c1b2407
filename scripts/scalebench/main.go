// Command scalebench measures a partitioned flow against the same flow
// unpartitioned and on the etcd backend, in one run (docs/scaling.md,
// "Scale-out figures").
//
//	go run ./scripts/scalebench [flags]
//
// It starts (or uses, when already running) the three-node JetStream
// cluster of scripts/nats-cluster.sh on -nats-base and the etcd cluster of
// scripts/etcd-cluster.sh on -etcd-base, builds flowrun, publishes
// -events increments over -keys keys to the partition subjects of one
// input stream (and -etcd-events to a second one for the etcd flow), then
// runs the increment flow of internal/incrflow, each time from a fresh
// state and fresh consumers, rounds alternating:
//
//   - partitioned: a kv connector of -partitions partitions with its
//     changelog on the cluster, fed by a partitions_of source, with 1, 2
//     and 3 `flowrun run` instances (-instances);
//   - pebble: the same flow unpartitioned on a local Pebble store, one
//     instance, consuming the same partition subjects;
//   - etcd: the same flow on the etcd backend, one instance;
//   - bare: no flowrun: the partitioned flow's NATS traffic (the same
//     consumers on the same input, an answer per message, changelog
//     appends of the same count and bytes) driven by a plain nats.go
//     client in this process (bare.go): the rate and the servers' CPU per
//     event the broker alone allows on this machine.
//
// Each run is timed from the start of its processes until every message
// is answered (by the answers' broker timestamps), and every answer is
// checked (each increment applied once). CPU time is read from
// /proc/PID/stat of each flowrun process, and of the NATS and etcd
// servers, when the last answer is in. The table (stdout; -json for JSON)
// gives events/s and CPU µs/event per flow over all rounds, and the
// ratios: partitioned against etcd, partitioned with N instances against
// 1, partitioned with 1 instance against unpartitioned (the changelog's
// cost), bare against etcd and partitioned against bare (the broker's
// ceiling); and what each flow stored on the broker per event. Progress goes to stderr,
// with, after each partitioned run, what its instances logged of their
// partitions until the last answer (Ownership: take-overs, owners that
// lost their lease, partitions given back); -logs DIR keeps their logs. Clusters it started are stopped at the
// end; exit code 1 on a failed run, 2 on bad flags.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: parse args, set the clusters up, bench, print.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "scalebench:", err)
		return 2
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "scalebench: "+format+"\n", a...) }

	nats, err := startCluster(ctx, natsCluster(opts.Root, opts.NATSBase), logf)
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer nats.stop(logf)
	var etcd *cluster
	if opts.wants(storeEtcd) {
		if etcd, err = startCluster(ctx, etcdCluster(opts.Root, opts.EtcdBase), logf); err != nil {
			logf("%v", err)
			return 1
		}
		defer etcd.stop(logf)
		opts.EtcdEndpoints = etcd.urls
		opts.EtcdPids = etcd.pids
	}
	opts.NATSURLs, opts.NATSPids = nats.urls, nats.pids

	rep, err := Run(ctx, opts, logf)
	if err != nil {
		logf("%v", err)
		return 1
	}
	if opts.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			logf("%v", err)
			return 1
		}
		return 0
	}
	rep.Print(stdout)
	return 0
}
