package runtime

import (
	"flag"
	"os"
	"path/filepath"
)

// shimID returns the id the shim was started with (its first container).
func shimID() string {
	if f := flag.Lookup("id"); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	cwd, _ := os.Getwd()
	return filepath.Base(cwd)
}
