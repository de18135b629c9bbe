package agent

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/agent/scratch"
)

// MountStateRoot mounts a tmpfs at root (the directory holding bundles and
// their root filesystems) with nodev but without nosuid, as runc's root
// filesystems on the node are: setuid binaries of an image work unless the
// process sets noNewPrivileges, and no device node of an image opens a
// guest device. The guest's /run is nosuid, so bundles cannot live on it.
func MountStateRoot(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	data := "mode=0700"
	if size := scratch.TmpfsSize(); size != "" {
		data += "," + size // RAM plus the encrypted scratch swap
	}
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NODEV, data); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount the bundle store on %s: %w", root, err)
	}
	return nil
}
