package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Flows the bench runs (-flows).
const (
	storePartitioned = "partitioned"
	storePebble      = "pebble"
	storeEtcd        = "etcd"
	// storeBare is the partitioned flow's NATS traffic without flowrun
	// (bare.go): the broker's ceiling.
	storeBare = "bare"
	// storeBareNoAck and storeBareNoLog are the bare flow without one
	// part of that traffic, to measure its share: a consumer that
	// expects no acknowledgements (none sent), no changelog appends.
	storeBareNoAck = "bare-noack"
	storeBareNoLog = "bare-nolog"
)

// isBare reports whether flow is the bare flow or one of its parts.
func isBare(flow string) bool {
	return flow == storeBare || flow == storeBareNoAck || flow == storeBareNoLog
}

// Options are the bench's settings; the flags set them.
type Options struct {
	// Events increments over Keys keys go through the partitioned and
	// pebble flows; EtcdEvents (fewer: the etcd flow is slower; rates are
	// compared) through the etcd flow.
	Events, Keys, EtcdEvents int
	// Partitions of the partitioned flow.
	Partitions int
	// Instances are the numbers of `flowrun run` instances the
	// partitioned flow runs with, one run each per round.
	Instances []int
	// Flows are the flows to run: partitioned, pebble, etcd, bare.
	Flows []string
	// BareGroup is the most input messages one changelog append of the
	// bare flow covers (its groups are what arrives while the previous
	// append is in flight, as the store's), and BareRecordBytes the
	// changelog record's bytes per message: what the partitioned flow
	// appends. The report gives every flow's changelog bytes per event
	// and events per append, to compare.
	BareGroup, BareRecordBytes int
	// Rounds: every flow runs once per round, in an order rotated each
	// round, so that the machine's changing load falls on all alike.
	Rounds int
	// Window of the flows' sources.
	Window int
	// NoIdem leaves idem_from: message_id out of the flows.
	NoIdem bool
	// Timeout bounds one run, from its start until every answer is in.
	Timeout time.Duration
	// Flowrun is the flowrun binary; empty: built from Root.
	Flowrun string
	// Root is the repository (for scripts/ and building flowrun).
	Root string
	// Work is where the instances' directories go; empty: a temporary
	// directory, removed at the end.
	Work string
	// NATSBase and EtcdBase are the clusters' port bases
	// (scripts/nats-cluster.sh BASE, FLOWRUN_ETCD_PORT_BASE).
	NATSBase, EtcdBase int
	// JSON prints the report as JSON.
	JSON bool
	// CPUProfiles, when set, is a directory where each flowrun instance
	// writes a CPU profile of its run (flowrun run --cpuprofile), named
	// by its flow and instance: sbXXXXr1p1-i1.prof.
	CPUProfiles string
	// Logs, when set, is a directory where each flowrun instance's
	// stderr is kept once its run ends, named as the CPU profiles:
	// sbXXXXr1p1-i1.log.
	Logs string

	// Set by the command once the clusters are up: their URLs and the
	// servers' pids (whose CPU is reported; none: not reported).
	NATSURLs, EtcdEndpoints string
	NATSPids, EtcdPids      []int
}

// defaultOptions are the flags' defaults: the figures of docs/scaling.md.
func defaultOptions() Options {
	return Options{
		Events: 100_000, Keys: 10_000, EtcdEvents: 10_000,
		Partitions: 12, Instances: []int{1, 2, 3},
		Flows: []string{storePartitioned, storePebble, storeEtcd, storeBare},
		// At the defaults the partitioned flow's changelog streams hold
		// one message per 22 events (its records, about 70 events each,
		// and the 256 fence messages of each partition's take-over) and
		// 155 bytes per event (as the broker counts them); the bare flow
		// stores the same with these (the report gives both).
		BareGroup: 22, BareRecordBytes: 150,
		Rounds:  3,
		Window:  256,
		Timeout: 10 * time.Minute,
		Root:    ".",
		// The scripts' own defaults.
		NATSBase: 24222, EtcdBase: 23790,
	}
}

// wants reports whether flow store is among those to run.
func (o Options) wants(store string) bool { return slices.Contains(o.Flows, store) }

