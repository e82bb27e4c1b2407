// Command minimal runs flows with only the jsonl connectors, the kv
// connector on Pebble and the operators: the smallest useful set, which
// must link no etcd, gRPC, NATS, watermill or Lua (see TestMinimalSetDeps).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/operators"
)

func main() {
	r := component.NewRegistry()
	r.SetExprChecker(operators.CheckExpr)
	r.MustRegister(
		jsonl.StdinSpec(),
		jsonl.StdoutSpec(),
		jsonl.FileSpec(),
		kv.Spec(pebblestore.Backend()),
		operators.FilterSpec(),
		operators.SetSpec(),
	)
	flow, diags, err := flows.Load(os.Args[1], r)
	for _, d := range diags {
		fmt.Fprintln(os.Stderr, d)
	}
	if err != nil {
		os.Exit(1)
	}
	built, err := flow.Build(context.Background(), flows.BuildOptions{})
	if err == nil {
		err = built.Run(context.Background())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
