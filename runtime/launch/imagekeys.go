package launch

import (
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/envelope"
)

// KernelParamImageKeys is the guest kernel parameter naming, comma
// separated, the key broker resources holding the image decryption keys
// (runtime config image_keys). It is part of the measured command line: a
// broker pinning the launch measurement also pins which resources the
// guest asks for.
const KernelParamImageKeys = "raksh.image_keys"

// validImageKeys checks cfg's image_keys: KBS resource paths
// (repo/type/tag), reachable through [proxy] kbs.
func validImageKeys(cfg Config) error {
	if len(cfg.ImageKeys) == 0 {
		return nil
	}
	for _, p := range cfg.ImageKeys {
		if _, err := envelope.ParseKeyID(envelope.KeyIDScheme + p); err != nil {
			return fmt.Errorf("image_keys: %q is not a key broker resource path repo/type/tag: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.Proxy["kbs"] == "" {
		return fmt.Errorf("image_keys are fetched from the key broker, but [proxy] kbs is not set: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}
