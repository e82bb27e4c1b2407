// Command flowrun runs, replays and validates flowrun flows.
//
// Usage:
//
//	flowrun run FLOW.yaml
//	flowrun replay FLOW.yaml INPUT.jsonl
//	flowrun validate FLOW.yaml...
//	flowrun test [PATH...]
//	flowrun kv get|scan|count|keys|put|delete|increment|dump|load|check DIR ...
//	flowrun repartition FLOW.yaml --node NAME --partitions M [--dry-run]
//	flowrun docs
//	flowrun --version
//
// Exit codes: 0 success, 1 failure, 2 bad usage. Results go to stdout;
// diagnostics, progress and summaries go to stderr.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/logs"
)

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError marks errors caused by how the command was invoked.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError carries an exit code for a failure already reported.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// env is what a command sees of the process, so tests can run commands
// in-process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// stderrIsTerminal turns on progress bars.
	stderrIsTerminal bool
	// progressEvery is the period of plain progress lines when stderr is
	// not a terminal. Default progressInterval.
	progressEvery time.Duration
	// log holds the logging flags, shared by every command; execute sets
	// it.
	log *logSettings
}

// logSettings are the persistent logging flags and the logger built from
// them before a command runs.
type logSettings struct {
	level, format string
	logger        *slog.Logger
}

func main() {
	e := env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, stderrIsTerminal: isTerminal(os.Stderr)}
	os.Exit(execute(e, os.Args[1:]))
}

// execute runs the CLI with args and returns the exit code.
func execute(e env, args []string) int {
	if e.log == nil {
		e.log = &logSettings{}
	}
	if e.progressEvery <= 0 {
		e.progressEvery = progressInterval
	}
	root := newRootCommand(e)
	root.SetArgs(args)
	err := root.Execute()
	var ee exitError
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue), strings.HasPrefix(err.Error(), "unknown command"):
		// cobra reports an unknown verb as a plain error.
		fmt.Fprintf(e.stderr, "flowrun: %v\n", err)
		fmt.Fprintln(e.stderr, "Run 'flowrun --help' for usage.")
		return exitUsage
	default:
		var wl *pebblestore.WALLossError
		if e.log.jsonFormat() && e.log.logger != nil {
			attrs := []any{"error", err.Error()}
			if errors.As(err, &wl) {
				attrs = append(attrs, "hint", fmt.Sprintf("the store was left untouched; after copying %s aside, open it without the damaged records with: flowrun kv check --accept-wal-loss %s", wl.Dir, wl.Dir))
			}
			e.log.logger.Error("flowrun failed", attrs...)
			return exitFail
		}
		fmt.Fprintf(e.stderr, "flowrun: %v\n", err)
		if errors.As(err, &wl) {
			fmt.Fprintf(e.stderr, "flowrun: the store was left untouched. After copying %s aside, open it without the damaged records with:\n  flowrun kv check --accept-wal-loss %s\n",
				wl.Dir, wl.Dir)
		}
		return exitFail
	}
}

func newRootCommand(e env) *cobra.Command {
	root := &cobra.Command{
		Use:   "flowrun",
		Short: "flowrun runs stream-processing flows with a durable key-value store",
		Long: `flowrun runs flows declared in YAML files: sources feed events through
pipelines of operators into connectors such as the Pebble-backed kv store,
whose results go to sinks.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.SetVersionTemplate("flowrun {{.Version}}\n")
	root.SetIn(e.stdin)
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&e.log.level, "log-level", "info", "least severe log lines written to stderr: "+strings.Join(logs.Levels, ", "))
	pf.StringVar(&e.log.format, "log-format", "text", "log line format: "+strings.Join(logs.Formats, ", "))
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		l, err := logs.New(e.stderr, e.log.level, e.log.format)
		if err != nil {
			return usageError{err}
		}
		e.log.logger = l
		return nil
	}
	root.AddCommand(newRunCommand(e), newReplayCommand(e), newValidateCommand(e), newBenchCommand(e),
		newKVCommand(e), newRepartitionCommand(e), newDocsCommand(e), newTestCommand(e))
	return root
}

// jsonFormat reports whether --log-format json was asked for: then every
// line flowrun writes to stderr is a JSON object.
func (l *logSettings) jsonFormat() bool {
	return l != nil && strings.EqualFold(l.format, "json")
}

// newLogger returns the logger the logging flags asked for.
func newLogger(e env) *slog.Logger {
	if e.log == nil || e.log.logger == nil {
		return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return e.log.logger
}

// exactArgs is cobra.ExactArgs reporting a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.MinimumNArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
