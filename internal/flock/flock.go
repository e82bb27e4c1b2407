// Package flock takes advisory exclusive locks on open files and
// directories, so that two processes (or two opens in one process) do not
// use one store or one state file at once.
package flock
