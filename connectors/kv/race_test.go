//go:build race

package kv_test

// raceEnabled is true when tests run under the race detector, which slows
// bulk loads by an order of magnitude.
const raceEnabled = true
