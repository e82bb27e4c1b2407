// Package kv is flowrun's key-value connector: it reads a command from each
// event's meta.kv object (get, put, swap, cas, delete, scan and the rest of
// the command set), applies it to a durable store and emits the result on
// the "out" port, or the original event with meta.error on the "err" port.
// The event's meta.correlation is copied unchanged into every output.
//
// Commands run against the small Backend interface; the Pebble backend lives
// in the pebblestore subpackage.
package kv
