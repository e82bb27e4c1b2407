package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/tidwall/gjson"

	"github.com/flowrun/flowrun/connectors/kv/kvtool"
	"github.com/flowrun/flowrun/internal/ijson"
)

// newKVPutCommand, newKVDeleteCommand and newKVIncrementCommand are the
// writing verbs: one command each, as a flow would send it in meta.kv.
func newKVPutCommand(e env, o *kvOpen) *cobra.Command {
	var q kvQuery
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "put DIR KEY [VALUE]",
		Short: "Store a JSON value under a key (VALUE, or standard input)",
		Long: `Store VALUE, a JSON value (a string is written "\"text\""), under KEY in
the namespace given by --namespace, as the put command of a flow would,
with the same limits. Without VALUE, standard input holds it. Prints the
value stored. --ttl makes the key expire.`,
		Args: rangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var value []byte
			if len(args) == 3 {
				value = []byte(args[2])
			} else {
				b, err := io.ReadAll(e.stdin)
				if err != nil {
					return err
				}
				value = bytes.TrimSpace(b)
			}
			// Checked as a flow's sources check their input: a value
			// with two members of one name is refused, not stored as
			// the last of them.
			var check ijson.Checker
			rep, err := check.Check(value, "value")
			switch {
			case errors.Is(err, ijson.ErrSyntax):
				return usageError{fmt.Errorf("the value of %q is not JSON (write a string as '\"text\"'): %.40q", args[1], value)}
			case err != nil:
				return usageError{fmt.Errorf("the value of %q is not I-JSON: %w", args[1], err)}
			case rep.BadString != nil:
				value = ijson.Repair(nil, value)
			}
			c := map[string]any{"put": args[1]}
			if cmd.Flags().Changed("ttl") {
				if ttl <= 0 {
					return usageError{fmt.Errorf("--ttl must be positive, got %s", ttl)}
				}
				c["ttl"] = ttl.Seconds()
			}
			return runCommand(cmd.Context(), e, o, args[0], q, c, value, printData(e))
		},
	}
	q.flags(cmd)
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "expire the key after this long (such as 10m)")
	return cmd
}

func newKVDeleteCommand(e env, o *kvOpen) *cobra.Command {
	var q kvQuery
	cmd := &cobra.Command{
		Use:   "delete DIR KEY",
		Short: "Delete a key (its old value is printed, null when absent)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCommand(cmd.Context(), e, o, args[0], q, map[string]any{"delete": args[1]}, nil, printData(e))
		},
	}
	q.flags(cmd)
	return cmd
}

func newKVIncrementCommand(e env, o *kvOpen) *cobra.Command {
	var q kvQuery
	var by string
	cmd := &cobra.Command{
		Use:   "increment DIR KEY",
		Short: "Add --by (default 1) to a number stored under a key and print the new value",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := map[string]any{"increment": args[1]}
			if cmd.Flags().Changed("by") {
				if _, err := strconv.ParseFloat(by, 64); err != nil {
					return usageError{fmt.Errorf("--by must be a number, got %q", by)}
				}
				c["by"] = json.Number(by)
			}
			return runCommand(cmd.Context(), e, o, args[0], q, c, nil, printData(e))
		},
	}
	q.flags(cmd)
	cmd.Flags().StringVar(&by, "by", "1", "amount to add (negative to subtract)")
	return cmd
}

// maxNamespaceScan bounds how many keys are read to list a store's
// namespaces for the warning about an empty namespace.
const maxNamespaceScan = 1 << 20

// warnEmptyNamespace warns on stderr when namespace holds no key, naming
// the namespaces the store has: a misspelt --namespace otherwise reads as
// an empty result, or writes into a new namespace.
func warnEmptyNamespace(ctx context.Context, e env, s *kvtool.Store, namespace string) error {
	res, err := s.Command(ctx, namespace, []byte(`{"keys":"","limit":1}`), nil)
	if err != nil {
		return err
	}
	if res.Err != nil || len(res.Out) == 0 || gjson.GetBytes(res.Out[0].DataJSON(), "#").Int() > 0 {
		return nil
	}
	names, complete, err := namespaces(ctx, s)
	if err != nil {
		return err
	}
	list := "none"
	if len(names) > 0 {
		list = strings.Join(names, ", ")
	}
	if !complete {
		list += fmt.Sprintf(", ... (listing stopped after %d keys)", maxNamespaceScan)
	}
	if e.log.jsonFormat() {
		newLogger(e).Warn("namespace has no keys", "namespace", namespace, "namespaces", names, "complete", complete)
		return nil
	}
	fmt.Fprintf(e.stderr, "flowrun: warning: namespace %q has no keys (namespaces in the store: %s)\n", namespace, list)
	return nil
}

// errEnough stops a listing.
var errEnough = errors.New("enough keys read")

// namespaces returns the namespaces of the store's first maxNamespaceScan
// live keys, sorted; complete is false when there were more keys.
func namespaces(ctx context.Context, s *kvtool.Store) (names []string, complete bool, err error) {
	w := &namespaceWriter{seen: map[string]bool{}}
	if _, err := s.Dump(ctx, w, time.Now); err != nil && !errors.Is(err, errEnough) {
		return nil, false, err
	}
	for n := range w.seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, w.keys < maxNamespaceScan, nil
}

// namespaceWriter reads the namespaces of dump lines written to it.
type namespaceWriter struct {
	seen    map[string]bool
	partial []byte
	keys    int
}

func (w *namespaceWriter) Write(p []byte) (int, error) {
	n := len(p)
	data := append(w.partial, p...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		if ns := gjson.GetBytes(data[:i], "namespace"); ns.Type == gjson.String {
			w.seen[ns.Str] = true
		}
		data = data[i+1:]
		w.keys++
		if w.keys >= maxNamespaceScan {
			return n, errEnough
		}
	}
	w.partial = append(w.partial[:0], data...)
	return n, nil
}
