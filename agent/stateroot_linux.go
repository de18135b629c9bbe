package agent

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/agent/scratch"
)

// MountStateRoot mounts the bundle store at root (the directory holding
// bundles and their root filesystems) with nodev but without nosuid, as
// runc's root filesystems on the node are: setuid binaries of an image work
// unless the process sets noNewPrivileges, and no device node of an image
// opens a guest device. The guest's /run is nosuid, so bundles cannot live
// on it. With a scratch disk the store is the scratch filesystem's bundle
// directory (encrypted, on disk), else a tmpfs (guest RAM).
func MountStateRoot(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	if dir := scratch.Dir(scratch.BundlesDir); dir != "" {
		if err := scratch.Bind(dir, root); err != nil {
			return fmt.Errorf("mount the bundle store on %s: %w", root, err)
		}
		return nil
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NODEV, "mode=0700"); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount the bundle store on %s: %w", root, err)
	}
	return nil
}
