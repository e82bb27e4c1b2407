package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/flows"
)

type repartitionFlags struct {
	node       string
	partitions int
	dryRun     bool
	json       bool
	stopWait   time.Duration
	workDir    string
}

func newRepartitionCommand(e env) *cobra.Command {
	var f repartitionFlags
	cmd := &cobra.Command{
		Use:   "repartition FLOW.yaml --node NAME --partitions M",
		Short: "Move a stopped partitioned kv connector's state to another partition count",
		Long: `Move the state of the partitioned kv connector NAME of a flow from the
partition count recorded with its changelogs to M partitions, offline: every
instance of the flow must be stopped (a live lease refuses it).

Each old partition is restored from its changelog into a temporary store
(under --work-dir), and each live key is written, with its value and expiry,
to the changelog of its new partition: new streams, verified by restoring
them, then the group's recorded count is switched to M in one write, and the
old streams are deleted. Stopped before the switch, the flow is as it was
(at the old count); after it, at M. Idempotency records are copied to every
new partition their commands can fall into, so redeliveries stay idempotent.

Input still waiting in the partition subjects of a partitions_of nats source
of the flow (messages not consumed or not acknowledged) refuses it: run the
flow until its input is consumed, stop it, then re-partition. Change the
count of a repartition stage (a nats sink with partitions) and of producers
publishing to partition subjects to M as well.

Then start the flow with partitions: M; the old count is refused. With
--dry-run nothing is written: it reads every partition and prints what it
would do. Prints a summary on stdout, or with --json one JSON object
(from, to, keys, keys_to, expired, idempotency, idempotency_copies,
idempotency_conflicts, streams, removed, dry_run). Progress goes to stderr.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.node == "" {
				return usageError{errors.New("--node is required: the name of the partitioned kv connector")}
			}
			if f.partitions == 0 {
				return usageError{errors.New("--partitions is required: the new partition count")}
			}
			ctx, stop := signalContext(cmd.Context(), e)
			defer stop()
			return runRepartition(ctx, e, args[0], f)
		},
	}
	cmd.Flags().StringVar(&f.node, "node", "", "name of the partitioned kv connector in the flow (required)")
	cmd.Flags().IntVar(&f.partitions, "partitions", 0, "new partition count, 1 to 1000 (required)")
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "read every partition and print what would be done; write nothing")
	cmd.Flags().BoolVar(&f.json, "json", false, "print the result as one JSON object")
	cmd.Flags().DurationVar(&f.stopWait, "stop-wait", 30*time.Second, "how long to wait for the leases of stopped instances to lapse (longer than the flow's lease_ttl)")
	cmd.Flags().StringVar(&f.workDir, "work-dir", "", "directory for the temporary stores (default the system's temporary directory); needs room for the state twice")
	return cmd
}

func runRepartition(ctx context.Context, e env, path string, f repartitionFlags) error {
	flow, err := loadFlow(e, path)
	if err != nil {
		return err
	}
	node, ok := flow.Node(f.node)
	if !ok || node.Spec == nil || node.Spec.Type != "kv" {
		return usageError{fmt.Errorf("flow %s has no kv connector %q", flow.Name, f.node)}
	}
	urls, opts, err := partitioned.RepartitionSpec(flow.Name, node.Config)
	if err != nil {
		return fmt.Errorf("flow %s: %w", flow.Name, err)
	}
	nc, err := nats.Connect(urls, nats.Name("flowrun repartition "+flow.Name), nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("changelog: connect to %s: %w", urls, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("changelog: %w", err)
	}
	opts.JetStream = js
	opts.Partitions = f.partitions
	opts.DryRun = f.dryRun
	opts.StopWait = f.stopWait
	opts.WorkDir = f.workDir
	opts.Logger = newLogger(e)
	opts.CheckInput = inputCheck(flow, f.node)
	res, err := partitioned.Repartition(ctx, opts)
	if err != nil {
		return err
	}
	if f.json {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	verb := "moved"
	if res.DryRun {
		verb = "would move"
	}
	fmt.Fprintf(e.stdout, "group %s: %s %d keys from %d to %d partitions (keys per new partition: %v); %d expired records left out; %d idempotency records, %d copies written, %d conflicts\n",
		res.Group, verb, res.Keys, res.From, res.To, res.KeysTo, res.Expired, res.Idempotency, res.IdempotencyCopies, res.IdempotencyConflicts)
	if !res.DryRun {
		fmt.Fprintf(e.stdout, "new changelogs: %s\nremoved: %s\nstart the flow with partitions: %d\n",
			strings.Join(res.Streams, " "), strings.Join(res.Removed, " "), res.To)
	}
	return nil
}

// inputCheck returns the check of the input waiting for the partitions of
// node: the backlog of every nats source of flow with partitions_of:
// node, on its own server.
func inputCheck(flow *flows.Flow, node string) func(context.Context, int) error {
	return func(ctx context.Context, count int) error {
		for _, n := range flow.Nodes {
			if n.Spec == nil || n.Spec.Type != "nats" || n.Config.String("partitions_of") != node {
				continue
			}
			durable := n.Config.String("durable")
			if durable == "" {
				durable = bus.StreamName(flow.Name + "_" + n.Name) // as the source defaults it
			}
			base := n.Config.String("subject")
			nc, err := nats.Connect(n.Config.String("url"), nats.Name("flowrun repartition "+flow.Name), nats.Timeout(5*time.Second))
			if err != nil {
				return fmt.Errorf("source %q: connect to %s: %w", n.Name, n.Config.String("url"), err)
			}
			js, err := jetstream.New(nc)
			var backlog map[int]uint64
			if err == nil {
				backlog, err = bus.PartitionBacklog(ctx, js, base, n.Config.String("stream"), durable, count)
			}
			nc.Close()
			if err != nil {
				return fmt.Errorf("source %q: %w", n.Name, err)
			}
			if err := bus.BacklogError(n.Name, base, backlog); err != nil {
				return err
			}
		}
		return nil
	}
}
