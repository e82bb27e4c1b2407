// Package component is the contract between flowrun's loader and the
// connectors and operators it builds: a Spec declares a component type
// (its options as Fields, its ports, a side-effect-free Check and a Build
// function), a Registry holds the specs a flow file may use and renders
// their reference, a Config is a component's validated options, and an Env
// is what Build sees of the flow and of the process (logger, graph,
// standard streams, shared Resources).
//
// Each component package declares its own specs beside its code and
// exports them, and a program registers the ones it wants:
//
//	r := component.NewRegistry()
//	r.MustRegister(jsonl.StdinSpec(), jsonl.StdoutSpec(), kv.Spec(pebblestore.Backend()))
//
// This package imports only the pipeline package and the standard
// library, so that importing it drags in no backend, and it has no
// package-level mutable state: a registry is a value.
package component
