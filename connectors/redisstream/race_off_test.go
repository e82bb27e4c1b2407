//go:build !race

package redisstream_test

// raceEnabled is true when the tests run with the race detector, which
// makes Lua about ten times slower.
const raceEnabled = false
