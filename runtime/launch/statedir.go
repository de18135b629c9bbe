package launch

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
)

// MaxSocketPath is the longest path a unix socket address holds: sun_path
// is 108 bytes, including the terminating NUL.
const MaxSocketPath = 107

// longestVMSocket is the longest socket name in a VM directory.
const longestVMSocket = "agent.sock"

// maxStateDir is the longest state_dir whose VM sockets always fit: a VM
// directory that would be too long is named state_dir/h-<20 hex digits>.
const maxStateDir = MaxSocketPath - len("/h-") - 20 - len("/"+longestVMSocket)

// VMDir is the state directory of the VM of shim id in namespace ns
// (sockets, the QEMU pid file and the console log). It is state_dir/ns/id
// when the VM's sockets fit in MaxSocketPath, and state_dir/h-<digest of
// ns/id> otherwise (64-character ids under a long state_dir). It is
// deterministic: clean-up finds a dead shim's VM by it.
func VMDir(stateDir, ns, id string) string {
	d := filepath.Join(stateDir, ns, id)
	if len(d)+len("/"+longestVMSocket) <= MaxSocketPath {
		return d
	}
	sum := sha256.Sum256([]byte(ns + "/" + id))
	return filepath.Join(stateDir, "h-"+hex.EncodeToString(sum[:10]))
}

// validStateDir refuses a state_dir under which a VM's sockets would not
// fit in a unix socket address.
func validStateDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("state_dir %q is not an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	if len(dir) > maxStateDir {
		return fmt.Errorf("state_dir %q is %d bytes, at most %d fit: with 64-character pod ids its VM sockets (%s) would exceed the %d-byte unix socket path limit",
			dir, len(dir), maxStateDir, filepath.Join(dir, "h-<20 hex digits>", longestVMSocket), MaxSocketPath+1)
	}
	return nil
}
