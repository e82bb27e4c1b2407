// Command flowonly runs a flow file with flowrun's default registry, the
// way an embedding program does: it must link no etcd, gRPC, NATS,
// watermill or Lua (see TestImportHygiene).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/flowrun/flowrun"
)

func main() {
	flow, err := flowrun.LoadFlow(os.Args[1], flowrun.NewRegistry())
	if err == nil {
		err = flow.Run(context.Background(), flowrun.RunOptions{})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
