package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
)

func newValidateCommand(e env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "validate FLOW.yaml...",
		Short: "Check flow files without running them",
		Long: `Check flow files without running them: YAML syntax, connector and operator
types, their options and ranges, ${NAME} variables, expressions, Lua
scripts (read and compiled), links, cycles: every check run makes before
it opens anything, so a file validate accepts gets as far as opening its
stores and connections. Each problem is printed as
FILE:LINE:COL: SEVERITY: FIELD: MESSAGE. Exits 1 when any file has an error;
warnings alone exit 0.

With --json, stdout holds one JSON object per diagnostic and nothing else,
always with these fields:
  {"file": "flow.yaml", "line": 4, "col": 3, "field": "connectors.store",
   "severity": "warning", "message": "..."}
line and col are 0 when unknown, field is "" for the whole file, severity
is "error" or "warning".`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			reg := builtin.NewRegistry()
			failed := false
			var all []flows.Diagnostic
			for _, path := range args {
				diags := flows.Validate(path, reg)
				for _, d := range diags {
					if d.Severity == flows.Error {
						failed = true
					}
				}
				all = append(all, diags...)
			}
			if asJSON {
				enc := json.NewEncoder(e.stdout)
				for _, d := range all {
					if err := enc.Encode(d); err != nil {
						return err
					}
				}
			} else {
				for _, d := range all {
					fmt.Fprintln(e.stdout, d.String())
				}
			}
			if failed {
				return exitError{exitFail}
			}
			if !asJSON {
				fmt.Fprintf(e.stderr, "%d file(s) ok\n", len(args))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per diagnostic: file, line, col, field, severity, message")
	return cmd
}
