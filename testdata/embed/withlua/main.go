// Command withlua registers the lua processor and the etcd backend on
// flowrun's default registry, one line each: it links them, which shows
// that TestImportHygiene's check can fail.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/flowrun/flowrun"
	"github.com/flowrun/flowrun/connectors/kv/etcdstore"
	"github.com/flowrun/flowrun/operators/lua"
)

func main() {
	reg := flowrun.NewRegistry(etcdstore.Backend())
	err := reg.Register(lua.Spec())
	var flow *flowrun.Flow
	if err == nil {
		flow, err = flowrun.LoadFlow(os.Args[1], reg)
	}
	if err == nil {
		err = flow.Run(context.Background(), flowrun.RunOptions{})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
