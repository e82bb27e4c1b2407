package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/flows"
)

func newRunCommand(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run FLOW.yaml",
		Short: "Run a flow until its sources end or a signal arrives",
		Long: `Run a flow until its sources end or SIGINT/SIGTERM arrives. On the first
signal the sources stop, every event already read is processed, the store is
flushed and flowrun exits 0. A second signal forces an immediate exit (1).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context(), e)
			defer stop()
			return runFlow(ctx, e, args[0])
		},
	}
	return cmd
}

// signalContext returns a context cancelled by the first SIGINT or SIGTERM;
// a second one exits the process at once.
func signalContext(parent context.Context, e env) (context.Context, func()) {
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(e.stderr, "flowrun: %v: draining in-flight events (send again to force exit)\n", sig)
			cancel()
		case <-ctx.Done():
			return
		}
		if sig, ok := <-sigs; ok {
			fmt.Fprintf(e.stderr, "flowrun: %v again: exiting without draining\n", sig)
			os.Exit(exitFail)
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		cancel()
	}
}

func newLogger(e env) *slog.Logger {
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func runFlow(ctx context.Context, e env, path string) error {
	logger := newLogger(e)
	flow, err := loadFlow(e, path)
	if err != nil {
		return err
	}
	pool := pebblestore.NewPool()
	built, err := flow.Build(ctx, flows.BuildOptions{
		Stdin:  e.stdin,
		Stdout: e.stdout,
		Stores: pool,
		Logger: logger,
	})
	if err != nil {
		return err
	}
	start := time.Now()
	logger.Info("flow started", "flow", flow.Name, "file", path)
	if err := built.Run(ctx); err != nil {
		return fmt.Errorf("flow %s: %w", flow.Name, err)
	}
	logger.Info("flow stopped", "flow", flow.Name, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// loadFlow loads and validates a flow file, printing its diagnostics to
// stderr. Errors in the file are a failure (exit 1), not a usage error.
func loadFlow(e env, path string) (*flows.Flow, error) {
	flow, diags, err := flows.Load(path, flows.NewRegistry())
	for _, d := range diags {
		fmt.Fprintln(e.stderr, d.String())
	}
	if err != nil {
		if len(diags) > 0 {
			return nil, exitError{exitFail}
		}
		return nil, err
	}
	return flow, nil
}
