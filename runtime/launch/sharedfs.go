package launch

import "fmt"

// Values of shared_fs, the runtime config's host-sharing switch
// (docs/volumes.md).
const (
	// SharedFSNone (or empty, the default): nothing of the node is shared
	// with the guest; hostPath and persistent volumes are refused.
	SharedFSNone = "none"
	// SharedFSVirtioFS shares the node directories of hostPath and
	// persistent volumes with the guest through one virtiofsd per pod.
	SharedFSVirtioFS = "virtio-fs"
)

// DefaultVirtioFSD is Debian's virtiofsd (package qemu-system-common).
const DefaultVirtioFSD = "/usr/lib/qemu/virtiofsd"

// VirtioFSTag is the virtio-fs tag of a pod's share, which the agent
// mounts.
const VirtioFSTag = "raksh-shared"

// SharesFS reports whether cfg shares node directories with virtio-fs.
func SharesFS(cfg Config) bool { return cfg.SharedFS == SharedFSVirtioFS }

// validSharedFS checks shared_fs and virtiofsd_path.
func validSharedFS(cfg Config) error {
	switch cfg.SharedFS {
	case "", SharedFSNone:
		return nil
	case SharedFSVirtioFS:
	default:
		return fmt.Errorf("shared_fs %q is neither %q nor %q", cfg.SharedFS, SharedFSNone, SharedFSVirtioFS)
	}
	if cfg.VirtioFSDPath == "" {
		return fmt.Errorf("shared_fs = %q needs virtiofsd_path", SharedFSVirtioFS)
	}
	if HardwareTEE(cfg.TEE) {
		// virtio-fs needs guest memory QEMU and virtiofsd can both map;
		// private TEE memory is not, and the share would be the node's
		// plaintext in a confidential pod anyway.
		return fmt.Errorf("shared_fs = %q is not supported with tee = %q (virtio-fs needs guest memory the node can map)", SharedFSVirtioFS, cfg.TEE)
	}
	return nil
}
