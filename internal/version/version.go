// Package version holds the version every Raksh binary reports. The
// Makefile stamps it with -ldflags "-X github.com/raksh-project/raksh/internal/version.Version=...".
package version

// Version is the release or `git describe` of the build; "dev" when not stamped.
var Version = "dev"
