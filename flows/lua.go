package flows

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flowrun/flowrun/operators/lua"
	"github.com/flowrun/flowrun/pipeline"
)

// luaSpec is the lua processor: a sandboxed script per event with a kv
// table on the store of dir, in the same namespace a kv connector of the
// same flow on that dir uses (the flow's name unless namespace is set).
func luaSpec() Spec {
	var fields []Field
	fields = append(fields,
		Field{Name: "script", Type: TypeString, Doc: "Lua source run once per event (give script or file)."},
		Field{Name: "file", Type: TypePath, Doc: "Lua file run once per event, relative to the flow file unless absolute."},
		Field{Name: "ports", Type: TypeString, Doc: "Comma-separated output ports emit may use besides `out` and `err` (`actions, alerts`)."},
		Field{Name: "timeout", Type: TypeDuration, Default: lua.DefaultTimeout.String(), Doc: "Longest run of the script for one event."},
		Field{Name: "max_call_depth", Type: TypeInt, Default: fmt.Sprint(lua.DefaultMaxCallDepth), Doc: "Deepest Lua call stack (recursion)."},
		Field{Name: "max_stack_slots", Type: TypeInt, Default: fmt.Sprint(lua.DefaultMaxStackSlots), Doc: "Largest Lua value stack, in slots."},
		Field{Name: "max_string_bytes", Type: TypeByteSize, Default: "4MiB",
			Doc: "Largest string.rep result, value converted to JSON, and total output of one event."},
	)
	for _, f := range kvSpec().Fields {
		if f.Name == "dir" {
			f.Required = false
			f.Doc = "Store directory of the kv table, relative to the flow file unless absolute; the same directory as a kv connector of the flow shares its store. Without it, kv functions raise an error."
		}
		fields = append(fields, f)
	}
	return Spec{
		Type: "lua",
		Kind: KindProcessor,
		Summary: "Runs a sandboxed Lua script once per event, with a `kv` table on a kv store. " +
			"The script's kv writes and its emitted events for one event are applied together or, when it raises, not at all " +
			"(the event goes to `err` with the Lua error and line). See docs/lua.md.",
		Fields:   fields,
		Ports:    luaPorts,
		PortsDoc: "`out`, `err`, plus those listed in `ports`",
		Build: func(ctx context.Context, env *BuildEnv, c *Config) (Component, error) {
			src, name, err := luaSource(c)
			if err != nil {
				return Component{}, err
			}
			opts := lua.Options{
				Script:         src,
				Name:           name,
				Ports:          splitPorts(c.String("ports")),
				Timeout:        c.Duration("timeout"),
				MaxCallDepth:   c.Int("max_call_depth"),
				MaxStackSlots:  c.Int("max_stack_slots"),
				MaxStringBytes: int(min(c.ByteSize("max_string_bytes"), 1<<40)),
				Logger:         env.Options.Logger.With("node", c.Node),
			}
			if kvConfigured(c) {
				conn, err := openKV(ctx, env, c)
				if err != nil {
					return Component{}, err
				}
				opts.Store, opts.OwnStore = conn, true
			}
			p, err := lua.New(opts)
			if err != nil {
				if opts.Store != nil {
					_ = opts.Store.Close(context.Background())
				}
				return Component{}, err
			}
			return Component{Processor: p}, nil
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
