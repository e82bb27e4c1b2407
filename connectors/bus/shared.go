package bus

import "github.com/flowrun/flowrun/component"

// This file exports what the bus connectors of other packages (mqtt, ...)
// share with gochannel and nats, so that every bus spec reads alike.

// ModeField is the `mode` option of a bus connector: read (a source) or
// write (a sink).
func ModeField() component.Field { return modeField() }

// ModeKind tells a bus connector's role from its mode option.
func ModeKind(c *component.Config) component.Kind { return modeKind(c) }

// ModePorts returns the output ports of a bus connector: those of a Source
// in mode read, none in mode write.
func ModePorts(c *component.Config) []string { return modePorts(c) }

// SourceFields are the delivery options shared by the bus sources (window,
// linger, max_deliveries, dead_letter, fail_on, fail_sinks); read them with
// SourceOptionsFrom.
func SourceFields() []component.Field { return sourceFields() }

// SourceOptionsFrom reads the SourceFields of c into SourceOptions named
// after c's node; Topic is left for the caller.
func SourceOptionsFrom(env *component.Env, c *component.Config) SourceOptions {
	return sourceOptions(env, c)
}

// ErrNoGraph reports a bus source built without the graph it feeds.
var ErrNoGraph = errNoGraph
