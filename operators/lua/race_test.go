//go:build race

package lua

// raceEnabled is true when tests run under the race detector, which
// multiplies the memory a test uses.
const raceEnabled = true
