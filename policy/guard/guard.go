// Package guard is the shim's fail-closed check of a raksh container's final
// OCI spec against its envelope.
//
// The NRI plugin strips what it seals from the spec containerd builds, but
// NRI adjustments can be dropped silently (containerd issue #13432: removing
// an environment variable that already exists was ignored), a later plugin
// can put a value back, and containers created outside the CRI (ctr run,
// nerdctl) never reach NRI at all. The shim therefore calls Check on the
// spec it is handed, before anything of the container reaches the VM, and
// refuses the container when Check fails.
//
// Check reads only the envelope's manifest (the names of what was sealed,
// carried in the JWE protected header): it never decrypts, needs no key, and
// its errors name fields and items, never values.
package guard

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/envelope"
)

// CRI annotations containerd puts on the OCI spec of every container it
// creates through the CRI.
const (
	// ContainerTypeAnnotation says whether a spec is a pod's sandbox
	// (pause) container or a workload container.
	ContainerTypeAnnotation = "io.kubernetes.cri.container-type"
	// ContainerTypeSandbox is the ContainerTypeAnnotation value of a
	// sandbox container.
	ContainerTypeSandbox = "sandbox"
	// SandboxNamespaceAnnotation is the pod's Kubernetes namespace.
	SandboxNamespaceAnnotation = "io.kubernetes.cri.sandbox-namespace"
	// SandboxNameAnnotation is the pod's name.
	SandboxNameAnnotation = "io.kubernetes.cri.sandbox-name"
	// ContainerNameAnnotation is the container's name within its pod.
	ContainerNameAnnotation = "io.kubernetes.cri.container-name"
)

// Errors returned by Check. Each wraps an errdefs sentinel.
var (
	// ErrMissingEnvelope is returned when a container that must carry an
	// envelope does not.
	ErrMissingEnvelope = fmt.Errorf("raksh container has no envelope annotation %q: %w", envelope.ContainerAnnotation, errdefs.ErrFailedPrecondition)
	// ErrCleartext is returned when the spec still carries in clear an item
	// the envelope's manifest says was sealed.
	ErrCleartext = fmt.Errorf("sealed item present in clear in the OCI spec: %w", errdefs.ErrFailedPrecondition)
	// ErrBadEnvelope is returned when the envelope annotation does not
	// parse or is bound to another container.
	ErrBadEnvelope = fmt.Errorf("invalid envelope annotation: %w", errdefs.ErrInvalidArgument)
)

// Options tune Check.
type Options struct {
	// RequireEnvelope refuses a (non-sandbox) container without an envelope
	// annotation. Set it for runtime handlers where every container must be
	// sealed; leave it unset to only check containers that carry one.
	RequireEnvelope bool
}

// contentless are mount types whose source is not a host path: they cannot
// expose a sealed file's host copy, unless bind mounted.
var contentless = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "devpts": true, "mqueue": true,
	"cgroup": true, "cgroup2": true, "devtmpfs": true, "shm": true,
}

// Check returns an error when spec, the final OCI spec of a raksh container,
// still carries in clear something its envelope's manifest says was sealed:
//
//   - process args other than the single placeholder envelope.Placeholder,
//     when the args were sealed;
//   - an environment variable whose name was sealed, unless its value is the
//     placeholder;
//   - a host-backed mount at, or above, the path of a sealed file (the
//     secret or projected volume it was read from).
//
// It also refuses an envelope annotation that does not parse, or whose
// binding differs from the CRI pod and container names on the spec, and,
// with opts.RequireEnvelope, a container without an envelope. Sandbox
// (pause) containers are exempt. Errors wrap ErrMissingEnvelope,
// ErrBadEnvelope or ErrCleartext and name the field and item, never a value.
func Check(spec *specs.Spec, opts Options) error {
	if spec == nil {
		return fmt.Errorf("no OCI spec: %w", errdefs.ErrInvalidArgument)
	}
	if spec.Annotations[ContainerTypeAnnotation] == ContainerTypeSandbox {
		return nil
	}
	id := describe(spec)
	data, ok := spec.Annotations[envelope.ContainerAnnotation]
	if !ok {
		if opts.RequireEnvelope {
			return fmt.Errorf("container %s: %w", id, ErrMissingEnvelope)
		}
		return nil
	}
	env, err := envelope.Parse([]byte(data))
	if err != nil {
		return fmt.Errorf("container %s: %w: %w", id, ErrBadEnvelope, err)
	}
	if b, ok := criBinding(spec); ok {
		if err := env.CheckBinding(b); err != nil {
			return fmt.Errorf("container %s: %w: %w", id, ErrBadEnvelope, err)
		}
	}
	if found := Cleartext(spec, env.Manifest()); len(found) > 0 {
		return fmt.Errorf("container %s: %s: %w", id, strings.Join(found, ", "), ErrCleartext)
	}
	return nil
}

