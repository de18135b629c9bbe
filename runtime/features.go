package runtime

import (
	_ "embed"
	"encoding/json"
	"fmt"

	"github.com/opencontainers/runtime-spec/specs-go/features"
)

// runcFeatures is `runc features` of the runc v1.5.2 the guest initrd
// carries (hack/deps.sh builds it; TestRuncFeaturesCurrent in ./integration
// checks this copy against that binary). The shim cannot ask the guest:
// containerd asks for the features before any VM exists.
//
//go:embed runc-features.json
var runcFeatures []byte

// guestFeatures is what a container in a raksh VM supports: the guest
// runc's features minus what the guest kernel (6.1) or the agent cannot
// honour. containerd's CRI plugin reads it (runtime introspection) to
// decide on recursive read-only mounts and user namespaces.
func guestFeatures() (*features.Features, error) {
	var f features.Features
	if err := json.Unmarshal(runcFeatures, &f); err != nil {
		return nil, fmt.Errorf("decode the guest runc's features: %w", err)
	}
	// The agent drops hooks: their paths are the node's, not the guest's.
	// (An empty list would say so, but it does not survive the JSON
	// encoding containerd uses; nil is "unknown", never "supported".)
	f.Hooks = nil
	if f.Annotations == nil {
		f.Annotations = map[string]string{}
	}
	// The shim refuses checkpoints: a confidential VM's memory never leaves it.
	f.Annotations["org.opencontainers.runc.checkpoint.enabled"] = "false"
	if l := f.Linux; l != nil {
		no := false
		// The agent clears AppArmor profiles and SELinux labels: the
		// guest loads no policy.
		if l.Apparmor != nil {
			l.Apparmor.Enabled = &no
		}
		if l.Selinux != nil {
			l.Selinux.Enabled = &no
		}
		// No resctrl in the VM; the node's network devices are not in it.
		if l.IntelRdt != nil {
			l.IntelRdt = &features.IntelRdt{Enabled: &no}
		}
		if l.NetDevices != nil {
			l.NetDevices.Enabled = &no
		}
		// The container's rootfs is a tmpfs in the guest, and the guest
		// kernel (6.1) cannot idmap tmpfs (6.3 can); volumes are copies.
		// Without idmapped mounts CRI does not offer user namespaces.
		if l.MountExtensions != nil && l.MountExtensions.IDMap != nil {
			l.MountExtensions.IDMap.Enabled = &no
		}
	}
	return &f, nil
}
