package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/flows/flowtest"
)

type testFlags struct {
	asJSON  bool
	run     string
	quiet   bool
	timeout time.Duration
}

func newTestCommand(e env) *cobra.Command {
	var f testFlags
	cmd := &cobra.Command{
		Use:   "test [PATH...]",
		Short: "Run the unit tests of flows (flow_test.yaml files)",
		Long: `Run the test files of flows: flow_test.yaml beside flow.yaml, or any
NAME_test.yaml (testing NAME.yaml, or the file its flow option names). Each
PATH is a test file or a directory searched recursively (DIR/... works too;
directories named testdata or starting with . or _ are skipped); no PATH
means the current directory.

Every case feeds its input events into the flow's source and compares what
each sink receives with its expect list, as exact events or as conditions
on fields; a sink the case does not list must receive nothing. Each case
runs on empty stores in a fresh temporary directory (the flow's own stores
are not opened), with the case's env variables and, when it sets now, a
fixed clock for kv expiry. The format is in docs/flows.md, "Testing flows".

One line per case, PASS or FAIL, with each difference under a failing case
(step, sink, event index, field, expected and got); the last line is
"N passed, N failed". Exits 0 when every case passes, 1 when any fails,
2 when a test file is malformed (reported as FILE:LINE:COL: error: ...) or
no test file is found.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context(), e)
			defer stop()
			return runTests(ctx, e, args, f)
		},
	}
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print one JSON object per case, then a summary object")
	cmd.Flags().StringVar(&f.run, "run", "", "run only the cases whose name matches this `REGEXP`")
	cmd.Flags().BoolVarP(&f.quiet, "quiet", "q", false, "print only failing cases and the summary")
	cmd.Flags().DurationVar(&f.timeout, "timeout", flowtest.DefaultTimeout, "fail a case still running after this long")
	return cmd
}

func runTests(ctx context.Context, e env, paths []string, f testFlags) error {
	var filter *regexp.Regexp
	if f.run != "" {
		re, err := regexp.Compile(f.run)
		if err != nil {
			return usageError{fmt.Errorf("--run: %w", err)}
		}
		filter = re
	}
	files, err := flowtest.Find(paths)
	if err != nil {
		return usageError{err}
	}
	if len(files) == 0 {
		return usageError{errors.New("no test files (flow_test.yaml, *_test.yaml) found")}
	}
	if f.timeout <= 0 {
		return usageError{fmt.Errorf("--timeout is %s: it must be positive", f.timeout)}
	}
	opts := flowtest.Options{Registry: builtin.NewRegistry(), Logger: newLogger(e), Timeout: f.timeout}
	var passed, failed int
	fileErrors := false
	enc := json.NewEncoder(e.stdout)
	enc.SetEscapeHTML(false)
	for _, path := range files {
		tf, diags, err := flowtest.ParseFile(path)
		if err != nil {
			fileErrors = true
			for _, d := range diags {
				fmt.Fprintln(e.stderr, d.String())
			}
			continue
		}
		for _, c := range tf.Cases {
			if filter != nil && !filter.MatchString(c.Name) {
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r := flowtest.RunCase(ctx, tf, c, opts)
			if r.Passed {
				passed++
			} else {
				failed++
			}
			switch {
			case f.asJSON:
				if err := enc.Encode(jsonResult{Result: r, ElapsedMS: r.Elapsed.Milliseconds()}); err != nil {
					return err
				}
			case !r.Passed || !f.quiet:
				r.WriteReport(e.stdout)
			}
		}
	}
	if f.asJSON {
		if err := enc.Encode(map[string]any{"passed": passed, "failed": failed, "file_errors": fileErrors}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "%d passed, %d failed\n", passed, failed)
	}
	switch {
	case fileErrors:
		return exitError{exitUsage}
	case failed > 0:
		return exitError{exitFail}
	}
	return nil
}

// jsonResult is one case as --json prints it.
type jsonResult struct {
	flowtest.Result
	ElapsedMS int64 `json:"elapsed_ms"`
}