// Cleartext lists, for error messages, the items of spec that m says were
// sealed and that spec still carries in clear, as "args", "env NAME" and
// "mount DEST (sealed file PATH)". It never includes a value.
func Cleartext(spec *specs.Spec, m envelope.Manifest) []string {
	var found []string
	if p := spec.Process; p != nil {
		if m.Args && !(len(p.Args) == 1 && p.Args[0] == envelope.Placeholder) {
			found = append(found, "args")
		}
		if len(m.Env) > 0 {
			sealed := make(map[string]bool, len(m.Env))
			for _, n := range m.Env {
				sealed[n] = true
			}
			reported := map[string]bool{}
			for _, e := range p.Env {
				name, value, _ := strings.Cut(e, "=")
				if sealed[name] && value != envelope.Placeholder && !reported[name] {
					reported[name] = true
					found = append(found, fmt.Sprintf("env %q", name))
				}
			}
		}
	}
	for _, mnt := range spec.Mounts {
		if !HostBacked(mnt.Type, mnt.Options) {
			continue
		}
		dest := path.Clean("/" + mnt.Destination)
		for _, f := range m.Files {
			if Covers(dest, f) {
				found = append(found, fmt.Sprintf("mount %q (sealed file %q)", dest, f))
				break
			}
		}
	}
	return found
}

// HostBacked reports whether a mount of this type and options may expose
// host files: a bind mount, or any type not known to be a pseudo or memory
// file system.
func HostBacked(typ string, options []string) bool {
	if slices.Contains(options, "bind") || slices.Contains(options, "rbind") {
		return true
	}
	return !contentless[typ]
}

// Covers reports whether a mount at dest makes file visible: file is dest
// itself or lies below it.
func Covers(dest, file string) bool {
	dest = path.Clean("/" + dest)
	file = path.Clean("/" + file)
	if dest == file || dest == "/" {
		return true
	}
	return strings.HasPrefix(file, dest+"/")
}

// criBinding returns the binding the CRI annotations on spec name, if all of
// them are present.
func criBinding(spec *specs.Spec) (envelope.Binding, bool) {
	b := envelope.Binding{
		Namespace: spec.Annotations[SandboxNamespaceAnnotation],
		Pod:       spec.Annotations[SandboxNameAnnotation],
		Container: spec.Annotations[ContainerNameAnnotation],
	}
	return b, b.Namespace != "" && b.Pod != "" && b.Container != ""
}

// describe names the container for error messages.
func describe(spec *specs.Spec) string {
	if b, ok := criBinding(spec); ok {
		return fmt.Sprintf("%q", b.String())
	}
	if n := spec.Annotations[ContainerNameAnnotation]; n != "" {
		return fmt.Sprintf("%q", n)
	}
	if spec.Hostname != "" {
		return fmt.Sprintf("(hostname %q)", spec.Hostname)
	}
	return "(unnamed)"
}

// IsRefused reports whether err is one of Check's refusals.
func IsRefused(err error) bool {
	return errors.Is(err, ErrMissingEnvelope) || errors.Is(err, ErrCleartext) || errors.Is(err, ErrBadEnvelope)
}
