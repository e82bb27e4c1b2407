package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/kvtool"
	"github.com/flowrun/flowrun/pipeline"
)

func newKVCommand(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "kv",
		Short: "Read, change, dump and load a kv store directory that no flow has open",
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

put, delete and increment change one key the same way, for operators:
put stores a JSON value (the argument, or standard input), delete removes
a key, increment adds --by to a number; each prints the resulting value.

Every one of these verbs warns on stderr when the namespace holds no key,
listing the namespaces the store has: a misspelt --namespace otherwise
reads as an empty result, or writes into a new namespace.

dump prints every live key of every namespace as one JSON line
{"namespace","key","value","expire_at"} (expire_at: Unix milliseconds, or
null), and load reads such lines back (overwriting existing keys), so
  flowrun kv dump state > backup.jsonl
  flowrun kv load fresh-state < backup.jsonl
copies a store.

check reports a damaged write-ahead log, which makes every verb and every
flow refuse the store (--accept-wal-loss opens it anyway, dropping the
records after the damage), and loads that did not complete, of which
every verb warns on stderr.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("kv needs a subcommand: get, scan, count, keys, put, delete, increment, dump, load or check")}
		},
	}
	var o kvOpen
	cmd.PersistentFlags().BoolVar(&o.acceptWALLoss, "accept-wal-loss", false,
		"open a store whose write-ahead log is damaged, dropping the records after the damage (a copy of the log is kept in DIR/lost-wal)")
	cmd.AddCommand(newKVGetCommand(e, &o), newKVScanCommand(e, &o), newKVCountCommand(e, &o), newKVKeysCommand(e, &o),
		newKVPutCommand(e, &o), newKVDeleteCommand(e, &o), newKVIncrementCommand(e, &o),
		newKVDumpCommand(e, &o), newKVLoadCommand(e, &o), newKVCheckCommand(e, &o))
	return cmd
}

// kvOpen holds the flags of every kv verb that say how to open the store.
type kvOpen struct {
	acceptWALLoss bool
}

