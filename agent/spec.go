package agent

import (
	"context"
	"fmt"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/mounts"
)

// adaptSpec turns the host's spec into one that runs in the guest: the
// rootfs is the unpacked copy, mounts are what guestMounts makes of them
// (node paths never resolve in the guest), namespaces of a pod's
// containers point at its sandbox's in the guest.
func (s *Service) adaptSpec(c *container, rootfs string) error {
	spec := c.spec
	spec.Root = &specs.Root{Path: rootfs, Readonly: spec.Root != nil && spec.Root.Readonly}
	if n := mounts.HookCount(spec.Hooks); n > 0 {
		// Hooks are node programs (nerdctl's network hook, ...): they do
		// not exist in the guest. Documented in docs/volumes.md.
		log.G(context.TODO()).WithField("id", c.id).WithField("hooks", n).Warn("OCI hooks are not run in the guest: dropped")
	}
	spec.Hooks = nil
	if err := mounts.CheckDevices(spec.Linux); err != nil {
		return err
	}
	if spec.Process != nil {
		spec.Process.ApparmorProfile = ""
		spec.Process.SelinuxLabel = ""
	}
	mounts, err := s.guestMounts(c)
	if err != nil {
		return err
	}
	spec.Mounts = mounts
	if spec.Linux == nil {
		return nil
	}
	spec.Linux.CgroupsPath = "/raksh/" + c.id
	spec.Linux.MountLabel = ""
	sandboxPid := s.sandboxPid(spec)
	// Host namespaces of a pod are the VM's; a hostname needs a UTS
	// namespace of its own (or the pod sandbox's).
	if spec.Hostname != "" && !hasNamespace(spec, specs.UTSNamespace) {
		ns := specs.LinuxNamespace{Type: specs.UTSNamespace}
		if sandboxPid > 0 {
			ns.Path = "/proc/placeholder" // rewritten below
		}
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, ns)
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Path == "" {
			continue
		}
		spec.Linux.Namespaces[i].Path = ""
		if sandboxPid > 0 {
			if name, ok := nsFile[ns.Type]; ok {
				spec.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/%s", sandboxPid, name)
			}
		}
	}
	return nil
}

func hasNamespace(spec *specs.Spec, t specs.LinuxNamespaceType) bool {
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == t {
			return true
		}
	}
	return false
}

var nsFile = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net",
	specs.IPCNamespace:     "ipc",
	specs.UTSNamespace:     "uts",
	specs.PIDNamespace:     "pid",
}

// sandboxPid returns the guest pid of the CRI sandbox container of spec.
func (s *Service) sandboxPid(spec *specs.Spec) int {
	sb := spec.Annotations["io.kubernetes.cri.sandbox-id"]
	if sb == "" || spec.Annotations["io.kubernetes.cri.container-type"] == "sandbox" {
		return 0
	}
	s.mu.Lock()
	var p *process
	if c, ok := s.containers[sb]; ok {
		p = c.init
	}
	s.mu.Unlock()
	if p == nil || !p.proc.ExitedAt().IsZero() {
		return 0
	}
	return p.proc.Pid()
}
