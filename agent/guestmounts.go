package agent

import (
	"context"
	"os"
	"path"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/mounts"
)

// criFiles are the per-pod files CRI binds from the node into each
// container. Until the shim delivers their content they are left out (and
// logged), as before: the image's own files stay in place.
var criFiles = map[string]bool{"/etc/hosts": true, "/etc/hostname": true, "/etc/resolv.conf": true, "/dev/termination-log": true}

// guestMounts returns the mounts container c runs with in the guest (see
// package mounts: a node path never resolves in the guest).
func (s *Service) guestMounts(c *container) ([]specs.Mount, error) {
	var in []specs.Mount
	for _, m := range c.spec.Mounts {
		if mounts.IsBind(m) && criFiles[path.Clean(m.Destination)] {
			log.G(context.TODO()).WithField("id", c.id).WithField("destination", m.Destination).Warn("CRI file not delivered to the guest: left out")
			continue
		}
		in = append(in, m)
	}
	out, err := mounts.Rewrite(in, nil)
	if err != nil {
		return nil, err
	}
	return append(out, c.sealedMounts...), nil
}

// makeRootDir creates a container's bundle (0700, the agent's) and its
// empty root directory. The root directory is 0755 as a snapshot's root is
// on the node: an archive of the image carries no entry for "/", and a
// 0700 root would make every file of the image unreachable to a non-root
// user ("Permission denied").
func makeRootDir(bundle, rootfs string) error {
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(rootfs, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return os.Chmod(rootfs, 0o755)
}