// open opens the store in dir and warns on stderr of loads into it that
// did not complete.
func (o *kvOpen) open(ctx context.Context, e env, dir string, create bool) (*kvtool.Store, error) {
	s, err := kvtool.Open(dir, kvtool.OpenOptions{Create: create, AcceptWALLoss: o.acceptWALLoss, Logger: newLogger(e)})
	if err != nil {
		return nil, err
	}
	loads, err := s.PartialLoads(ctx)
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	for _, p := range loads {
		if e.log.jsonFormat() {
			newLogger(e).Warn("store is partially loaded", "store", dir, "load", fmt.Sprint(p),
				"hint", "load it again, or: flowrun kv check --forget-partial-loads "+dir)
			continue
		}
		fmt.Fprintf(e.stderr, "flowrun: warning: store %q is partially loaded: %s (load it again, or: flowrun kv check --forget-partial-loads %s)\n", dir, p, dir)
	}
	return s, nil
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
func runQuery(ctx context.Context, e env, o *kvOpen, dir string, q kvQuery, command map[string]any, render func(pipeline.Event) error) error {
	return runCommand(ctx, e, o, dir, q, command, nil, render)
}

// runCommand is runQuery with the event's data (put's value). It warns on
// stderr when the namespace has no keys, before running the command.
func runCommand(ctx context.Context, e env, o *kvOpen, dir string, q kvQuery, command map[string]any, data []byte, render func(pipeline.Event) error) error {
	if q.namespace == "" {
		return usageError{errors.New("--namespace is required (a kv connector's namespace is its namespace option, or its flow's name)")}
	}
	cmdJSON, err := json.Marshal(command)
	if err != nil {
		return err
	}
	s, err := o.open(ctx, e, dir, false)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := warnEmptyNamespace(ctx, e, s, q.namespace); err != nil {
		return err
	}
	res, err := s.Command(ctx, q.namespace, cmdJSON, data)
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

func newKVGetCommand(e env, o *kvOpen) *cobra.Command {
	var q kvQuery
	cmd := &cobra.Command{
		Use:   "get DIR KEY",
		Short: "Print the value of a key (null when absent)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runQuery(cmd.Context(), e, o, args[0], q, map[string]any{"get": args[1]}, printData(e))
		},
	}
	q.flags(cmd)
	return cmd
}

func newKVScanCommand(e env, o *kvOpen) *cobra.Command {
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
			return runQuery(cmd.Context(), e, o, args[0], q, c, func(ev pipeline.Event) error {
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

func newKVCountCommand(e env, o *kvOpen) *cobra.Command {
	var q kvQuery
	cmd := &cobra.Command{
		Use:   "count DIR [PREFIX]",
		Short: "Print the number of live keys starting with PREFIX (default: all)",
		Args:  rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runQuery(cmd.Context(), e, o, args[0], q, map[string]any{"count": optArg(args, 1)}, printData(e))
		},
	}
	q.flags(cmd)
	return cmd
}

func newKVKeysCommand(e env, o *kvOpen) *cobra.Command {
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
			return runQuery(cmd.Context(), e, o, args[0], q, c, func(ev pipeline.Event) error {
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

func newKVDumpCommand(e env, o *kvOpen) *cobra.Command {
	var quiet bool
	cmd := &cobra.Command{
		Use:   "dump DIR",
		Short: "Print every live key of every namespace as JSON lines",
		Long: `Print every live key of every namespace of the store in DIR, one JSON line
{"namespace","key","value","expire_at"} each, ordered by namespace then
key; expire_at is Unix milliseconds or null. Keys already expired are left
out. The same store always gives the same bytes. A count is printed on
stderr at the end (-q: not).

If reading the store fails part way (a damaged sstable), the lines already
printed are followed by one line {"dump_incomplete":"<why>"}, which load
refuses, and dump exits 1: a dump that exits 0 is complete.

The dump goes to standard output: a file it is redirected to is created by
the shell, with the permissions of the umask (commonly 0644, readable by
every user). For a store holding private data, redirect into a file made
private first (umask 077, or install -m 600 /dev/null backup.jsonl).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.open(cmd.Context(), e, args[0], false)
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

func newKVLoadCommand(e env, o *kvOpen) *cobra.Command {
	var f kvLoadFlags
	cmd := &cobra.Command{
		Use:   "load DIR [FILE]",
		Short: "Store every JSON line of a dump (stdin by default) into DIR",
		Long: `Store every {"namespace","key","value","expire_at"} line read from FILE
(or standard input, or - ) into the store in DIR, creating it when missing
and overwriting keys that exist. Progress goes to stderr (a bar on a
terminal, otherwise a line every 5 seconds), then a summary line; -q turns
both off.

Every record must meet the limits a put would: a key of at most
--max-key-length characters and a value of at most --max-value-bytes
(the kv connector's max_key_length and max_value_bytes; give the flow's
values when it raised them). A record over them, a malformed line, or
the last line of a dump that stopped early ({"dump_incomplete":...})
stops the load with exit 1, naming the line and giving the error the
command would. From a FILE every line is checked before anything is
stored, so such a load changes nothing; from standard input the lines
before the bad one are stored.

A load that does not complete (a bad line read from standard input, a
failed commit, the process killed) leaves the store partially loaded and
marked so: every flowrun kv verb and every flow opening the store warns
of it, and flowrun kv check fails, until a load of the same input (the
same FILE, or standard input) completes, or flowrun kv check
--forget-partial-loads clears the mark.`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("batch") {
				fmt.Fprintln(e.stderr, "flowrun: warning: --batch is the former name of --group")
			}
			if f.group <= 0 {
				return usageError{fmt.Errorf("--group must be positive, got %d", f.group)}
			}
			if f.maxKeyLength <= 0 || f.maxValueBytes <= 0 {
				return usageError{fmt.Errorf("--max-key-length and --max-value-bytes must be positive")}
			}
			return runLoad(cmd.Context(), e, o, args[0], optArg(args, 1), f)
		},
	}
	cmd.Flags().BoolVarP(&f.quiet, "quiet", "q", false, "no progress and no summary")
	cmd.Flags().IntVar(&f.group, "group", 1000, "keys committed together as one commit group (one disk sync)")
	// --batch is the former name of --group, still accepted (not listed).
	cmd.Flags().IntVar(&f.group, "batch", 1000, "former name of --group")
	_ = cmd.Flags().MarkHidden("batch")
	cmd.Flags().IntVar(&f.maxKeyLength, "max-key-length", kv.DefaultMaxKeyLength, "longest key accepted, in characters (the kv connector's max_key_length)")
	cmd.Flags().IntVar(&f.maxValueBytes, "max-value-bytes", kv.DefaultMaxValueBytes, "largest canonical value accepted, in bytes (the kv connector's max_value_bytes)")
	return cmd
}

// kvLoadFlags are the flags of kv load.
type kvLoadFlags struct {
	quiet                       bool
	group                       int
	maxKeyLength, maxValueBytes int
}

func runLoad(ctx context.Context, e env, o *kvOpen, dir, input string, f kvLoadFlags) error {
	var r io.Reader = e.stdin
	name, size := "stdin", int64(-1)
	if input != "" && input != "-" {
		file, err := os.Open(input)
		if err != nil {
			return err
		}
		defer file.Close()
		if st, err := file.Stat(); err == nil {
			size = st.Size()
		}
		r, name = file, input
		if abs, err := filepath.Abs(input); err == nil {
			name = abs
		}
	}
	s, err := o.open(ctx, e, dir, true)
	if err != nil {
		return err
	}
	counter := &countingReader{r: r}
	var in io.Reader = counter
	if sk, ok := r.(io.Seeker); ok {
		// Keep a file seekable, so that the load checks it whole first.
		in = &countingReadSeeker{countingReader: counter, s: sk}
	}
	stop := startProgress(e, f.quiet, progress{what: "load", size: size, bytes: &counter.n})
	start := time.Now()
	n, err := s.Load(ctx, in, kvtool.LoadOptions{
		Group: f.group, Name: name, MaxKeyLength: f.maxKeyLength, MaxValueBytes: f.maxValueBytes,
	})
	stop()
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if n > 0 {
			return fmt.Errorf("%w (%d keys stored before it; the store is marked partially loaded until a load of %s completes)", err, n, name)
		}
		return err
	}
	if !f.quiet {
		fmt.Fprintf(e.stderr, "loaded %d keys in %s\n", n, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// countingReadSeeker is a countingReader that can seek, counting from the
// offset sought to.
type countingReadSeeker struct {
	*countingReader
	s io.Seeker
}

func (c *countingReadSeeker) Seek(offset int64, whence int) (int64, error) {
	off, err := c.s.Seek(offset, whence)
	if err == nil {
		c.n.Store(off)
	}
	return off, err
}

func newKVCheckCommand(e env, o *kvOpen) *cobra.Command {
	var forget bool
	cmd := &cobra.Command{
		Use:   "check DIR",
		Short: "Open a store and report damage to its write-ahead log and loads that did not complete",
		Long: `Open the store in DIR as a flow would and report what would stop or
trouble it: a damaged write-ahead log (a flow refuses to open the store),
and loads that did not complete (a flow warns). Exit 0 when there is
neither, 1 otherwise.

A damaged write-ahead log holds intact records after the damage, which
Pebble would drop: writes that were acknowledged. flowrun refuses to open
such a store and leaves it untouched, so it can be copied aside first.
--accept-wal-loss opens it anyway: the damaged log is copied to
DIR/lost-wal, the records after the damage are dropped, and the store opens
normally from then on.

--forget-partial-loads clears the marks of loads that did not complete,
for a store whose partial contents are wanted as they are.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.open(cmd.Context(), e, args[0], false)
			if err != nil {
				return err
			}
			defer s.Close()
			if forget {
				loads, err := s.ForgetPartialLoads(cmd.Context())
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stderr, "forgot %d partial load(s)\n", len(loads))
				return s.Close()
			}
			loads, err := s.PartialLoads(cmd.Context())
			if err != nil {
				return err
			}
			if len(loads) > 0 {
				return fmt.Errorf("store %q is partially loaded (%d load(s) did not complete)", args[0], len(loads))
			}
			fmt.Fprintf(e.stderr, "store %q: write-ahead logs intact, no partial loads\n", args[0])
			return s.Close()
		},
	}
	cmd.Flags().BoolVar(&forget, "forget-partial-loads", false, "clear the marks of loads that did not complete")
	return cmd
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
