// Package flows turns YAML flow files into runnable pipeline graphs.
//
// A flow file names the flow, declares connectors (sources, sinks and
// processors such as the kv store), pipelines (ordered lists of operators)
// and links from a node's output port to another node's input:
//
//	name: kv-example
//	connectors:
//	  input: { type: stdin }
//	  store: { type: kv, dir: state }
//	  results: { type: stdout }
//	pipelines:
//	  main:
//	    - filter: 'exists(meta.kv)'
//	links:
//	  - input/out -> main/in
//	  - main/out -> store/in
//	  - store/out -> results/in
//
// Every component type is declared by a component.Spec, in the package of
// the component, and the loader asks a component.Registry for it (see
// flows/builtin for the built-in set). The same spec validates configs
// (unknown or missing options, wrong types, out-of-range numbers, invalid
// expressions, and the component's own Check) and renders the reference
// documentation, so what the docs say is what the loader checks. Load and Validate report problems as
// Diagnostics located by file, line, column and field, and never panic on
// any input. Flow.Build creates the components and wires them into a
// pipeline.Graph.
package flows