// Validate checks the options.
func (o Options) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"-events", o.Events}, {"-keys", o.Keys}, {"-etcd-events", o.EtcdEvents}, {"-partitions", o.Partitions},
		{"-rounds", o.Rounds}, {"-window", o.Window}, {"-nats-base", o.NATSBase}, {"-etcd-base", o.EtcdBase},
		{"-bare-group", o.BareGroup}, {"-bare-record-bytes", o.BareRecordBytes}} {
		if f.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", f.name, f.v))
		}
	}
	if o.Keys > o.Events || o.wants(storeEtcd) && o.Keys > o.EtcdEvents {
		errs = append(errs, fmt.Errorf("-keys (%d) must not exceed -events (%d) or -etcd-events (%d): every key is incremented", o.Keys, o.Events, o.EtcdEvents))
	}
	if len(o.Flows) == 0 {
		errs = append(errs, errors.New("-flows names no flow"))
	}
	if slices.ContainsFunc(o.Flows, isBare) && o.NoIdem {
		errs = append(errs, errors.New("-no-idem: the bare flow's changelog bytes are the flow's with idem_from; run it without -no-idem"))
	}
	if o.wants(storePartitioned) && len(o.Instances) == 0 {
		errs = append(errs, errors.New("-instances names no count"))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("-timeout must be positive, got %v", o.Timeout))
	}
	return errors.Join(errs...)
}

// parseFlags parses the command line into Options, checked.
func parseFlags(args []string, stderr io.Writer) (Options, error) {
	o := defaultOptions()
	fs := flag.NewFlagSet("scalebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./scripts/scalebench [flags]\n\n"+
			"Throughput and CPU per event of the increment flow: partitioned with each\n"+
			"number of -instances, unpartitioned on Pebble, and on etcd, and of the\n"+
			"partitioned flow's NATS traffic driven without flowrun (bare), in alternating\n"+
			"rounds, on the clusters of scripts/nats-cluster.sh and scripts/etcd-cluster.sh\n"+
			"(started when not running). See docs/scaling.md.\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&o.Events, "events", o.Events, "increments through the partitioned and pebble flows")
	fs.IntVar(&o.Keys, "keys", o.Keys, "distinct keys the increments are spread over")
	fs.IntVar(&o.EtcdEvents, "etcd-events", o.EtcdEvents, "increments through the etcd flow")
	fs.IntVar(&o.Partitions, "partitions", o.Partitions, "partitions of the partitioned flow")
	instances := fs.String("instances", joinInts(o.Instances), "instance counts of the partitioned flow, comma-separated")
	flows := fs.String("flows", strings.Join(o.Flows, ","), "flows to run, comma-separated: partitioned, pebble, etcd, bare; bare-noack, bare-nolog")
	fs.IntVar(&o.BareGroup, "bare-group", o.BareGroup, "bare flow: input messages per changelog append, at most")
	fs.IntVar(&o.BareRecordBytes, "bare-record-bytes", o.BareRecordBytes, "bare flow: changelog record bytes per input message")
	fs.IntVar(&o.Rounds, "rounds", o.Rounds, "rounds; each runs every flow once, the order rotated")
	fs.IntVar(&o.Window, "window", o.Window, "the sources' window")
	fs.BoolVar(&o.NoIdem, "no-idem", false, "leave idem_from: message_id out of the flows")
	fs.DurationVar(&o.Timeout, "timeout", o.Timeout, "bound on one run")
	fs.StringVar(&o.Flowrun, "flowrun", "", "flowrun binary (default: built from -root)")
	fs.StringVar(&o.Root, "root", o.Root, "the flowrun repository")
	fs.StringVar(&o.Work, "work", "", "directory for the instances' state (default: a temporary one, removed)")
	fs.IntVar(&o.NATSBase, "nats-base", o.NATSBase, "port base of the NATS cluster (scripts/nats-cluster.sh start BASE)")
	fs.IntVar(&o.EtcdBase, "etcd-base", o.EtcdBase, "port base of the etcd cluster (FLOWRUN_ETCD_PORT_BASE of scripts/etcd-cluster.sh)")
	fs.BoolVar(&o.JSON, "json", false, "print the report as JSON")
	fs.StringVar(&o.CPUProfiles, "cpuprofiles", "", "write each flowrun instance's CPU profile to `DIR` (flowrun run --cpuprofile)")
	fs.StringVar(&o.Logs, "logs", "", "keep each flowrun instance's stderr in `DIR`")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.Instances, err = parseInstances(*instances); err != nil {
		return o, err
	}
	if o.Flows, err = parseFlows(*flows); err != nil {
		return o, err
	}
	return o, o.Validate()
}

// parseInstances reads "1,2,3": distinct positive counts, in order.
func parseInstances(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-instances: %q is not a positive count", f)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("-instances: %d given twice", n)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseFlows reads "partitioned,pebble,etcd,bare": known flows, each once.
func parseFlows(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		switch f {
		case storePartitioned, storePebble, storeEtcd, storeBare, storeBareNoAck, storeBareNoLog:
		default:
			return nil, fmt.Errorf("-flows: unknown flow %q: want %s, %s, %s, %s, %s or %s", f,
				storePartitioned, storePebble, storeEtcd, storeBare, storeBareNoAck, storeBareNoLog)
		}
		if slices.Contains(out, f) {
			return nil, fmt.Errorf("-flows: %s given twice", f)
		}
		out = append(out, f)
	}
	return out, nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
