// Package kv is flowrun's key-value connector: it reads a command from each
// event's meta.kv object (get, put, swap, cas, cad, delete, scan, increment,
// exists, count, keys, get_all, clear, batch), applies it within the
// connector's namespace to a store and emits the result on the "out" port,
// or the original event with meta.error on the "err" port. The event's
// meta.correlation is copied unchanged into every output; no other input
// metadata is.
//
// Commands run against the small Backend interface, so the command layer
// owns the key layout (namespaces, expiry index) and every backend runs the
// same conformance table (package kvtest). Dump and Load copy every live
// record of every namespace of a Backend to and from Records (one JSON line
// each), for backups and offline tools; Options.OnCommands counts command
// outcomes for metrics. The Pebble backend lives in the
// pebblestore subpackage, an in-memory one in memstore. docs/kv.md is the
// user reference of the command set.
package kv
