// Package yamlnode holds the helpers the flow loader and the flow test
// reader share for reading YAML nodes and naming them in messages.
package yamlnode

import (
	"strconv"

	"go.yaml.in/yaml/v3"
)

// Deref follows aliases to the node they stand for, at most 16 deep, so a
// hostile chain of aliases cannot keep it looping.
func Deref(n *yaml.Node) *yaml.Node {
	for i := 0; i < 16 && n != nil && n.Kind == yaml.AliasNode && n.Alias != nil; i++ {
		n = n.Alias
	}
	return n
}

// IsNull reports whether n is a null scalar (`~`, `null` or nothing).
func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

// Describe names a node's kind for messages: "a mapping", "a list",
// "nothing" or the quoted scalar.
func Describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if IsNull(n) {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "an unsupported YAML value"
}
