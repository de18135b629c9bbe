package unseal

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/envelope"
)

// CRI annotations containerd puts on a container's OCI spec; they name the
// pod and container an envelope must be bound to.
const (
	SandboxNamespaceAnnotation = "io.kubernetes.cri.sandbox-namespace"
	SandboxNameAnnotation      = "io.kubernetes.cri.sandbox-name"
	ContainerNameAnnotation    = "io.kubernetes.cri.container-name"
)

// ErrPlaceholder is returned when a placeholder is left in the spec after
// merging: the node put one where the envelope seals nothing.
var ErrPlaceholder = fmt.Errorf("placeholder not filled by the envelope: %w", errdefs.ErrFailedPrecondition)

// BindingFromSpec returns the binding the CRI annotations of spec name.
func BindingFromSpec(spec *specs.Spec) (Binding, error) {
	b := Binding{
		Namespace: spec.Annotations[SandboxNamespaceAnnotation],
		Pod:       spec.Annotations[SandboxNameAnnotation],
		Container: spec.Annotations[ContainerNameAnnotation],
	}
	if err := b.Validate(); err != nil {
		return b, fmt.Errorf("OCI spec lacks CRI pod/container annotations: %w", err)
	}
	return b, nil
}

// Apply opens the envelope carried in spec's envelope.ContainerAnnotation
// (bound to the pod and container its CRI annotations name), merges it into
// spec and returns the sealed spec (for its files and exec policy). It
// returns nil, nil when spec carries no envelope. After merging, no
// placeholder may remain in the args or env.
func Apply(ctx context.Context, spec *specs.Spec, keys KeySource) (*envelope.Spec, error) {
	if spec == nil {
		return nil, fmt.Errorf("nil spec: %w", errdefs.ErrInvalidArgument)
	}
	data, ok := spec.Annotations[envelope.ContainerAnnotation]
	if !ok {
		return nil, nil
	}
	b, err := BindingFromSpec(spec)
	if err != nil {
		return nil, err
	}
	sealed, err := Open(ctx, []byte(data), b, keys)
	if err != nil {
		return nil, err
	}
	if err := Merge(spec, sealed); err != nil {
		return nil, err
	}
	if p := spec.Process; p != nil {
		if slices.Contains(p.Args, envelope.Placeholder) {
			return nil, fmt.Errorf("container %s args: %w", b, ErrPlaceholder)
		}
		for _, e := range p.Env {
			if name, v, _ := strings.Cut(e, "="); v == envelope.Placeholder {
				return nil, fmt.Errorf("container %s env %s: %w", b, name, ErrPlaceholder)
			}
		}
	}
	return sealed, nil
}
