// Package flowrun embeds flowrun in a Go program: its durable key-value
// store, opened in a directory and called directly (the store a flow's kv
// connector uses, with the same command set, limits, errors and
// durability), and its flows, loaded from YAML or built from code, with
// components of the program's own.
//
// The package is small on purpose: importing it links Pebble, the kv
// command layer, the flow loader and the light components (stdin, stdout,
// file, null, kv on Pebble, filter, set, route, drop), and not the etcd,
// gRPC or NATS clients, watermill nor the Lua interpreter, unless the
// program registers the components using them (a test checks this). The
// flow half lives here rather than in a sub-package because it costs a
// store-only program a YAML parser (go.yaml.in/yaml/v3), tidwall/sjson and
// the light components' code, nothing heavy: one import, as Benthos'
// public/service is one.
//
// # Example
//
//	st, err := flowrun.OpenStore(ctx, "state", flowrun.StoreOptions{})
//	if err != nil {
//		return err
//	}
//	defer st.Close()
//
//	wf := st.Namespace("wf-42")
//	if err := wf.Put(ctx, "step", []byte(`"pay"`), flowrun.PutOptions{TTL: time.Hour}); err != nil {
//		return err
//	}
//	attempts, err := wf.Increment(ctx, "attempts", 1)
//	...
//	// Several commands, one atomic transaction:
//	err = wf.Update(ctx, func(tx *flowrun.Tx) error {
//		if _, err := tx.Increment("done", 1); err != nil {
//			return err
//		}
//		_, err := tx.Delete("step")
//		return err
//	})
//
// # Flows
//
// NewRegistry returns the light components; a flow file using them is
// loaded with LoadFlow (or ParseFlow for bytes) and run with Flow.Run,
// which says where stdin and stdout are and which logger to use:
//
//	flow, err := flowrun.LoadFlow("counter.yaml", flowrun.NewRegistry())
//	...
//	var out bytes.Buffer
//	err = flow.Run(ctx, flowrun.RunOptions{Stdin: events, Stdout: &out})
//
// The heavy components are one line each, on the registry, which is a
// plain value (nothing is registered at package level):
//
//	reg := flowrun.NewRegistry(etcdstore.Backend()) // kv with backend: etcd
//	err := reg.Register(lua.Spec())                 // type: lua
//	err = reg.Register(bus.GoChannelSpec(), bus.NATSSpec())
//
// A FlowBuilder builds the same flows from code: connectors by type with
// their options (checked by the same specs as YAML's, errors naming the
// node and the option), pipelines of operators, and Go values: a
// pipeline.Source, a pipeline.Processor or a sink of the program's own.
// A source learns when each of its events is done, and how (stored,
// dropped, failed), by tagging it with a pipeline.Tracker.
//
// A component type of the program's own is a component.Spec (its options,
// ports and Build function) registered with Registry.Register and then
// used from YAML by its type, its options checked like the built-ins'.
//
// # A flow and a Store in one process
//
// A store directory is opened once per process. RunOptions.Store gives a
// flow the program's open Store: the flow's kv connectors on that
// directory use the Store's Pebble instance, so the program reads what the
// flow writes, and the flow what the program writes, as each command
// completes, with the guarantees below for both.
//
// # Namespaces
//
// Every key lives in a namespace (Store.Namespace): the keys of one are
// invisible to every other, whatever prefix or range a command asks for, so
// a program can give each workflow, tenant or plugin its own. A flow's kv
// connector on the same directory with namespace: NAME (by default the
// flow's name) sees the keys of Store.Namespace(NAME).
//
// # Guarantees
//
// Durability: a write (Put, Increment, CompareAndSet, Delete, Clear, an
// Update whose function returned nil, ...) returns nil only once it is
// synced to disk, and then survives a crash of the process or of the
// machine. StoreOptions.NoSync trades that for speed.
//
// Atomicity: each method is one transaction; Update runs several commands
// in one. A command that fails, an Update whose function returns an error
// or panics, and a failed commit leave the store as it was.
//
// Concurrency: a Store is safe for use by many goroutines. Transactions
// are applied one at a time by the store's writer goroutine, in the order
// they reach it, and the transactions of concurrent calls are committed
// in groups sharing one fsync: 64 goroutines putting at once reached 12 to
// 24 times the throughput of one on a loaded 2-core machine
// (BenchmarkStorePutParallel against BenchmarkStorePutSequential).
//
// Limits: keys are non-empty UTF-8 strings of at most
// StoreOptions.MaxKeyLength characters (255); values are JSON, stored in
// canonical form, of at most MaxValueBytes (4 MiB); a page of Keys or Scan
// holds at most MaxScan entries (10,000), GetAll at most MaxGetAll; one
// call, or one Update, reads at most MaxResultBytes and visits at most
// MaxKeysVisited keys. Going past a limit is an error, never a truncated
// result.
//
// Errors: a failed command returns an error wrapping one of the sentinel
// errors of this package (ErrKeyTooLong, ErrValueTooLarge, ErrCASMismatch,
// ErrNotNumber, ErrClosed, ...), for errors.Is, with a message naming the
// namespace, the command, the key and the limit. They are the errors of
// package kv, the same a flow reports in meta.error.
//
// Expiry: a key put with PutOptions.TTL reads as absent from its expiry
// on, judged by StoreOptions.Now; its space is reclaimed in the
// background.
//
// Directories: a store directory is opened by one process at a time, and
// by one Store of a process; a flow of the same process uses it through
// RunOptions.Store (without it, the flow cannot open the directory while
// the Store is open). See docs/embedding.md and docs/kv.md.
package flowrun
