// Package expr implements flowrun's expression language: small expressions
// evaluated against one event, used by the operators for conditions
// (filter, route, drop) and for computed values (set).
//
// An expression reads the event through paths rooted at data (alias
// payload) or meta, such as data.player.id, meta.kv.op, data.items.0 or
// data["odd key"]. Paths are resolved with gjson directly on the event's raw
// bytes, so evaluating an expression never unmarshals a whole event.
//
//	exists(data.steam_id) && data.count >= 3
//	{"increment": "warnings_" + data.steam_id}
//
// Values are JSON values (null, booleans, numbers, strings, arrays,
// objects) plus a distinct missing value for paths that do not exist.
// Integers are kept exact within int64; other numbers are float64. Numbers
// read from an event keep their original text when they are copied
// unchanged, so 12345678901234567890 or 1.50 survive a round trip.
//
// Errors are strict rather than silent: comparing a string with a number,
// adding an object, or using a non-boolean as a condition is an evaluation
// error (ErrEval), which the operators turn into an event on their err
// port. Parse errors (ErrSyntax) name the column of the problem.
//
// Functions (exists, concat, matches, window, hash, ...) are registered in
// one table (funcs.go) giving each its parameters, documentation, example
// and implementation; the reference in docs/operators.md is generated from
// it. Functions depend on nothing but the event and Options: the clock of
// now() is Options.Now, so an expression parsed with a fixed clock gives
// the same result on every replay.
//
// The full grammar, the functions and the type rules are documented in
// docs/operators.md.
package expr
