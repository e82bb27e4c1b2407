package bus

import "github.com/flowrun/flowrun/component"

// This file exports the spec helpers that connectors for other brokers,
// in packages of their own, share with nats and gochannel.

// ErrNoGraph reports a bus source built without the graph it feeds.
var ErrNoGraph = errNoGraph

// ModeField is the `mode` option (read or write) of every bus connector.
func ModeField() component.Field { return modeField() }

// ModeKind tells a bus connector's role from its mode option: a source
// for `mode: read`, a sink otherwise (Spec.KindOf).
func ModeKind(c *component.Config) component.Kind { return modeKind(c) }

// ModePorts are a bus connector's output ports: Ports() for a source,
// none for a sink (Spec.Ports).
func ModePorts(c *component.Config) []string { return modePorts(c) }

// SourceFields are the delivery options shared by the bus sources
// (window, linger, max_deliveries, dead_letter, fail_on, fail_sinks); read
// them with SourceOptionsOf.
func SourceFields() []component.Field { return sourceFields() }

// SourceOptionsOf reads the SourceFields of c into SourceOptions named
// after the node, logging to env's logger; Topic is left to the caller.
func SourceOptionsOf(env *component.Env, c *component.Config) SourceOptions {
	return sourceOptions(env, c)
}
