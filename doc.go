// Package flowrun embeds flowrun's durable key-value store in a Go
// program: the store a flow's kv connector uses, opened in a directory and
// called directly, with the same command set, limits, errors and
// durability, and without a flow, a broker or a server.
//
// The package is small on purpose: importing it links Pebble and the kv
// command layer, and not the etcd, gRPC or NATS clients nor the Lua
// interpreter (a test checks this). Flows are built and run with package
// flows for now; a later version adds flowrun.NewFlow here.
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
// by one Store of a process (a flow of the same process cannot open it
// while the Store is open). See docs/embedding.md and docs/kv.md.
package flowrun
