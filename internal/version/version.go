// Package version holds the version every Raksh binary reports. The
// Makefile (and hack/build-guest.sh for the guest agent) stamps it:
//
//	go build -ldflags "-X github.com/raksh-project/raksh/internal/version.Version=v0.1.0-3-gabc123 \
//	    -X github.com/raksh-project/raksh/internal/version.Revision=<commit>"
package version

import (
	"fmt"
	"runtime"
	"slices"
)

var (
	// Version is the release or `git describe` of the build; "dev" when not stamped.
	Version = "dev"
	// Revision is the git commit of the build; empty when not stamped.
	Revision = ""
)

// String is the one-line version report of the binary called name:
// "name version revision go-version".
func String(name string) string {
	rev := Revision
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("%s %s (revision %s, %s)", name, Version, rev, runtime.Version())
}

// Requested reports whether the command-line arguments ask for the version
// (--version or -version), for commands whose flag parsing is not ours
// (the shim's is containerd's).
func Requested(args []string) bool {
	return slices.Contains(args, "--version") || slices.Contains(args, "-version")
}
