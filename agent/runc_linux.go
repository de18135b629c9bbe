package agent

import (
	"os"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	runc "github.com/containerd/go-runc"
)

// NewRunc returns the runc runtime of the guest, keeping runc's state under
// root. The caller must call reaper.Reap on SIGCHLD (the agent is PID 1).
func NewRunc(binary, root string) *Runtime {
	runc.Monitor = reaper.Default
	os.MkdirAll(root, 0o700)
	// The process package's console sockets are made under the temporary
	// directory (go-runc NewTempConsoleSocket); the initramfs may lack it.
	os.MkdirAll(os.TempDir(), 0o1777)
	return &Runtime{Binary: binary, Root: root, Exits: reaper.Default.Subscribe()}
}
