package image

import (
	"errors"
	"fmt"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// ValidateDescriptor checks a rootfs descriptor from the host for
// structural errors. Its values are still unverified: BuildRootfs checks
// digests, diff IDs and the manifest digest against what it fetches.
func ValidateDescriptor(d *agentapi.RootfsDescriptor) error {
	if d == nil {
		return errors.New("no rootfs descriptor")
	}
	switch d.GetMode() {
	case agentapi.RootfsDescriptor_GUEST_PULL:
		if d.GetImageRef() == "" {
			return errors.New("guest-pull rootfs descriptor without image reference")
		}
	case agentapi.RootfsDescriptor_LAYERS:
	default:
		return fmt.Errorf("unknown rootfs descriptor mode %v", d.GetMode())
	}
	if len(d.GetLayers()) == 0 {
		return errors.New("rootfs descriptor without layers")
	}
	for i, l := range d.GetLayers() {
		if l.GetDigest() == "" {
			return fmt.Errorf("layer %d: no digest", i)
		}
		switch l.GetSource() {
		case agentapi.RootfsLayer_REGISTRY, agentapi.RootfsLayer_BLOB:
		default:
			return fmt.Errorf("layer %d: unknown source %v", i, l.GetSource())
		}
	}
	return nil
}
