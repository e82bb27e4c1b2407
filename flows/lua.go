package flows

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/operators/lua"
	"github.com/flowrun/flowrun/pipeline"
)

// luaSpec is the lua processor: a sandboxed script per event with a kv
// table bound to a kv connector of the same flow (its store, namespace and
// limits), named by the kv option.
func luaSpec() Spec {
	return Spec{
		Type: "lua",
		Kind: KindProcessor,
		Summary: "Runs a sandboxed Lua script once per event, with a `kv` table on the kv connector named by `kv`. " +
			"The script's kv writes and its emitted events for one event are applied together or, when it raises, not at all " +
			"(the event goes to `err` with the Lua error and line). See docs/lua.md.",
		Fields: []Field{
			{Name: "script", Type: TypeString, Doc: "Lua source run once per event (give script or file)."},
			{Name: "file", Type: TypePath, Doc: "Lua file run once per event, relative to the flow file unless absolute."},
			{Name: "kv", Type: TypeNode, NodeType: "kv",
				Doc: "The kv connector of this flow the `kv` table works on: its store, namespace and limits. It needs no links. Without it, kv functions raise an error."},
			{Name: "ports", Type: TypeString, Doc: "Comma-separated output ports emit may use besides `out` and `err` (`actions, alerts`)."},
			{Name: "timeout", Type: TypeDuration, Default: lua.DefaultTimeout.String(), Doc: "Longest run of the script for one event."},
			{Name: "max_memory", Type: TypeByteSize, Default: "64MiB",
				Doc: "Largest growth of the process heap while one event's script runs longer than a few milliseconds, and largest state the script keeps across events (see docs/lua.md)."},
			{Name: "max_call_depth", Type: TypeInt, Default: fmt.Sprint(lua.DefaultMaxCallDepth), Doc: "Deepest Lua call stack (recursion)."},
			{Name: "max_stack_slots", Type: TypeInt, Default: fmt.Sprint(lua.DefaultMaxStackSlots), Doc: "Largest Lua value stack, in slots."},
			{Name: "max_string_bytes", Type: TypeByteSize, Default: "4MiB",
				Doc: "Largest string built by one library call (string.rep, gsub, format, table.concat, ...), value converted to JSON, and total output of one event."},
		},
		Ports:    luaPorts,
		PortsDoc: "`out`, `err`, plus those listed in `ports`",
		Build: func(_ context.Context, env *BuildEnv, c *Config) (Component, error) {
			src, name, err := luaSource(c)
			if err != nil {
				return Component{}, err
			}
			opts := lua.Options{
				Script:         src,
				Name:           name,
				Ports:          splitPorts(c.String("ports")),
				Timeout:        c.Duration("timeout"),
				MaxMemory:      c.ByteSize("max_memory"),
				MaxCallDepth:   c.Int("max_call_depth"),
				MaxStackSlots:  c.Int("max_stack_slots"),
				MaxStringBytes: int(min(c.ByteSize("max_string_bytes"), 1<<40)),
				Logger:         env.Options.Logger.With("node", c.Node),
			}
			release := func(context.Context) error { return nil }
			if store := c.String("kv"); store != "" {
				p, rel, err := env.Use(store)
				if err != nil {
					return Component{}, err
				}
				conn, ok := p.(*kv.Connector)
				if !ok {
					_ = rel(context.Background())
					return Component{}, fmt.Errorf("%w: connector %q is not a kv connector", ErrNodeUnavailable, store)
				}
				opts.Store, release = conn, rel
			}
			p, err := lua.New(opts)
			if err != nil {
				_ = release(context.Background())
				return Component{}, err
			}
			return Component{Processor: WithRelease(p, release)}, nil
		},
	}
}

func luaPorts(c *Config) []string {
	return append([]string{pipeline.PortOut, pipeline.PortErr}, splitPorts(c.String("ports"))...)
}

func splitPorts(s string) []string {
	var ports []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			ports = append(ports, p)
		}
	}
	return ports
}

// luaSource returns the script of c and its chunk name.
func luaSource(c *Config) (src, name string, err error) {
	script, file := c.String("script"), c.String("file")
	switch {
	case script != "" && file != "":
		return "", "", errors.New("give either script or file, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", fmt.Errorf("script file: %w", err)
		}
		return string(b), filepath.Base(file), nil
	case script != "":
		return script, c.Node, nil
	}
	return "", "", errors.New("lua needs a script (script: inline source, or file: a .lua file)")
}
