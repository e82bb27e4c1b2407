package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

func newRunCommand(e env) *cobra.Command {
	var metricsAddr, cpuprofile string
	cmd := &cobra.Command{
		Use:   "run FLOW.yaml",
		Short: "Run a flow until its sources end or a signal arrives",
		Long: `Run a flow until its sources end or SIGINT/SIGTERM arrives. On the first
signal the sources stop, every event already read is processed, the store is
flushed and flowrun exits 0. A second signal forces an immediate exit (1).

Logs go to stderr: one line when the flow starts and stops (with its event
and error totals), one per failure; events dropped on an unlinked err port
are logged one by one up to 10 per node, then counted every 10 seconds.
With --metrics-addr, Prometheus metrics are served while the flow runs; with
--cpuprofile, a CPU profile of the whole run is written when it stops.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context(), e)
			defer stop()
			if cpuprofile != "" {
				end, err := startCPUProfile(cpuprofile)
				if err != nil {
					return err
				}
				defer end()
			}
			return runFlow(ctx, e, args[0], metricsAddr)
		},
	}
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics (port 0: any free port, logged at start)")
	cmd.Flags().StringVar(&cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to `FILE` when the flow stops")
	return cmd
}

// startCPUProfile starts a CPU profile written to path; end stops it and
// closes the file.
func startCPUProfile(path string) (end func(), err error) {
	return startRecording(path, "cpu profile", pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startTrace starts an execution trace (runtime/trace) written to path;
// end stops it and closes the file.
func startTrace(path string) (end func(), err error) {
	return startRecording(path, "trace", trace.Start, trace.Stop)
}

// startRecording creates path and starts a recording of the process into
// it with start; end stops it with stop and closes the file. what names
// the recording in errors.
func startRecording(path, what string, start func(io.Writer) error, stop func()) (end func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return func() {
		stop()
		f.Close()
	}, nil
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
			if e.log.jsonFormat() {
				newLogger(e).Warn("draining in-flight events (send again to force exit)", "signal", sig.String())
			} else {
				fmt.Fprintf(e.stderr, "flowrun: %v: draining in-flight events (send again to force exit)\n", sig)
			}
			cancel()
		case <-ctx.Done():
			return
		}
		if sig, ok := <-sigs; ok {
			if e.log.jsonFormat() {
				newLogger(e).Error("exiting without draining", "signal", sig.String())
			} else {
				fmt.Fprintf(e.stderr, "flowrun: %v again: exiting without draining\n", sig)
			}
			os.Exit(exitFail)
		}
	}()
	return ctx, func() {
		signal.Stop(sigs)
		cancel()
	}
}

func runFlow(ctx context.Context, e env, path, metricsAddr string) error {
	flow, err := loadFlow(e, path)
	if err != nil {
		return err
	}
	opts := flows.BuildOptions{Stdin: e.stdin, Stdout: e.stdout}
	obs, err := newObserver(e, metricsAddr, &opts)
	if err != nil {
		return err
	}
	defer obs.close()
	built, err := flow.Build(ctx, opts)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// SIGINT or SIGTERM while connecting or taking partitions:
			// no event was accepted, so a stop is all that was asked.
			obs.logger.Log(context.Background(), obs.lifecycle, "flow stopped before it started", "flow", flow.Name)
			return nil
		}
		return err
	}
	obs.started(flow, path, built.Graph)
	runErr := built.Run(ctx)
	obs.stopped(flow.Name, built.Graph, runErr)
	if runErr != nil {
		return fmt.Errorf("flow %s: %w", flow.Name, runErr)
	}
	return nil
}

// loadFlow loads and validates a flow file, printing its diagnostics to
// stderr. Errors in the file are a failure (exit 1), not a usage error.
func loadFlow(e env, path string) (*flows.Flow, error) {
	flow, diags, err := flows.Load(path, builtin.NewRegistry())
	for _, d := range diags {
		if e.log.jsonFormat() {
			// --log-format json: every stderr line is a JSON object.
			lvl := slog.LevelWarn
			if d.Severity == flows.Error {
				lvl = slog.LevelError
			}
			newLogger(e).Log(context.Background(), lvl, d.Message,
				"file", d.File, "line", d.Line, "col", d.Col, "field", d.Field, "severity", d.Severity.String())
			continue
		}
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
