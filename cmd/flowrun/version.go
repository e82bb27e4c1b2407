package main

import (
	"runtime/debug"
	"strings"
)

// version describes the build, as "v1.2.3 (commit 0123abcd, go1.26.8)":
// the module version ("(devel)" when built from a checkout), the commit and
// whether the tree was modified, and the Go release, from the build
// information the Go toolchain embeds.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var details []string
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if modified == "true" {
			rev += ", modified"
		}
		details = append(details, "commit "+rev)
	}
	details = append(details, info.GoVersion)
	return v + " (" + strings.Join(details, ", ") + ")"
}
