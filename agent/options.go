package agent

import (
	"encoding/json"
	"fmt"

	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/image"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// decodeCreateOptions returns the OCI spec and, for a rootfs the guest
// builds itself, the rootfs descriptor a CreateTaskRequest's Options carry
// (an agentapi.CreateContainerOptions).
func decodeCreateOptions(a *ptypes.Any) (*specs.Spec, *agentapi.RootfsDescriptor, error) {
	var opts agentapi.CreateContainerOptions
	if err := unmarshalOptions(a, &opts); err != nil {
		return nil, nil, fmt.Errorf("create request options: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(opts.GetSpec(), &spec); err != nil {
		return nil, nil, fmt.Errorf("decode OCI spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil {
		return nil, nil, fmt.Errorf("OCI spec has no process: %w", errdefs.ErrInvalidArgument)
	}
	if d := opts.GetRootfs(); d != nil {
		if err := image.ValidateDescriptor(d); err != nil {
			return nil, nil, fmt.Errorf("rootfs descriptor: %w: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	return &spec, opts.GetRootfs(), nil
}

// decodeExecOptions returns the OCI process, as JSON, an
// ExecProcessRequest's Spec carries (an agentapi.ExecProcessOptions),
// checking that it decodes.
func decodeExecOptions(a *ptypes.Any) ([]byte, error) {
	var opts agentapi.ExecProcessOptions
	if err := unmarshalOptions(a, &opts); err != nil {
		return nil, fmt.Errorf("exec request options: %w", err)
	}
	var proc specs.Process
	if err := json.Unmarshal(opts.GetProcess(), &proc); err != nil {
		return nil, fmt.Errorf("decode OCI process: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return opts.GetProcess(), nil
}

// unmarshalOptions unpacks a into m, which must be the Any's type.
func unmarshalOptions(a *ptypes.Any, m any) error {
	if a == nil {
		return fmt.Errorf("missing (want %T): %w", m, errdefs.ErrInvalidArgument)
	}
	if !typeurl.Is(a, m) {
		return fmt.Errorf("type %q, want %T: %w", a.GetTypeUrl(), m, errdefs.ErrInvalidArgument)
	}
	if err := typeurl.UnmarshalTo(a, m); err != nil {
		return fmt.Errorf("decode %T: %v: %w", m, err, errdefs.ErrInvalidArgument)
	}
	return nil
}
