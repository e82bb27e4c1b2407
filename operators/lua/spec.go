package lua

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/internal/partition"
	"github.com/flowrun/flowrun/pipeline"
)

// Spec declares the lua processor for flow files: a sandboxed script per
// event with a kv table bound to a kv connector of the same flow (its
// store, namespace and limits), named by the kv option. Its Check reads
// the script file and compiles the script, so that flowrun validate
// reports a missing file or a syntax error at its option.
func Spec() component.Spec {
	return component.Spec{
		Type: "lua",
		Kind: component.KindProcessor,
		Summary: "Runs a sandboxed Lua script once per event, with a `kv` table on the kv connector named by `kv`. " +
			"The script's kv writes and its emitted events for one event are applied together or, when it raises, not at all " +
			"(the event goes to `err` with the Lua error and line). See docs/lua.md.",
		Fields: []component.Field{
			{Name: "script", Type: component.TypeString, Verbatim: true, Doc: "Lua source run once per event (give script or file)."},
			{Name: "file", Type: component.TypePath, Doc: "Lua file run once per event, relative to the flow file unless absolute."},
			{Name: "kv", Type: component.TypeNode, NodeType: "kv",
				Doc: "The kv connector of this flow the `kv` table works on: its store, namespace and limits. It needs no links. Without it, kv functions raise an error."},
			{Name: "ports", Type: component.TypeStrings, Doc: "Output ports emit may use besides `out` and `err`: a list (`[actions, alerts]`) or a comma-separated string."},
			{Name: "timeout", Type: component.TypeDuration, Default: DefaultTimeout.String(), Min: "1ms", Doc: "Longest run of the script for one event."},
			{Name: "max_memory", Type: component.TypeByteSize, Default: "64MiB", Min: "1",
				Doc: "Largest growth of the process heap while one event's script runs longer than a few milliseconds, and largest state the script keeps across events (see docs/lua.md)."},
			{Name: "max_call_depth", Type: component.TypeInt, Default: fmt.Sprint(DefaultMaxCallDepth), Min: "1", Doc: "Deepest Lua call stack (recursion)."},
			// The VM starts with 1024 slots: a smaller bound would not hold.
			{Name: "max_stack_slots", Type: component.TypeInt, Default: fmt.Sprint(DefaultMaxStackSlots), Min: "1024", Doc: "Largest Lua value stack, in slots."},
			{Name: "max_string_bytes", Type: component.TypeByteSize, Default: "4MiB", Min: "1", Max: "1GiB",
				Doc: "Largest string built by one library call (string.rep, gsub, format, table.concat, ...), value converted to JSON, and total output of one event."},
		},
		Ports:    specPorts,
		PortsDoc: "`out`, `err`, plus those listed in `ports`",
		Check: func(c *component.Config) error {
			opts, where, err := specOptions(nil, c)
			if err != nil {
				return err
			}
			if err := Check(opts); err != nil {
				if errors.Is(err, ErrScript) {
					return component.OptionErr(where, err)
				}
				return err
			}
			return nil
		},
		Build: func(_ context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			opts, _, err := specOptions(env, c)
			if err != nil {
				return component.Component{}, err
			}
			release := func(context.Context) error { return nil }
			if store := c.String("kv"); store != "" {
				p, rel, err := env.Use(store)
				if err != nil {
					return component.Component{}, err
				}
				conn, ok := p.(*kv.Connector)
				if _, partitioned := p.(interface{ Board() *partition.Board }); partitioned {
					_ = rel(context.Background())
					return component.Component{}, component.OptionErr("kv", fmt.Errorf("connector %q is partitioned: Lua scripts cannot use a partitioned kv connector (a script's keys are known only as it runs, so it could not be sent to the instance owning them; see docs/scaling.md)", store))
				}
				if !ok {
					_ = rel(context.Background())
					return component.Component{}, fmt.Errorf("%w: connector %q is not a kv connector", component.ErrNodeUnavailable, store)
				}
				opts.Store, release = conn, rel
			}
			p, err := New(opts)
			if err != nil {
				_ = release(context.Background())
				return component.Component{}, err
			}
			return component.Component{Processor: component.WithRelease(p, release)}, nil
		},
	}
}

// specOptions returns the processor options c gives (without Store), with
// the script read from its file, and the option holding the script.
// env is nil while checking.
func specOptions(env *component.Env, c *component.Config) (Options, string, error) {
	src, name, where, err := specSource(c)
	if err != nil {
		return Options{}, where, err
	}
	opts := Options{
		Script:         src,
		Name:           name,
		Ports:          c.Strings("ports"),
		Timeout:        c.Duration("timeout"),
		MaxMemory:      c.ByteSize("max_memory"),
		MaxCallDepth:   c.Int("max_call_depth"),
		MaxStackSlots:  c.Int("max_stack_slots"),
		MaxStringBytes: int(c.ByteSize("max_string_bytes")),
	}
	if env != nil {
		opts.Logger = env.Logger.With("node", c.Node)
		if now := component.Clock(env.Resources); now != nil {
			opts.Now = now // os.time and os.date follow a fixed clock too
		}
	}
	return opts, where, nil
}

func specPorts(c *component.Config) []string {
	return append([]string{pipeline.PortOut, pipeline.PortErr}, c.Strings("ports")...)
}

// specSource returns the script of c, its chunk name and the option
// holding it ("script" or "file").
func specSource(c *component.Config) (src, name, where string, err error) {
	script, file := c.String("script"), c.String("file")
	switch {
	case script != "" && file != "":
		return "", "", "file", component.OptionErr("file", errors.New("give either script or file, not both"))
	case file != "":
		b, err := readScript(file)
		if err != nil {
			return "", "", "file", component.OptionErr("file", fmt.Errorf("script file: %w", err))
		}
		return string(b), filepath.Base(file), "file", nil
	case script != "":
		return script, c.Node, "script", nil
	}
	return "", "", "", errors.New("lua needs a script (script: inline source, or file: a .lua file)")
}

// MaxScriptFileBytes is the largest Lua script file accepted: far above
// any script, it keeps a mistaken path (a log, a device) from being read
// whole when the flow is loaded.
const MaxScriptFileBytes = 16 << 20

// readScript reads a script file, refusing what is not a regular file
// (reading /dev/zero or a FIFO would never end) or is larger than
// MaxScriptFileBytes.
func readScript(path string) ([]byte, error) {
	// Stat before opening: opening a FIFO blocks until a writer comes.
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Size() > MaxScriptFileBytes {
		return nil, fmt.Errorf("%s is %d bytes, larger than the %d a script may be", path, fi.Size(), MaxScriptFileBytes)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxScriptFileBytes+1))
	if err == nil && len(b) > MaxScriptFileBytes {
		err = fmt.Errorf("%s grew beyond the %d bytes a script may be", path, MaxScriptFileBytes)
	}
	return b, err
}
