// Package builtin lists flowrun's built-in components: one registration
// line each. A program wanting fewer (no etcd, no NATS, no Lua) registers
// the specs it wants itself; see docs/flows.md, "Writing a component".
package builtin

import (
	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/amqp"
	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/httpconn"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/connectors/mqtt"
	"github.com/flowrun/flowrun/connectors/redisstream"
	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/operators/lua"
)

// Register adds the built-in components to r, connectors then operators,
// in the order of the reference, and sets the operators' expression
// checker.
func Register(r *component.Registry) error {
	r.SetExprChecker(operators.CheckExpr)
	return r.Register(
		jsonl.StdinSpec(),
		jsonl.StdoutSpec(),
		jsonl.FileSpec(),
		jsonl.NullSpec(),
		kv.Spec(partitioned.Backend(pebblestore.Backend()), etcdstore.Backend()),
		lua.Spec(),
		bus.GoChannelSpec(),
		bus.NATSSpec(),
		kafka.Spec(),
		amqp.Spec(),
		mqtt.Spec(),
		redisstream.Spec(),
		httpconn.ServerSpec(),
		httpconn.ClientSpec(),
		operators.FilterSpec(),
		operators.SetSpec(),
		operators.RouteSpec(),
		operators.DropSpec(),
	)
}

// NewRegistry returns a new registry holding the built-in components.
func NewRegistry() *component.Registry {
	r := component.NewRegistry()
	if err := Register(r); err != nil {
		panic(err) // a broken built-in spec is a programming error caught by every test
	}
	return r
}
