package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv/kvtool"
	"github.com/flowrun/flowrun/pipeline"
)

func newKVCommand(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kv",
		Short: "Read, dump and load a kv store directory that no flow has open",
		Long: `Work on a kv store directory offline. The directory must not be open in a
running flow (flowrun refuses it, since Pebble allows one process per
store): stop the flow first.

get, scan, count and keys run the same commands a flow would send in
meta.kv, in the namespace given by --namespace (a kv connector's namespace
is its "namespace" option, or its flow's name). They print results as JSON
lines on stdout: the value for get, {"key","value"} per entry for scan,
the number for count, the array of keys for keys; with --json, each result
event exactly as the connector emits it ({"data","meta"}). A failed
command prints its error on stderr and exits 1.

dump prints every live key of every namespace as one JSON line
{"namespace","key","value","expire_at"} (expire_at: Unix milliseconds, or
null), and load reads such lines back (overwriting existing keys), so
  flowrun kv dump state > backup.jsonl
  flowrun kv load fresh-state < backup.jsonl
copies a store.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("kv needs a subcommand: get, scan, count, keys, dump or load")}
		},
	}
	cmd.AddCommand(newKVGetCommand(e), newKVScanCommand(e), newKVCountCommand(e), newKVKeysCommand(e),
		newKVDumpCommand(e), newKVLoadCommand(e))
	return cmd
}

// kvQuery holds the flags shared by get, scan, count and keys.
type kvQuery struct {
	namespace string
	json      bool
}

func (q *kvQuery) flags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&q.namespace, "namespace", "", "namespace to read (required; a kv connector's default is its flow's name)")
	cmd.Flags().BoolVar(&q.json, "json", false, "print each result event as the connector emits it: {\"data\",\"meta\"}")
}

// runQuery opens dir, runs one command and prints its results; render
// prints one out event in the default format.
func runQuery(ctx context.Context, e env, dir string, q kvQuery, command map[string]any, render func(pipeline.Event) error) error {
	if q.namespace == "" {
		return usageError{errors.New("--namespace is required (a kv connector's namespace is its namespace option, or its flow's name)")}
	}
	cmdJSON, err := json.Marshal(command)
	if err != nil {
		return err
	}
	s, err := kvtool.Open(dir, false)
	if err != nil {
		return err
	}
	defer s.Close()
	res, err := s.Command(ctx, q.namespace, cmdJSON, nil)
	if err != nil {
		return err
	}
	if res.Err != nil {
		return errors.New(gjson.GetBytes(res.Err.Meta, "error").String())
	}
	for _, ev := range res.Out {
		if q.json {
			if _, err := e.stdout.Write(append(ev.AppendJSON(nil), '\n')); err != nil {
				return err
			}
			continue
		}
		if err := render(ev); err != nil {
			return err
		}
	}
	return nil
}

// printData prints an event's data as one line.
func printData(e env) func(pipeline.Event) error {
	return func(ev pipeline.Event) error {
		_, err := e.stdout.Write(append(append([]byte(nil), ev.DataJSON()...), '\n'))
		return err
	}
}

func newKVGetCommand(e env) *cobra.Command {
	var q kvQuery
	cmd := &cobra.Command{
		Use:   "get DIR KEY",
		Short: "Print the value of a key (null when absent)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runQuery(cmd.Context(), e, args[0], q, map[string]any{"get": args[1]}, printData(e))
		},
	}
	q.flags(cmd)
	return cmd
}

func newKVScanCommand(e env) *cobra.Command {
	var q kvQuery
	var end string
	var limit int
	cmd := &cobra.Command{
		Use:   "scan DIR [START]",
		Short: "Print the entries from START (default: the first key) to --end, in key order",
		Args:  rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := map[string]any{"scan": optArg(args, 1)}
			if cmd.Flags().Changed("end") {
				c["end"] = end
			}
			if cmd.Flags().Changed("limit") {
				c["limit"] = limit
			}
			return runQuery(cmd.Context(), e, args[0], q, c, func(ev pipeline.Event) error {
				line := []byte(`{"key":`)
				line = append(line, gjson.GetBytes(ev.Meta, "kv.key").Raw...)
				line = append(line, `,"value":`...)
				line = append(line, ev.DataJSON()...)
				_, err := e.stdout.Write(append(line, "}\n"...))
				return err
			})
		},
	}
	q.flags(cmd)
	cmd.Flags().StringVar(&end, "end", "", "stop before this key (default: the end of the namespace)")
	cmd.Flags().IntVar(&limit, "limit", 0, "most entries to print (default: the connector's max_scan, 10000)")
	return cmd
}

func newKVCountCommand(e env) *cobra.Command {
	var q kvQuery
	cmd := &cobra.Command{
		Use:   "count DIR [PREFIX]",
		Short: "Print the number of live keys starting with PREFIX (default: all)",
		Args:  rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runQuery(cmd.Context(), e, args[0], q, map[string]any{"count": optArg(args, 1)}, printData(e))
		},
	}
	q.flags(cmd)
	return cmd
}

func newKVKeysCommand(e env) *cobra.Command {
	var q kvQuery
	var after string
	var limit int
	cmd := &cobra.Command{
		Use:   "keys DIR [PREFIX]",
		Short: "Print a page of the keys starting with PREFIX as a JSON array",
		Long: `Print a page of the keys starting with PREFIX (default: all) as a JSON
array. When more keys follow, the cursor of the next page is printed on
stderr: pass it with --after.`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := map[string]any{"keys": optArg(args, 1)}
			if cmd.Flags().Changed("after") {
				c["after"] = after
			}
			if cmd.Flags().Changed("limit") {
				c["limit"] = limit
			}
			return runQuery(cmd.Context(), e, args[0], q, c, func(ev pipeline.Event) error {
				if err := printData(e)(ev); err != nil {
					return err
				}
				if next := gjson.GetBytes(ev.Meta, "kv.next"); next.Type == gjson.String {
					fmt.Fprintf(e.stderr, "more keys follow: --after %s\n", next.Raw)
				}
				return nil
			})
		},
	}
	q.flags(cmd)
	cmd.Flags().StringVar(&after, "after", "", "start after this key (the cursor printed for the previous page)")
	cmd.Flags().IntVar(&limit, "limit", 0, "most keys to print (default: the connector's max_scan, 10000)")
	return cmd
}

func newKVDumpCommand(e env) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "dump DIR",
		Short: "Print every live key of every namespace as JSON lines",
		Long: `Print every live key of every namespace of the store in DIR, one JSON line
{"namespace","key","value","expire_at"} each, ordered by namespace then
key; expire_at is Unix milliseconds or null. Keys already expired are left
out. The same store always gives the same bytes. A count is printed on
stderr at the end (-q: not).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := kvtool.Open(args[0], false)
			if err != nil {
				return err
			}
			n, err := s.Dump(cmd.Context(), e.stdout, time.Now)
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if !quiet {
				fmt.Fprintf(e.stderr, "dumped %d keys\n", n)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no summary line")
	return cmd
}

func newKVLoadCommand(e env) *cobra.Command {
	var quiet bool
	var batch int
	cmd := &cobra.Command{
		Use:   "load DIR [FILE]",
		Short: "Store every JSON line of a dump (stdin by default) into DIR",
		Long: `Store every {"namespace","key","value","expire_at"} line read from FILE
(or standard input, or - ) into the store in DIR, creating it when missing
and overwriting keys that exist. A malformed line stops the load with exit
1, naming the line; the lines before it are stored. Progress goes to
stderr (a bar on a terminal, otherwise a line every 5 seconds), then a
summary line; -q turns both off.`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if batch <= 0 {
				return usageError{fmt.Errorf("--batch must be positive, got %d", batch)}
			}
			return runLoad(cmd.Context(), e, args[0], optArg(args, 1), batch, quiet)
		},
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress and no summary")
	cmd.Flags().IntVar(&batch, "batch", 1000, "keys committed together (one disk sync)")
	return cmd
}

func runLoad(ctx context.Context, e env, dir, input string, batch int, quiet bool) error {
	var r io.Reader = e.stdin
	name, size := "stdin", int64(-1)
	if input != "" && input != "-" {
		f, err := os.Open(input)
		if err != nil {
			return err
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
		r, name = f, input
	}
	s, err := kvtool.Open(dir, true)
	if err != nil {
		return err
	}
	counter := &countingReader{r: r}
	stop := startProgress(e, quiet, progress{what: "load", size: size, bytes: &counter.n})
	start := time.Now()
	n, err := s.Load(ctx, counter, kvtool.LoadOptions{Batch: batch, Name: name})
	stop()
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%w (%d keys stored before it)", err, n)
	}
	if !quiet {
		fmt.Fprintf(e.stderr, "loaded %d keys in %s\n", n, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// optArg returns args[i], or "" when absent.
func optArg(args []string, i int) string {
	if i < len(args) {
		return args[i]
	}
	return ""
}

// rangeArgs is cobra.RangeArgs reporting a usage error.
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(lo, hi)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
